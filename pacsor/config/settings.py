"""The one typed configuration of pacsor, read once from the environment and `.env`.

Variable names follow the original Milvue DICOM gateway where the concept is the same
(MILVUE_AET, PORT, API_URL, TOKEN, PACS_IP, ...). Every error names the variable, so the
CLI can stop start-up with one line instead of a traceback.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

import msgspec

from pacsor.config.hl7 import Hl7ConfigError, Hl7Settings, load_hl7_settings
from pacsor.dicom.profiles import PROFILES
from pacsor.domain.filters import FilterError, FilterRule, parse_filters

T = TypeVar("T")

AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # 16 chars, no backslash or control
CORE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")


class ConfigError(ValueError):
    """A setting is missing or malformed; the message starts with the variable's name."""


class Destination(msgspec.Struct, frozen=True):
    """A DICOM peer that receives result objects."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


# The result options of the API's results route, with the values the contract allows
# (timezone: any IANA name). Unset options are not sent: the API's defaults apply.
RESULT_OPTION_VALUES: dict[str, tuple[str, ...]] = {
    "output_format": ("overlay", "highbit", "gsps"),
    "language": ("fr", "en", "es", "de", "it", "pt"),
    "output_selection": ("all", "no_recap", "no_negatives", "none"),
    "structured_report_format": ("lite", "normal", "full", "none"),
    "static_report_format": ("rgb", "pdf", "none"),
    "recap_theme": ("dark", "light"),
    "timezone": (),
}


class ResultOptions(msgspec.Struct, frozen=True, kw_only=True):
    output_format: str = ""
    language: str = ""
    output_selection: str = ""
    structured_report_format: str = ""
    static_report_format: str = ""
    recap_theme: str = ""
    timezone: str = ""

    def query(self) -> dict[str, str]:
        """The options that are set, as query parameters."""
        return {k: v for k, v in msgspec.structs.asdict(self).items() if v}


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    # DICOM reception
    milvue_aet: str = "MILVUE"
    port: int = 1040
    config_profile: str = "WithSC"
    study_quiet_seconds: float = 10.0
    # AI API
    api_url: str = "http://127.0.0.1:8421"
    token: str = ""
    core_name: str = "default"
    inference_commands: tuple[str, ...] = ("smarturgences", "smartxpert")
    poll_interval_seconds: float = 3.0
    result_timeout_seconds: float = 600.0
    api_timeout_seconds: float = 60.0
    signed_url: bool = True
    dicom_filters: tuple[FilterRule, ...] = ()
    result_options: ResultOptions = ResultOptions()
    upload_batch_size: int = 100
    upload_rate_limit: float = 0.0  # instances per second per core; 0: unlimited
    no_duplicate_upload: bool = True
    # Result destinations
    pacs_ip: str = ""
    pacs_port: int = 104
    pacs_aet: str = "PACS"
    destinations: tuple[Destination, ...] = ()
    # Retry policy shared by every handler
    retry_initial_seconds: float = 2.0
    retry_max_seconds: float = 300.0
    retry_max_attempts: int = 12
    # Broker
    nats_url: str = ""
    nats_replicas: int = 1  # copies of every stream and bucket: 3 on a three-node cluster
    embedded_nats_port: int = 4222
    data_dir: Path = Path(".pacsor")
    log_level: str = "INFO"
    # Admin API and dashboard
    admin_host: str = "127.0.0.1"
    admin_port: int = 7000
    admin_token: str = ""
    # Retention: stored DICOM objects, and events
    retention_hours: float = 168.0
    events_retention_days: float = 365.0
    output_cleaning: bool = False
    # HL7 ORU^R01 to the RIS (pacsor.config.hl7)
    hl7: Hl7Settings = msgspec.field(default_factory=Hl7Settings)

    def all_destinations(self) -> tuple[Destination, ...]:
        """The PACS (when PACS_IP is set) followed by every extra destination."""
        pacs = (Destination(self.pacs_aet, self.pacs_ip, self.pacs_port),) if self.pacs_ip else ()
        return pacs + self.destinations


def read_dotenv(path: Path) -> dict[str, str]:
    """Parse a `.env` file: KEY=VALUE lines, `#` comments, optional quotes."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :]
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{path}: line {number} is not KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def _positive_float(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}: expected a number of seconds, got {raw!r}") from None
    if not value > 0:
        raise ConfigError(f"{name}: must be greater than 0, got {raw!r}")
    return value


