"""Reading a site of the original gateway: its `.env` and the compose files beside it.

    read_original_site(folder) -> OriginalSite(env, services)

The `.env` is read as docker compose reads it (`$$` is a literal `$`). The compose file
(compose.yaml, or docker-compose.yml, with the files its `include:` names, as the original's
compose.multicore.yaml and compose.hl7.yaml are) gives each service's environment, with
`${VAR}`, `${VAR:-default}` and `$VAR` replaced from the `.env`; each value remembers which
variables of the `.env` it was made from, so the migration can say where each one went.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import yaml

from pacsor.config.variables import read_dotenv
from pacsor.errors import ConfigError

COMPOSE_FILES = ("compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml")
_REFERENCE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_]\w*)")
MAX_INCLUDES = 20


class ServiceValue(msgspec.Struct, frozen=True):
    value: str
    # The .env variables the value was made from.
    sources: tuple[str, ...] = ()


class OriginalSite(msgspec.Struct, frozen=True):
    env: dict[str, str]
    # Service name -> its environment (interpolated).
    services: dict[str, dict[str, ServiceValue]]
    # Service name -> its volumes, as written ("host:container[:mode]").
    volumes: dict[str, list[str]] = {}
    # The site's name, from `.env -> env-files/.env.<name>` ("" when .env is a plain file).
    client: str = ""


def unescape(value: str) -> str:
    """A `.env` value as compose passes it on: `$$` is one `$`."""
    return value.replace("$$", "$")


def interpolate(text: str, env: Mapping[str, str]) -> ServiceValue:
    """`text` with compose's substitutions done from `env`."""
    sources: list[str] = []

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        sources.append(name)
        value = env.get(name)
        operator, default = match.group(2), match.group(3) or ""
        if operator == ":-" and not value:
            return default
        if operator == "-" and value is None:
            return default
        return value or ""

    return ServiceValue(_REFERENCE.sub(replace, text), tuple(dict.fromkeys(sources)))


def _environment(raw: Any, where: str) -> dict[str, str]:
    if raw is None:
        return {}
    if isinstance(raw, dict):
        return {str(k): "" if v is None else str(v) for k, v in raw.items()}
    if isinstance(raw, list):
        pairs = {}
        for item in raw:
            key, _, value = str(item).partition("=")
            pairs[key.strip()] = value
        return pairs
    raise ConfigError(f"{where}: environment is neither a list nor a mapping")


def _compose_documents(path: Path, seen: list[Path]) -> list[tuple[Path, dict[str, Any]]]:
    """The compose file and, first, every file its `include:` names (commented-out ones are
    not there to read, as for compose itself)."""
    if path in seen or len(seen) > MAX_INCLUDES:
        return []
    seen.append(path)
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path.name}: not YAML: {err}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{path.name}: not a compose file")
    found: list[tuple[Path, dict[str, Any]]] = []
    for item in document.get("include") or []:
        names = item.get("path") if isinstance(item, dict) else item
        for name in names if isinstance(names, list) else [names]:
            included = (path.parent / str(name)).resolve()
            if not included.is_file():
                raise ConfigError(f"{path.name}: includes {name}, which is not there")
            found.extend(_compose_documents(included, seen))
    found.append((path, document))
    return found


def read_original_site(folder: Path) -> OriginalSite:
    env_path = folder / ".env"
    if not env_path.is_file():
        raise ConfigError(f"{env_path}: no .env here; give the original gateway's folder")
    client = ""
    if env_path.is_symlink():
        target = Path(str(env_path.readlink())).name
        client = target.removeprefix(".env.") if target.startswith(".env.") else ""
    env = {name: unescape(value) for name, value in read_dotenv(env_path).items()}
    compose = next((folder / n for n in COMPOSE_FILES if (folder / n).is_file()), None)
    services: dict[str, dict[str, ServiceValue]] = {}
    volumes: dict[str, list[str]] = {}
    if compose is not None:
        for path, document in _compose_documents(compose.resolve(), []):
            for name, service in (document.get("services") or {}).items():
                if not isinstance(service, dict):
                    continue
                raw = _environment(service.get("environment"), f"{path.name}: {name}")
                merged = services.setdefault(str(name), {})
                merged.update({k: interpolate(v, env) for k, v in raw.items()})
                volumes.setdefault(str(name), []).extend(
                    interpolate(str(v), env).value
                    for v in service.get("volumes") or []
                    if isinstance(v, str)
                )
    return OriginalSite(env=env, services=services, volumes=volumes, client=client)
