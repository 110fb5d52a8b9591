"""Settings of the HL7 link to the RIS (ORU^R01 over MLLP), read from the same environment.

Names follow the original gateway (HL7_ENABLE, HL7_RIS_IP, RIS_TIMEOUT, ...). Every error
names the variable.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Annotated, Literal, get_args

import msgspec
from msgspec import Meta, field

from pacsor.config.variables import (
    CoreName,
    FileName,
    Hl7Name,
    HttpUrl,
    Port,
    Seconds,
    read_struct,
    variables_of,
)
from pacsor.errors import ConfigError

Language = Literal["EN", "FR"]
# HL7 v2.5.1 acknowledgement modes (pacsor.domain.acknowledgement): original asks one answer
# (AA/AE/AR); enhanced asks a commit (CA/CE/CR), then an application answer.
AckMode = Literal["original", "enhanced"]
# Where the placer order number (ORC-2, OBR-2) comes from: the study's Accession Number
# (0008,0050), or its Placer Order Number / Imaging Service Request (0040,2016).
PlacerSource = Literal["accession", "placer_order_number"]
ReportFormat = Literal["B64", "PLAIN", "HTML"]
# The commands whose findings feed the message's detections, and its measures.
DetectionCommand = Literal["smarturgences", "detection", "smartchest", "trauma"]
MeasureCommand = Literal["smartxpert", "measures"]


class Hl7ConfigError(ConfigError):
    """An HL7 setting is malformed; the message starts with the variable's name."""