def _int_in(name: str, raw: str, low: int, high: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}: expected an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}: must be between {low} and {high}, got {value}")
    return value


def _boolean(name: str, raw: str) -> bool:
    value = raw.lower()
    if value not in {"true", "false", "1", "0", "yes", "no"}:
        raise ConfigError(f"{name}: expected true or false, got {raw!r}")
    return value in {"true", "1", "yes"}


def _ae_title(name: str, raw: str) -> str:
    value = raw.strip()
    if not AE_TITLE.match(value):
        raise ConfigError(f"{name}: an AE title is 1 to 16 printable characters, got {raw!r}")
    return value


def _url(name: str, raw: str) -> str:
    if not re.match(r"^https?://[^/\s]+", raw):
        raise ConfigError(f"{name}: expected an http:// or https:// URL, got {raw!r}")
    return raw.rstrip("/")


def parse_destination(name: str, raw: str) -> Destination:
    match = re.fullmatch(r"\s*([^@]+)@([^:@\s]+):(\d+)\s*", raw)
    if not match:
        raise ConfigError(f"{name}: expected AET@host:port, got {raw!r}")
    aet, host, port = match.groups()
    return Destination(_ae_title(name, aet), host, _int_in(name, port, 1, 65535))


def _commands(name: str, raw: str) -> tuple[str, ...]:
    commands = tuple(c.strip() for c in raw.split(",") if c.strip())
    if not commands:
        raise ConfigError(f"{name}: at least one inference command is needed")
    for command in commands:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", command):
            raise ConfigError(f"{name}: {command!r} is not an inference command name")
    return commands


def parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"true", "1", "yes", "on"}:
        return True
    if value in {"false", "0", "no", "off"}:
        return False
    raise ConfigError(f"{name}: expected true or false, got {raw!r}")


def parse_dicom_filters(name: str, raw: str) -> tuple[FilterRule, ...]:
    try:
        return parse_filters(raw)
    except FilterError as err:
        raise ConfigError(f"{name}: {err}") from None


def _rate(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}: expected instances per second, got {raw!r}") from None
    if not value >= 0:
        raise ConfigError(f"{name}: must be 0 (unlimited) or more, got {raw!r}")
    return value


def _result_options(env: Mapping[str, str]) -> ResultOptions:
    options: dict[str, str] = {}
    for field, allowed in RESULT_OPTION_VALUES.items():
        name = field.upper()
        raw = (env.get(name) or "").strip()
        if not raw:
            continue
        if allowed and raw not in allowed:
            raise ConfigError(f"{name}: expected one of {', '.join(allowed)}, got {raw!r}")
        if not allowed and not re.fullmatch(r"[A-Za-z0-9_+\-/]{1,64}", raw):
            raise ConfigError(f"{name}: expected a time zone such as Europe/Paris, got {raw!r}")
        options[field] = raw
    return ResultOptions(**options)


