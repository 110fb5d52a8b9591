"""Settings of the HL7 link to the RIS (ORU^R01 over MLLP), read from the same environment.

Names follow the original gateway (HL7_ENABLE, HL7_RIS_IP, RIS_TIMEOUT, ...). Every error
names the variable.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Literal

import msgspec

DETECTION_COMMANDS = ("smarturgences", "detection", "smartchest", "trauma")
MEASURE_COMMANDS = ("smartxpert", "measures")
LANGUAGES = ("EN", "FR")
REPORT_FORMATS = ("B64", "PLAIN", "HTML")

Language = Literal["EN", "FR"]
ReportFormat = Literal["B64", "PLAIN", "HTML"]


class Hl7ConfigError(ValueError):
    """An HL7 setting is malformed; the message starts with the variable's name."""


class Hl7Settings(msgspec.Struct, frozen=True, kw_only=True):
    enable: bool = False
    ris_ip: str = ""
    ris_port: int = 2575
    ris_timeout_seconds: float = 15.0
    # MSH
    sending_application: str = "MILVUE_GATEWAY"
    sending_facility: str = "MILVUE"
    receiving_application: str = ""
    receiving_facility: str = ""
    language: Language = "EN"
    # Segments that a site can switch off
    include_pid: bool = True
    include_pv1: bool = True
    include_orc: bool = True
    include_study_uid: bool = True
    # Which results feed the message
    include_detections: bool = True
    detection_command: str = "smarturgences"
    include_measures: bool = True
    measure_command: str = "smartxpert"
    # How long to wait for findings still running before sending what is there
    findings_wait_seconds: float = 120.0
    # The written report (TechCare Report)
    include_tcr: bool = False
    tcr_out_format: ReportFormat = "HTML"
    tcr_api_url: str = ""
    # Run-time configuration: named JSON files, one loaded at start if asked
    custom_dir: str = ""
    load_config_at_init: str = ""
    load_template_at_init: str = ""
    # Reports pushed by external providers, each on its own NATS subject and HTTP route
    webps_enable: bool = False
    webps_providers: tuple[str, ...] = ()

    def wanted_commands(self) -> tuple[str, ...]:
        """The inference commands whose findings go into the message, in message order."""
        wanted = []
        if self.include_detections:
            wanted.append(self.detection_command)
        if self.include_measures:
            wanted.append(self.measure_command)
        return tuple(wanted)


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise Hl7ConfigError(f"{name}: expected true or false, got {raw!r}")


def _one_of(choices: tuple[str, ...], upper: bool = False) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        value = raw.strip().upper() if upper else raw.strip()
        if value not in choices:
            raise Hl7ConfigError(f"{name}: expected one of {', '.join(choices)}, got {raw!r}")
        return value

    return parse