class Hl7Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Each field is read from the variable it is named after."""

    enable: bool = field(default=False, name="HL7_ENABLE")
    ris_ip: str = field(default="", name="HL7_RIS_IP")
    ris_port: Port = field(default=2575, name="HL7_RIS_PORT")
    ris_timeout_seconds: Seconds = field(default=15.0, name="RIS_TIMEOUT")
    # MSH
    sending_application: Hl7Name = field(default="MILVUE_GATEWAY", name="HL7_SENDING_APPLICATION")
    sending_facility: Hl7Name = field(default="MILVUE", name="HL7_SENDING_FACILITY")
    receiving_application: Hl7Name = field(default="", name="HL7_RECEIVING_APPLICATION")
    receiving_facility: Hl7Name = field(default="", name="HL7_RECEIVING_FACILITY")
    language: Language = field(default="EN", name="HL7_LANGUAGE")
    ack_mode: AckMode = field(default="original", name="HL7_ACK_MODE")
    # Identifiers a RIS matches on. The patient ID's assigning authority (PID-3.4) when the
    # study has no Issuer of Patient ID (0010,0021): the hospital's namespace, not pacsor's.
    assigning_authority: Hl7Name = field(default="", name="HL7_ASSIGNING_AUTHORITY")
    placer_source: PlacerSource = field(default="accession", name="HL7_PLACER_ORDER_SOURCE")
    # The namespace of the placer number (EI.2): the system that numbered the order.
    placer_namespace: Hl7Name = field(default="", name="HL7_PLACER_NAMESPACE")
    # The namespace of pacsor's own filler number (EI.2); empty: HL7_SENDING_APPLICATION.
    filler_namespace: Hl7Name = field(default="", name="HL7_FILLER_NAMESPACE")
    # OBR-4 when the study has no Procedure Code Sequence (0008,1032): code and its system
    # (HL7 table 0396; "99" followed by letters is a local system).
    procedure_code: Hl7Name = field(default="", name="HL7_PROCEDURE_CODE")
    procedure_coding_system: Hl7Name = field(default="99MILVUE", name="HL7_PROCEDURE_CODING_SYSTEM")
    # Segments that a site can switch off
    include_pid: bool = field(default=True, name="HL7_INCLUDE_PID")
    include_pv1: bool = field(default=True, name="HL7_INCLUDE_PV1")
    include_orc: bool = field(default=True, name="HL7_INCLUDE_ORC")
    include_study_uid: bool = field(default=True, name="HL7_INCLUDE_STUDY_UID")
    # Which results feed the message
    include_detections: bool = field(default=True, name="INCLUDE_DETECTIONS_FINDINGS")
    detection_command: DetectionCommand = field(
        default="smarturgences", name="DETECTION_INFERENCE_COMMAND"
    )
    include_measures: bool = field(default=True, name="INCLUDE_MEASURES_FINDINGS")
    measure_command: MeasureCommand = field(default="smartxpert", name="MEASURE_INFERENCE_COMMAND")
    # How long to wait for findings still running before sending what is there
    findings_wait_seconds: Seconds = field(default=120.0, name="HL7_FINDINGS_WAIT_SECONDS")
    # The written report (TechCare Report)
    include_tcr: bool = field(default=False, name="HL7_INCLUDE_TCR")
    tcr_out_format: ReportFormat = field(default="HTML", name="HL7_TCR_OUT_FORMAT")
    tcr_api_url: HttpUrl = field(default="", name="TCR_API_URL")
    # Run-time configuration: named JSON files, one loaded at start if asked
    custom_dir: str = field(default="", name="HL7_CUSTOM_DIR")
    load_config_at_init: FileName = field(default="", name="LOAD_CONFIG_AT_INIT")
    load_template_at_init: FileName = field(default="", name="LOAD_TEMPLATE_AT_INIT")
    # Reports pushed by external providers, each on its own NATS subject and HTTP route
    webps_enable: bool = field(default=False, name="WEBPS_ENABLE")
    webps_providers: tuple[CoreName, ...] = field(default=(), name="WEBPS_PROVIDERS")
    # The original's HTTP routes (GET /config/, POST /config/load/{name}), served by the hl7
    # component itself on loopback, as the original's container answered curl. 0: not served
    # (compose.yaml sets 8000 in the hl7 container, the original's port).
    http_host: str = field(default="127.0.0.1", name="HL7_HTTP_HOST")
    http_port: Annotated[int, Meta(ge=0, le=65535)] = field(default=0, name="HL7_HTTP_PORT")

    def wanted_commands(self) -> tuple[str, ...]:
        """The inference commands whose findings go into the message, in message order."""
        wanted: list[str] = []
        if self.include_detections:
            wanted.append(self.detection_command)
        if self.include_measures:
            wanted.append(self.measure_command)
        return tuple(wanted)


VARIABLE_NAMES = frozenset(variables_of(Hl7Settings))
# What the hl7 component reads once, at start: a loaded configuration cannot change them.
FIXED_AT_START = frozenset(
    {
        "HL7_CUSTOM_DIR",
        "LOAD_CONFIG_AT_INIT",
        "LOAD_TEMPLATE_AT_INIT",
        "HL7_HTTP_HOST",
        "HL7_HTTP_PORT",
    }
)


# The first core's commands when INFERENCE_COMMANDS is not set (pacsor.config.settings).
_FIRST_CORE_COMMANDS = "smarturgences,smartxpert"


def _product_defaults(env: Mapping[str, str]) -> dict[str, str]:
    """Unset, the detection and measure commands are those the first core runs, so that a
    site running SmartTrauma or SmartChest gets its own findings; a kind of findings the
    first core does not produce is left out unless asked for."""
    commands = [
        c.strip()
        for c in (env.get("INFERENCE_COMMANDS", "").strip() or _FIRST_CORE_COMMANDS).split(",")
    ]
    defaults: dict[str, str] = {}
    for variable, include, kind in (
        ("DETECTION_INFERENCE_COMMAND", "INCLUDE_DETECTIONS_FINDINGS", DetectionCommand),
        ("MEASURE_INFERENCE_COMMAND", "INCLUDE_MEASURES_FINDINGS", MeasureCommand),
    ):
        if env.get(variable, "").strip():
            continue
        run = [c for c in commands if c in get_args(kind)]
        if run:
            defaults[variable] = run[0]
        elif not env.get(include, "").strip():
            defaults[include] = "false"
    return defaults


def load_hl7_settings(env: Mapping[str, str]) -> Hl7Settings:
    try:
        settings = read_struct({**env, **_product_defaults(env)}, Hl7Settings)
    except ConfigError as err:
        raise Hl7ConfigError(str(err)) from None
    if settings.enable and not settings.ris_ip:
        raise Hl7ConfigError("HL7_RIS_IP: not set; HL7_ENABLE=true needs the RIS address")
    if settings.include_tcr and not settings.tcr_api_url:
        raise Hl7ConfigError("TCR_API_URL: not set; HL7_INCLUDE_TCR=true needs the report API")
    if settings.webps_enable and not settings.webps_providers:
        raise Hl7ConfigError("WEBPS_PROVIDERS: not set; WEBPS_ENABLE=true needs provider names")
    if len(set(settings.webps_providers)) != len(settings.webps_providers):
        raise Hl7ConfigError(
            f"WEBPS_PROVIDERS: a provider is named twice in {','.join(settings.webps_providers)!r}"
        )
    if (settings.load_config_at_init or settings.load_template_at_init) and not settings.custom_dir:
        raise Hl7ConfigError("HL7_CUSTOM_DIR: not set; LOAD_*_AT_INIT names a file in it")
    return settings


def as_variables(settings: Hl7Settings) -> dict[str, str]:
    """The variables that give `settings` (the inverse of load_hl7_settings)."""
    env: dict[str, str] = {}
    for name, value in msgspec.to_builtins(settings).items():
        if isinstance(value, bool):
            env[name] = "true" if value else "false"
        elif isinstance(value, list | tuple):
            env[name] = ",".join(value)
        else:
            env[name] = str(value)
    return env


def with_overrides(settings: Hl7Settings, overrides: Mapping[str, str]) -> Hl7Settings:
    """`settings` with some variables set again (a loaded configuration wins)."""
    unknown = sorted(set(overrides) - VARIABLE_NAMES)
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(VARIABLE_NAMES), n=1, cutoff=0.75)
        hint = f" (closest known name: {close[0]})" if close else ""
        raise Hl7ConfigError(f"{unknown[0]}: not an HL7 setting{hint}")
    fixed = sorted(set(overrides) & FIXED_AT_START)
    if fixed:
        raise Hl7ConfigError(
            f"{fixed[0]}: read once at start; set it in the site file and restart the hl7 service"
        )
    return load_hl7_settings({**as_variables(settings), **overrides})