def load_settings(
    environ: Mapping[str, str] | None = None,
    dotenv: Path | None = Path(".env"),
    overrides: Mapping[str, str] | None = None,
) -> Settings:
    """Build Settings from `.env`, then the environment, then `overrides` (last wins)."""
    env: dict[str, str] = {}
    if dotenv is not None:
        env.update(read_dotenv(dotenv))
    env.update(os.environ if environ is None else environ)
    env.update(overrides or {})

    kwargs: dict[str, object] = {}

    def take(name: str, field: str, parse: Callable[[str, str], object]) -> None:
        raw = env.get(name)
        if raw is not None and raw.strip() != "":
            kwargs[field] = parse(name, raw.strip())

    def profile(name: str, raw: str) -> str:
        if raw not in PROFILES:
            raise ConfigError(f"{name}: expected one of {', '.join(PROFILES)}, got {raw!r}")
        return raw

    def core(name: str, raw: str) -> str:
        if not CORE_NAME.match(raw):
            raise ConfigError(f"{name}: lower-case letters, digits and '-', got {raw!r}")
        return raw

    def level(name: str, raw: str) -> str:
        if raw.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ConfigError(f"{name}: expected DEBUG, INFO, WARNING or ERROR, got {raw!r}")
        return raw.upper()

    def nats_url(name: str, raw: str) -> str:
        for url in raw.split(","):
            if not re.match(r"^(nats|tls|ws|wss)://[^/\s]+$", url.strip()):
                raise ConfigError(f"{name}: expected nats://host:port, got {raw!r}")
        return raw

    def destinations(name: str, raw: str) -> tuple[Destination, ...]:
        return tuple(parse_destination(name, d) for d in raw.split(",") if d.strip())

    take("MILVUE_AET", "milvue_aet", _ae_title)
    take("PORT", "port", lambda n, r: _int_in(n, r, 1, 65535))
    take("CONFIG_PROFILE", "config_profile", profile)
    take("STUDY_QUIET_SECONDS", "study_quiet_seconds", _positive_float)
    take("API_URL", "api_url", _url)
    take("TOKEN", "token", lambda n, r: r)
    take("CORE_NAME", "core_name", core)
    take("INFERENCE_COMMANDS", "inference_commands", _commands)
    take("POLL_INTERVAL_SECONDS", "poll_interval_seconds", _positive_float)
    take("RESULT_TIMEOUT_SECONDS", "result_timeout_seconds", _positive_float)
    take("API_TIMEOUT_SECONDS", "api_timeout_seconds", _positive_float)
    take("SIGNED_URL", "signed_url", parse_bool)
    take("DICOM_FILTERS", "dicom_filters", parse_dicom_filters)
    take("UPLOAD_BATCH_SIZE", "upload_batch_size", lambda n, r: _int_in(n, r, 1, 10_000))
    take("UPLOAD_RATE_LIMIT", "upload_rate_limit", _rate)
    take("NO_DUPLICATE_UPLOAD", "no_duplicate_upload", parse_bool)
    kwargs["result_options"] = _result_options(env)
    take("PACS_IP", "pacs_ip", lambda n, r: r)
    take("PACS_PORT", "pacs_port", lambda n, r: _int_in(n, r, 1, 65535))
    take("PACS_AET", "pacs_aet", _ae_title)
    take("DESTINATIONS", "destinations", destinations)
    take("RETRY_INITIAL_SECONDS", "retry_initial_seconds", _positive_float)
    take("RETRY_MAX_SECONDS", "retry_max_seconds", _positive_float)
    take("RETRY_MAX_ATTEMPTS", "retry_max_attempts", lambda n, r: _int_in(n, r, 1, 1000))
    take("NATS_URL", "nats_url", nats_url)
    take("NATS_REPLICAS", "nats_replicas", lambda n, r: _int_in(n, r, 1, 5))
    take("EMBEDDED_NATS_PORT", "embedded_nats_port", lambda n, r: _int_in(n, r, 1, 65535))
    take("PACSOR_DATA_DIR", "data_dir", lambda n, r: Path(r))
    take("LOG_LEVEL", "log_level", level)
    take("ADMIN_HOST", "admin_host", lambda n, r: r)
    take("ADMIN_PORT", "admin_port", lambda n, r: _int_in(n, r, 1, 65535))
    take("ADMIN_TOKEN", "admin_token", lambda n, r: r)
    take("RETENTION_HOURS", "retention_hours", _positive_float)
    take("EVENTS_RETENTION_DAYS", "events_retention_days", _positive_float)
    take("OUTPUT_CLEANING", "output_cleaning", _boolean)
    try:
        kwargs["hl7"] = load_hl7_settings(env)
    except Hl7ConfigError as err:
        raise ConfigError(str(err)) from None
    return Settings(**kwargs)  # type: ignore[arg-type]


def require(settings: Settings, component: str) -> None:
    """Check the settings a component cannot run without; raise ConfigError naming one."""
    if component in {"uploader", "poller"} and not settings.token:
        raise ConfigError("TOKEN: not set; the Milvue API needs an API key")
    if component == "dispatcher" and not settings.all_destinations():
        raise ConfigError("PACS_IP: not set and DESTINATIONS is empty; results need a destination")
    if component == "hl7" and not settings.hl7.ris_ip:
        raise ConfigError("HL7_RIS_IP: not set; the hl7 component sends to the RIS")