def _port(name: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise Hl7ConfigError(f"{name}: expected a port number, got {raw!r}") from None
    if not 1 <= value <= 65535:
        raise Hl7ConfigError(f"{name}: must be between 1 and 65535, got {value}")
    return value


def _seconds(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise Hl7ConfigError(f"{name}: expected a number of seconds, got {raw!r}") from None
    if not value > 0:
        raise Hl7ConfigError(f"{name}: must be greater than 0, got {raw!r}")
    return value


def _hd(name: str, raw: str) -> str:
    # An MSH application or facility name: no HL7 delimiter, no control character.
    if not re.fullmatch(r"[^|^~\\&\x00-\x1f]{1,180}", raw):
        raise Hl7ConfigError(f"{name}: HL7 delimiters |^~\\& are not allowed, got {raw!r}")
    return raw


def _name(name: str, raw: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", raw) or ".." in raw:
        raise Hl7ConfigError(f"{name}: a file name of letters, digits, _ . -, got {raw!r}")
    return raw


def _providers(name: str, raw: str) -> tuple[str, ...]:
    providers = tuple(p.strip() for p in raw.split(",") if p.strip())
    for provider in providers:
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,31}", provider):
            raise Hl7ConfigError(f"{name}: lower-case letters, digits and '-', got {provider!r}")
    if len(set(providers)) != len(providers):
        raise Hl7ConfigError(f"{name}: a provider is named twice in {raw!r}")
    return providers


def _url(name: str, raw: str) -> str:
    if not re.match(r"^https?://[^/\s]+", raw):
        raise Hl7ConfigError(f"{name}: expected an http:// or https:// URL, got {raw!r}")
    return raw.rstrip("/")


# Each variable, the field it sets and how its text is read.
VARIABLES: tuple[tuple[str, str, Callable[[str, str], object]], ...] = (
    ("HL7_ENABLE", "enable", _bool),
    ("HL7_RIS_IP", "ris_ip", lambda n, r: r),
    ("HL7_RIS_PORT", "ris_port", _port),
    ("RIS_TIMEOUT", "ris_timeout_seconds", _seconds),
    ("HL7_SENDING_APPLICATION", "sending_application", _hd),
    ("HL7_SENDING_FACILITY", "sending_facility", _hd),
    ("HL7_RECEIVING_APPLICATION", "receiving_application", _hd),
    ("HL7_RECEIVING_FACILITY", "receiving_facility", _hd),
    ("HL7_LANGUAGE", "language", _one_of(LANGUAGES, upper=True)),
    ("HL7_INCLUDE_PID", "include_pid", _bool),
    ("HL7_INCLUDE_PV1", "include_pv1", _bool),
    ("HL7_INCLUDE_ORC", "include_orc", _bool),
    ("HL7_INCLUDE_STUDY_UID", "include_study_uid", _bool),
    ("INCLUDE_DETECTIONS_FINDINGS", "include_detections", _bool),
    ("DETECTION_INFERENCE_COMMAND", "detection_command", _one_of(DETECTION_COMMANDS)),
    ("INCLUDE_MEASURES_FINDINGS", "include_measures", _bool),
    ("MEASURE_INFERENCE_COMMAND", "measure_command", _one_of(MEASURE_COMMANDS)),
    ("HL7_FINDINGS_WAIT_SECONDS", "findings_wait_seconds", _seconds),
    ("HL7_INCLUDE_TCR", "include_tcr", _bool),
    ("HL7_TCR_OUT_FORMAT", "tcr_out_format", _one_of(REPORT_FORMATS, upper=True)),
    ("TCR_API_URL", "tcr_api_url", _url),
    ("HL7_CUSTOM_DIR", "custom_dir", lambda n, r: r),
    ("LOAD_CONFIG_AT_INIT", "load_config_at_init", _name),
    ("LOAD_TEMPLATE_AT_INIT", "load_template_at_init", _name),
    ("WEBPS_ENABLE", "webps_enable", _bool),
    ("WEBPS_PROVIDERS", "webps_providers", _providers),
)
VARIABLE_NAMES = frozenset(name for name, _, _ in VARIABLES)


def load_hl7_settings(env: Mapping[str, str]) -> Hl7Settings:
    kwargs: dict[str, object] = {}
    for name, field, parse in VARIABLES:
        raw = env.get(name)
        if raw is not None and raw.strip() != "":
            kwargs[field] = parse(name, raw.strip())
    settings = Hl7Settings(**kwargs)  # type: ignore[arg-type]
    if settings.enable and not settings.ris_ip:
        raise Hl7ConfigError("HL7_RIS_IP: not set; HL7_ENABLE=true needs the RIS address")
    if settings.include_tcr and not settings.tcr_api_url:
        raise Hl7ConfigError("TCR_API_URL: not set; HL7_INCLUDE_TCR=true needs the report API")
    if settings.webps_enable and not settings.webps_providers:
        raise Hl7ConfigError("WEBPS_PROVIDERS: not set; WEBPS_ENABLE=true needs provider names")
    if (settings.load_config_at_init or settings.load_template_at_init) and not settings.custom_dir:
        raise Hl7ConfigError("HL7_CUSTOM_DIR: not set; LOAD_*_AT_INIT names a file in it")
    return settings


def as_variables(settings: Hl7Settings) -> dict[str, str]:
    """The variables that give `settings` (the inverse of load_hl7_settings)."""
    values = msgspec.structs.asdict(settings)
    env: dict[str, str] = {}
    for name, field, _ in VARIABLES:
        value = values[field]
        if isinstance(value, bool):
            env[name] = "true" if value else "false"
        elif isinstance(value, tuple):
            env[name] = ",".join(value)
        else:
            env[name] = str(value)
    return env


def with_overrides(settings: Hl7Settings, overrides: Mapping[str, str]) -> Hl7Settings:
    """`settings` with some variables set again (a loaded configuration wins)."""
    unknown = sorted(set(overrides) - VARIABLE_NAMES)
    if unknown:
        raise Hl7ConfigError(f"{unknown[0]}: not an HL7 setting")
    return load_hl7_settings({**as_variables(settings), **overrides})
