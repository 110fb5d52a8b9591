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


def _url(name: str, raw: str) -> str:
    if not re.match(r"^https?://[^/\s]+", raw):
        raise Hl7ConfigError(f"{name}: expected an http:// or https:// URL, got {raw!r}")
    return raw.rstrip("/")


def load_hl7_settings(env: Mapping[str, str]) -> Hl7Settings:
    kwargs: dict[str, object] = {}

    def take(name: str, field: str, parse: Callable[[str, str], object]) -> None:
        raw = env.get(name)
        if raw is not None and raw.strip() != "":
            kwargs[field] = parse(name, raw.strip())

    take("HL7_ENABLE", "enable", _bool)
    take("HL7_RIS_IP", "ris_ip", lambda n, r: r)
    take("HL7_RIS_PORT", "ris_port", _port)
    take("RIS_TIMEOUT", "ris_timeout_seconds", _seconds)
    take("HL7_SENDING_APPLICATION", "sending_application", _hd)
    take("HL7_SENDING_FACILITY", "sending_facility", _hd)
    take("HL7_RECEIVING_APPLICATION", "receiving_application", _hd)
    take("HL7_RECEIVING_FACILITY", "receiving_facility", _hd)
    take("HL7_LANGUAGE", "language", _one_of(LANGUAGES, upper=True))
    take("HL7_INCLUDE_PID", "include_pid", _bool)
    take("HL7_INCLUDE_PV1", "include_pv1", _bool)
    take("HL7_INCLUDE_ORC", "include_orc", _bool)
    take("HL7_INCLUDE_STUDY_UID", "include_study_uid", _bool)
    take("INCLUDE_DETECTIONS_FINDINGS", "include_detections", _bool)
    take("DETECTION_INFERENCE_COMMAND", "detection_command", _one_of(DETECTION_COMMANDS))
    take("INCLUDE_MEASURES_FINDINGS", "include_measures", _bool)
    take("MEASURE_INFERENCE_COMMAND", "measure_command", _one_of(MEASURE_COMMANDS))
    take("HL7_FINDINGS_WAIT_SECONDS", "findings_wait_seconds", _seconds)
    take("HL7_INCLUDE_TCR", "include_tcr", _bool)
    take("HL7_TCR_OUT_FORMAT", "tcr_out_format", _one_of(REPORT_FORMATS, upper=True))
    take("TCR_API_URL", "tcr_api_url", _url)
    settings = Hl7Settings(**kwargs)  # type: ignore[arg-type]
    if settings.enable and not settings.ris_ip:
        raise Hl7ConfigError("HL7_RIS_IP: not set; HL7_ENABLE=true needs the RIS address")
    if settings.include_tcr and not settings.tcr_api_url:
        raise Hl7ConfigError("TCR_API_URL: not set; HL7_INCLUDE_TCR=true needs the report API")
    return settings
