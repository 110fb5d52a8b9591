"""Named HL7 configurations and templates, loaded at run time from HL7_CUSTOM_DIR.

    HL7_CUSTOM_DIR/<name>.json               a configuration: HL7 variables, and a template
    HL7_CUSTOM_DIR/templates/<name>.json     a template alone (pacsor.hl7.template)

A configuration file:

    {"settings": {"HL7_LANGUAGE": "FR", "HL7_TCR_OUT_FORMAT": "PLAIN"},
     "template": {"omit": ["PV1"], "fields": {"OBR-13": "$study_description"}}}

or, as the original gateway's config.json, the variables alone: {"HL7_LANGUAGE": "FR"}.

Loading checks everything before anything is recorded: the name, the JSON, each variable (as
at start-up), and a sample message built with the template, which hl7apy must parse. A
configuration that fails keeps the previous one in force. What was loaded is recorded as an
Hl7ConfigLoaded event; the hl7 component applies the latest one, over the environment.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgspec

from pacsor.config.hl7 import Hl7ConfigError, Hl7Settings, with_overrides
from pacsor.errors import InvalidInput
from pacsor.hl7.oru import MessageError, check_template
from pacsor.hl7.template import MessageTemplate, TemplateError, parse_template

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
MAX_FILE_BYTES = 256 * 1024
# A variable's name, as the original gateway's config.json has them at the top level.
_VARIABLE = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")


class CustomConfigError(InvalidInput):
    """The named configuration cannot be loaded; `not_found` tells a missing file apart."""

    def __init__(self, message: str, not_found: bool = False) -> None:
        super().__init__(message)
        self.not_found = not_found


class LoadedConfig(msgspec.Struct, frozen=True, kw_only=True):
    """What a configuration or template file says, checked."""

    name: str
    kind: str  # "config" or "template"
    settings: dict[str, str] = {}
    template: str = ""  # the template's JSON text, "" for none


class _ConfigFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    settings: dict[str, str | int | float | bool] = {}
    template: dict[str, Any] | None = None


def _read(path: Path, what: str, name: str) -> bytes:
    if not _NAME.match(name):
        raise CustomConfigError(f"{what} name {name[:80]!r}: letters, digits, _ and - only")
    if not path.is_file():
        raise CustomConfigError(f"no {what} named {name!r}", not_found=True)
    if path.stat().st_size > MAX_FILE_BYTES:
        raise CustomConfigError(f"{what} {name!r} is larger than {MAX_FILE_BYTES} bytes")
    return path.read_bytes()


def _text(value: str | int | float | bool) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def read_config(directory: Path, name: str) -> LoadedConfig:
    data = _read(directory / f"{name}.json", "configuration", name)
    try:
        raw = msgspec.json.decode(data, type=_ConfigFile)
    except msgspec.MsgspecError as err:
        # The original gateway's config.json: the HL7 variables alone, at the top level.
        try:
            flat = msgspec.json.decode(data, type=dict[str, str | int | float | bool])
        except msgspec.MsgspecError:
            flat = {}
        if not flat or not all(_VARIABLE.match(key) for key in flat):
            raise CustomConfigError(f"configuration {name!r}: {err}") from err
        raw = _ConfigFile(settings=flat)
    template = msgspec.json.encode(raw.template).decode() if raw.template is not None else ""
    settings = {key: _text(value) for key, value in raw.settings.items()}
    return LoadedConfig(name=name, kind="config", settings=settings, template=template)


def read_template(directory: Path, name: str) -> LoadedConfig:
    data = _read(directory / "templates" / f"{name}.json", "template", name)
    try:
        parse_template(data)
    except TemplateError as err:
        raise CustomConfigError(f"template {name!r}: {err}") from err
    return LoadedConfig(name=name, kind="template", template=data.decode())


def effective(
    base: Hl7Settings, loaded: LoadedConfig | None
) -> tuple[Hl7Settings, MessageTemplate | None]:
    """The settings and template in force: the environment, then what was loaded.

    Raises CustomConfigError when `loaded` does not give a message hl7apy parses.
    """
    if loaded is None:
        return base, None
    try:
        settings = with_overrides(base, loaded.settings)
        template = parse_template(loaded.template) if loaded.template else None
        check_template(template or MessageTemplate(), settings)
    except (Hl7ConfigError, TemplateError, MessageError) as err:
        raise CustomConfigError(f"{loaded.kind} {loaded.name!r}: {err}") from err
    return settings, template


def combine(previous: LoadedConfig | None, loaded: LoadedConfig) -> LoadedConfig:
    """What is in force after `loaded`: a template alone keeps the loaded settings."""
    if loaded.kind == "template" and previous is not None:
        return msgspec.structs.replace(loaded, settings=previous.settings)
    return loaded
