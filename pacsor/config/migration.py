"""From an original gateway's site to pacsor's site file: a pure mapping, one line per setting.

    migrate(site) -> Migration(variables, lines)

Each variable of the original `.env` is either written as is, renamed (old -> new), or left
out with the reason; variables pacsor needs that the original set elsewhere (the PACS of its
storescu services, the HL7 service's own environment, a default that differs) are added and
said so. The same site always gives the same variables, in the same order.

The original's multi-core: API_URL_1/TOKEN_1/... are core 1 as in pacsor; CALLBACK_URLS (and
CALLBACK_URLS_n for core n) name storescu services (`http://storescu-2:8000`) whose
PACS_IP/PACS_PORT/PACS_AET are the PACS: the first core's first PACS becomes PACS_IP/PACS_PORT/
PACS_AET, its others DESTINATIONS, and core n's DESTINATIONS_n.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal
from urllib.parse import urlsplit

import msgspec

from pacsor.config.hl7 import VARIABLE_NAMES as HL7_VARIABLES
from pacsor.config.known import OTHER_VARIABLES, problem_of
from pacsor.config.original import OriginalSite, ServiceValue
from pacsor.config.settings import PER_CORE_VARIABLES, SAME_AS_FIRST, TOP_LEVEL_VARIABLES
from pacsor.errors import ConfigError

Kind = Literal["as is", "renamed", "added", "left out"]

# Spelled otherwise in pacsor.
RENAMED = {
    "DICOM_FILTER": "DICOM_FILTERS",
    "MEASURES_INFERENCE_COMMAND": "MEASURE_INFERENCE_COMMAND",
}
# Where the original's default differs from pacsor's: written, so that nothing changes.
ORIGINAL_HL7_DEFAULTS = {"HL7_LANGUAGE": "FR", "HL7_TCR_OUT_FORMAT": "B64"}
ORIGINAL_TCR_API_URL = "https://app.report.milvue.com"
# Where the original's HL7 service mounted its custom configurations.
ORIGINAL_CUSTOM_DIR = "/home/custom"
_CALLBACK = re.compile(r"^CALLBACK_URLS(?:_(\d+))?$")
_NUMBERED = re.compile(r"^([A-Z][A-Z0-9_]*?)_(\d+)$")
_PACS = ("PACS_IP", "PACS_PORT", "PACS_AET")


class Line(msgspec.Struct, frozen=True):
    kind: Kind
    old: str
    new: str = ""
    why: str = ""

    def __str__(self) -> str:
        if self.kind == "as is":
            return f"as is      {self.old}" + (f"  ({self.why})" if self.why else "")
        if self.kind == "renamed":
            return f"renamed    {self.old} -> {self.new}" + (f"  ({self.why})" if self.why else "")
        if self.kind == "added":
            return f"added      {self.new}  ({self.why})"
        return f"left out   {self.old}: {self.why}"


class Migration(msgspec.Struct, frozen=True):
    variables: dict[str, str]
    lines: list[Line]


def _true(value: str) -> bool:
    return value.strip().lower() in ("true", "1", "yes", "on")


def _core_numbers(env: Mapping[str, str]) -> dict[int, int]:
    """The original's core numbers (1, 3, ...) and pacsor's (1, 2, ...): without a gap."""
    found = sorted(
        int(m.group(2))
        for name, value in env.items()
        if (m := _NUMBERED.match(name)) and m.group(1) == "API_URL" and value.strip()
    )
    return {old: new for new, old in enumerate((n for n in found if n > 0), start=1)}


def _pacs_of(url: str, services: Mapping[str, Mapping[str, ServiceValue]], where: str) -> str:
    """The PACS (AET@host:port) of the storescu service a callback URL names."""
    host = urlsplit(url.strip()).hostname or ""
    service = services.get(host)
    if service is None:
        raise ConfigError(
            f"{where}: {url.strip()!r} names service {host!r}, which no compose file "
            "beside the .env defines"
        )
    missing = [name for name in _PACS if not service.get(name, ServiceValue("")).value.strip()]
    if missing:
        raise ConfigError(f"{where}: service {host!r} has no {', '.join(missing)}")
    ip, port, aet = (service[name].value.strip() for name in _PACS)
    return f"{aet}@{ip}:{port}"


def migrate(site: OriginalSite) -> Migration:
    env = site.env
    out: dict[str, str] = {}
    lines: list[Line] = []
    consumed: set[str] = set()  # .env variables accounted for by a line already
    numbers = _core_numbers(env)

    # The PACS, from the storescu services behind each core's CALLBACK_URLS.
    for name in sorted(n for n in env if _CALLBACK.match(n)):
        consumed.add(name)
        match = _CALLBACK.match(name)
        assert match is not None
        n = int(match.group(1) or 0)
        urls = [u for u in env[name].split(",") if u.strip()]
        if n and n not in numbers:
            lines.append(Line("left out", name, why=f"no API_URL_{n}: there is no core {n}"))
            continue
        if not urls:
            lines.append(Line("left out", name, why="empty"))
            continue
        pacs = [_pacs_of(url, site.services, name) for url in urls]
        hosts = [urlsplit(url.strip()).hostname or "" for url in urls]
        if n == 0:
            aet, _, rest = pacs[0].partition("@")
            ip, _, port = rest.rpartition(":")
            out.update({"PACS_IP": ip, "PACS_PORT": port, "PACS_AET": aet})
            targets = ["PACS_IP, PACS_PORT, PACS_AET"] + ["DESTINATIONS"] * len(pacs[1:])
            if pacs[1:]:
                out["DESTINATIONS"] = ",".join(pacs[1:])
        else:
            targets = [f"DESTINATIONS_{numbers[n]}"] * len(pacs)
            out[targets[0]] = ",".join(pacs)
        new = ", ".join(dict.fromkeys(targets))
        why = f"{', '.join(pacs)}, from services {', '.join(hosts)}"
        lines.append(Line("renamed", name, new, why))
        # The .env variables the storescu services were made from: where each one went.
        for host, target in zip(hosts, targets, strict=True):
            for pacs_name, given in site.services[host].items():
                for source in given.sources:
                    if source in env and source not in consumed:
                        consumed.add(source)
                        where = f"{pacs_name} of service {host}"
                        goes = pacs_name if target.startswith("PACS_IP") else target
                        kind: Kind = "as is" if goes == source else "renamed"
                        lines.append(Line(kind, source, goes, where))

    # Every other variable of the .env, in its order.
    hl7_service = {
        name: value
        for service, values in site.services.items()
        if "hl7" in service
        for name, value in values.items()
    }
    for name, value in env.items():
        if name in consumed:
            continue
        numbered = _NUMBERED.match(name)
        if numbered and numbered.group(1) in PER_CORE_VARIABLES:
            base, n = numbered.group(1), int(numbered.group(2))
            if n not in numbers:
                lines.append(Line("left out", name, why=f"no API_URL_{n}: there is no core {n}"))
            elif numbers[n] != n:
                new = f"{base}_{numbers[n]}"
                out[new] = value
                lines.append(Line("renamed", name, new, "cores are numbered without a gap"))
            else:
                out[name] = value
                lines.append(Line("as is", name))
            continue
        if name in RENAMED:
            out[RENAMED[name]] = value
            lines.append(Line("renamed", name, RENAMED[name]))
        elif name == "CLIENT_NAME":
            lines.append(Line("left out", name, why="the site's name: env-files/.env.<site>"))
        elif name.startswith("COMPOSE_"):
            why = "pacsor's compose.yaml names its own files and profiles"
            lines.append(Line("left out", name, why=why))
        elif name == "LOAD_TEMPLATE_AT_INIT":
            why = (
                "the original's templates are Python code; pacsor's are JSON files in "
                "HL7_CUSTOM_DIR/templates (docs/migration.md)"
            )
            lines.append(Line("left out", name, why=why))
        elif name in TOP_LEVEL_VARIABLES | HL7_VARIABLES | OTHER_VARIABLES:
            out[name] = value
            lines.append(Line("as is", name))
        elif name in _PACS or (numbered and numbered.group(1) in _PACS):
            why = "no CALLBACK_URLS names a storescu service that uses it"
            lines.append(Line("left out", name, why=why))
        else:
            problem = problem_of(name, env, TOP_LEVEL_VARIABLES, PER_CORE_VARIABLES) or ""
            why = problem.partition(": ")[2] or "not a pacsor setting"
            lines.append(Line("left out", name, why=why))

    # The HL7 service's own environment (compose.hl7.yaml): what the .env did not give.
    for name, given in sorted(hl7_service.items()):
        name = RENAMED.get(name, name)
        if name not in HL7_VARIABLES or name in out or not given.value.strip():
            continue
        if given.sources and all(s in env for s in given.sources):
            continue  # the .env's value, reported above
        if name == "LOAD_TEMPLATE_AT_INIT":
            why = "the original's templates are Python code; pacsor's are JSON (docs/migration.md)"
            lines.append(Line("left out", name, why=f"{why}; set in the hl7 service"))
            continue
        out[name] = given.value.strip()
        lines.append(Line("added", name, f"{name}={given.value.strip()}", "from the hl7 service"))

    # pacsor asks each core where its results go: the original sent core n's to the first
    # core's PACS when it had no CALLBACK_URLS_n.
    for k in sorted(numbers.values()):
        if f"DESTINATIONS_{k}" not in out:
            out[f"DESTINATIONS_{k}"] = SAME_AS_FIRST
            why = f"core {k} had no CALLBACK_URLS: its results go where the first core's do"
            lines.append(
                Line("added", f"DESTINATIONS_{k}", f"DESTINATIONS_{k}={SAME_AS_FIRST}", why)
            )
    hl7 = _true(out.get("HL7_ENABLE", "false"))
    if hl7 and numbers and "HL7_CORES" not in out:
        # The original's hl7 service reported every core; pacsor's default is the first alone.
        names = [out.get("CORE_NAME", "default")] + [
            out.get(f"CORE_NAME_{k}", f"core{k}") for k in sorted(numbers.values())
        ]
        out["HL7_CORES"] = ",".join(names)
        why = "every core's results went to the RIS; pacsor's default is the first core's alone"
        lines.append(Line("added", "HL7_CORES", f"HL7_CORES={out['HL7_CORES']}", why))
    if hl7 or out.get("HL7_RIS_IP"):
        for name, default in ORIGINAL_HL7_DEFAULTS.items():
            if name not in out:
                out[name] = default
                why = "the original's default; pacsor's differs"
                lines.append(Line("added", name, f"{name}={default}", why))
        if _true(out.get("HL7_INCLUDE_TCR", "false")) and "TCR_API_URL" not in out:
            out["TCR_API_URL"] = ORIGINAL_TCR_API_URL
            why = "the original's default report API"
            lines.append(Line("added", "TCR_API_URL", f"TCR_API_URL={ORIGINAL_TCR_API_URL}", why))
    if out.get("LOAD_CONFIG_AT_INIT") and "HL7_CUSTOM_DIR" not in out:
        out["HL7_CUSTOM_DIR"] = ORIGINAL_CUSTOM_DIR
        why = "where the original's hl7 service read its configurations; mount them there"
        lines.append(Line("added", "HL7_CUSTOM_DIR", f"HL7_CUSTOM_DIR={ORIGINAL_CUSTOM_DIR}", why))
    if out.get("HL7_RIS_IP"):
        out["COMPOSE_PROFILES"] = "hl7"
        why = "the RIS is set: `docker compose up -d` starts the hl7 service"
        lines.append(Line("added", "COMPOSE_PROFILES", "COMPOSE_PROFILES=hl7", why))
    return Migration(variables=out, lines=lines)
