"""The one typed configuration of pacsor, read once from the environment and `.env`.

Variable names follow the original Milvue DICOM gateway where the concept is the same
(MILVUE_AET, PORT, API_URL, TOKEN, PACS_IP, ...). Each Struct field is named after its
variable; msgspec converts the strings and checks the constraints (`Meta`), and any error
becomes one line that starts with the variable's name, so the CLI stops start-up with that line
instead of a traceback.

Several AI cores: the unsuffixed API_URL, TOKEN, ... are the first core; API_URL_1, TOKEN_1,
... (then _2, ...) add more. Each extra core names its own DESTINATIONS_n, or says
DESTINATIONS_n=same-as-first to send its results to the first core's (PACS_* and
DESTINATIONS): a test environment's results must never reach a production PACS by default.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from pacsor.config.hl7 import Hl7Settings, load_hl7_settings
from pacsor.config.known import unknown_variables
from pacsor.config.variables import (
    AeTitle,
    CallingAe,
    CoreName,
    HttpUrl,
    InferenceCommand,
    NatsUrl,
    Port,
    Seconds,
    Secret,
    TimeZone,
    convert,
    raw_fields,
    read_dotenv,
    variables_of,
)
from pacsor.errors import ConfigError

# A token a person could guess or try in a day is no token.
MIN_ADMIN_TOKEN = 16
HostName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$|^[0-9a-fA-F:]{2,39}$")]

# The names of pacsor.dicom.profiles.PROFILES (a test keeps the two in step).
Profile = Literal["Default", "WithSC", "WithRF", "WithSCRF", "All"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
LogFormat = Literal["text", "json"]
CoreKind = Literal["inference", "tcr"]
# The result options of the API's results route, with the values the contract allows.
OutputFormat = Literal["overlay", "highbit", "gsps"]
Language = Literal["fr", "en", "es", "de", "it", "pt"]
OutputSelection = Literal["all", "no_recap", "no_negatives", "none"]
StructuredReportFormat = Literal["lite", "normal", "full", "none"]
StaticReportFormat = Literal["rgb", "pdf", "none"]
RecapTheme = Literal["dark", "light"]
RESULT_OPTIONS = (
    "output_format",
    "language",
    "output_selection",
    "structured_report_format",
    "static_report_format",
    "recap_theme",
    "timezone",
)
# Re-exported by pacsor.config with the settings.
__all__ = [
    "ConfigError",
    "CoreSettings",
    "Destination",
    "Settings",
    "load_settings",
    "parse_destination",
    "read_dotenv",
    "require_api_tokens",
]


# DESTINATIONS_n=same-as-first: core n shares the first core's destinations.
SAME_AS_FIRST = "same-as-first"


class Destination(msgspec.Struct, frozen=True):
    """A DICOM peer that receives result objects; `tls` when written `AET@host:port?tls`.

    Its name (str) leaves the transport out: switching a PACS to TLS keeps its consumer, its
    recorded answers and its events.
    """

    ae_title: AeTitle
    host: str
    port: Port
    tls: bool = False

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"

    @property
    def label(self) -> str:
        """The name, with the transport when it is TLS: what a person reads."""
        return f"{self}?tls" if self.tls else str(self)


class CoreSettings(msgspec.Struct, frozen=True, kw_only=True):
    """One AI environment ("core"): where studies are uploaded and where its results go."""

    name: CoreName
    kind: CoreKind = "inference"
    api_url: HttpUrl
    token: str
    signed_url: bool
    inference_commands: tuple[InferenceCommand, ...]
    destinations: tuple[Destination, ...]
    dicom_filters: str  # JSON rules, as in the original gateway; checked at start-up
    # 0 for the unsuffixed core (API_URL, TOKEN, ...), n for core n (API_URL_n, TOKEN_n, ...).
    index: int = 0

    def variable(self, name: str) -> str:
        """The name of this core's variable `name`: TOKEN, TOKEN_1, ..."""
        return name if self.index == 0 else f"{name}_{self.index}"


class ExtraCore(msgspec.Struct, frozen=True, kw_only=True, rename="upper"):
    """The variables of core n (API_URL_n, ...), read with the suffix removed."""

    api_url: HttpUrl
    token: Secret = ""
    core_name: CoreName | None = None
    core_kind: CoreKind = "inference"
    signed_url: bool | None = None
    inference_commands: Annotated[tuple[InferenceCommand, ...], Meta(min_length=1)] | None = None
    # Its own destinations, or SAME_AS_FIRST; unset is refused for an inference core.
    destinations: tuple[Destination, ...] | Literal["same-as-first"] | None = None
    dicom_filters: str = ""


class Settings(msgspec.Struct, frozen=True, kw_only=True, rename="upper", dict=True):
    """Every setting, read once at start (load_settings); derived values are computed once."""

    # DICOM reception
    milvue_aet: AeTitle = "MILVUE"
    port: Port = 1040
    # The address the SCP listens on (PORT and DICOM_TLS_PORT): every interface, or the one
    # facing the modalities on a host with several networks.
    dicom_host: str = "0.0.0.0"
    config_profile: Profile = "WithSC"
    study_quiet_seconds: Seconds = 10.0
    # Associations served at once; more are refused (and logged, and counted).
    max_associations: Annotated[int, Meta(ge=1, le=1000)] = 32
    # How long a C-STORE waits for JetStream before answering 0xA700 (the sender retries).
    scp_store_timeout_seconds: Seconds = 5.0
    # Who may store: AET or AET@address, comma separated; empty: every caller.
    allowed_calling_aets: Annotated[tuple[CallingAe, ...], Meta(max_length=256)] = ()
    # Open associations from one address; more are refused. Only applies below MAX_ASSOCIATIONS.
    max_associations_per_host: Annotated[int, Meta(ge=1, le=1000)] = 8
    # Deadline for reading one PDU, for the association request after connecting, and for a
    # TLS handshake: a peer that stops mid-message is cut off after this long.
    scp_read_timeout_seconds: Seconds = 15.0
    # An accepted association that sends nothing for this long is aborted.
    scp_idle_timeout_seconds: Seconds = 60.0
    # The largest PDU accepted (advertised to senders as the maximum length); larger: abort.
    max_pdu_bytes: Annotated[int, Meta(ge=16_384, le=64 * 1024 * 1024)] = 1024 * 1024
    # The largest instance accepted, and the bound a deflated one may inflate to.
    max_instance_bytes: Annotated[int, Meta(ge=1024)] = 2 * 1024**3
    # DICOM TLS on the SCP: with DICOM_TLS_CERT and DICOM_TLS_KEY (below) it also listens on
    # this port; with DICOM_TLS_CA, a client certificate signed by it is required.
    dicom_tls_port: Port = 2762
    # AI API: the first core
    api_url: HttpUrl = "http://127.0.0.1:8421"
    token: Secret = ""
    core_name: CoreName = "default"
    core_kind: CoreKind = "inference"
    # Signed URLs, as cloud environments take them; false: multipart STOW (on-premise APIs).
    signed_url: bool = True
    inference_commands: Annotated[tuple[InferenceCommand, ...], Meta(min_length=1)] = (
        "smarturgences",
        "smartxpert",
    )
    dicom_filters: str = ""
    poll_interval_seconds: Seconds = 3.0
    result_timeout_seconds: Seconds = 600.0
    api_timeout_seconds: Seconds = 60.0
    # Uploads, for every core
    upload_batch_size: Annotated[int, Meta(ge=1, le=10_000)] = 100
    # Signed-URL PUTs of one batch in flight at once (each is one round trip to the cloud)
    upload_concurrency: Annotated[int, Meta(ge=1, le=64)] = 8
    upload_rate_limit: Annotated[float, Meta(ge=0)] = 0.0  # instances/s per core; 0: no limit
    no_duplicate_upload: bool = True
    # Result options sent with every result request (unset: the API's default)
    output_format: OutputFormat | None = None
    language: Language | None = None
    output_selection: OutputSelection | None = None
    structured_report_format: StructuredReportFormat | None = None
    static_report_format: StaticReportFormat | None = None
    recap_theme: RecapTheme | None = None
    timezone: TimeZone | None = None
    # Result destinations
    pacs_ip: str = ""
    pacs_port: Port = 104
    pacs_aet: AeTitle = "PACS"
    destinations: tuple[Destination, ...] = ()
    # DICOM TLS, as a client to the destinations marked ?tls: the authorities that sign the
    # PACS's certificates (unset: the system's), and pacsor's own certificate and key. The SCP
    # serves TLS with the same certificate and key, and requires client certificates signed
    # by DICOM_TLS_CA when it is set.
    dicom_tls_ca: str = ""
    dicom_tls_cert: str = ""
    dicom_tls_key: str = ""
    # The cores whose results are sent to the RIS as ORU^R01 (unset: the first core only),
    # so that the RIS gets one message per study whatever the number of cores.
    hl7_cores: tuple[CoreName, ...] = ()
    # Retry policy shared by every handler
    retry_initial_seconds: Seconds = 2.0
    retry_max_seconds: Seconds = 300.0
    retry_max_attempts: Annotated[int, Meta(ge=1, le=1000)] = 12
    # Broker
    nats_url: Annotated[tuple[NatsUrl, ...], Meta(max_length=32)] = ()
    # Who pacsor is to NATS (a user:password inside NATS_URL works too). Unset with the
    # embedded server: the credentials it generated under PACSOR_DATA_DIR.
    nats_user: str = ""
    nats_password: Secret = ""
    # TLS to NATS: the CA that signed the server's certificate, and a client certificate.
    nats_tls_ca: str = ""
    nats_tls_cert: str = ""
    nats_tls_key: str = ""
    # Copies of every stream and bucket: 3 on a three-node cluster.
    nats_replicas: Annotated[int, Meta(ge=1, le=5)] = 1
    embedded_nats_port: Port = 4222
    # The embedded server encrypts its store with this key (ChaCha20-Poly1305).
    nats_store_key: Secret = ""
    data_dir: Path = msgspec.field(default=Path(".pacsor"), name="PACSOR_DATA_DIR")
    log_level: LogLevel = "INFO"
    # text: one short line per event, for people; json: for log collectors. Unset: text on a
    # terminal, JSON otherwise (containers, pipes).
    log_format: LogFormat | None = None
    # The HTTP client's proxy (the standard variables), for the AI API and the report service.
    # Read from .env too: the CLI exports them for the HTTP client, which reads the environment.
    https_proxy: str = ""
    http_proxy: str = ""
    no_proxy: str = ""
    # Admin API and dashboard
    admin_host: str = "127.0.0.1"
    admin_port: Port = 7000
    admin_token: Secret = ""
    # Host names (besides loopback and ADMIN_HOST) the admin answers to: its DNS names.
    admin_hosts: Annotated[tuple[HostName, ...], Meta(max_length=32)] = ()
    # Retention: stored DICOM objects, and events
    retention_hours: Seconds = 168.0
    events_retention_days: Seconds = 365.0
    output_cleaning: bool = False
    # With OUTPUT_CLEANING: how long a study whose latest attempt failed keeps its objects
    # (time to relaunch it), before they are removed as the original gateway (2.8.0) did.
    output_cleaning_failed_hours: Seconds = 24.0
    retention_check_seconds: Seconds = 600.0
    # Cores 1, 2, ... from API_URL_1, API_URL_2, ...
    extra_cores: tuple[ExtraCore, ...] = msgspec.field(default=(), name="EXTRA_CORES")
    # HL7 ORU^R01 to the RIS (pacsor.config.hl7), read from the same environment
    hl7: Hl7Settings = msgspec.field(default_factory=Hl7Settings, name="HL7")

    def all_destinations(self) -> tuple[Destination, ...]:
        """The PACS (when PACS_IP is set) followed by every extra destination."""
        pacs = (Destination(self.pacs_aet, self.pacs_ip, self.pacs_port),) if self.pacs_ip else ()
        return pacs + self.destinations

    def result_options(self) -> dict[str, str]:
        """The result options that are set, as the results route's query parameters."""
        options = {name: getattr(self, name) for name in RESULT_OPTIONS}
        return {name: value for name, value in options.items() if value is not None}

    @property
    def ris_cores(self) -> frozenset[str]:
        """The names of the cores whose results go to the RIS (HL7_CORES)."""
        return frozenset(self.hl7_cores or (self.core_name,))

    @property
    def nats_servers(self) -> str:
        """NATS_URL as nats-py takes it ("" means the embedded server)."""
        return ",".join(self.nats_url)

    @functools.cached_property
    def quiet_period(self) -> timedelta:
        """STUDY_QUIET_SECONDS: how long without a new instance before a study is complete."""
        return timedelta(seconds=self.study_quiet_seconds)

    @functools.cached_property
    def cores(self) -> tuple[CoreSettings, ...]:
        """Every AI core: the unsuffixed one first, then cores 1, 2, ..."""
        first = CoreSettings(
            name=self.core_name,
            kind=self.core_kind,
            api_url=self.api_url,
            token=self.token,
            signed_url=self.signed_url,
            inference_commands=self.inference_commands,
            destinations=self.all_destinations(),
            dicom_filters=self.dicom_filters,
        )
        extra = tuple(
            CoreSettings(
                name=core.core_name or f"core{n}",
                kind=core.core_kind,
                api_url=core.api_url,
                token=core.token,
                signed_url=self.signed_url if core.signed_url is None else core.signed_url,
                inference_commands=core.inference_commands or self.inference_commands,
                destinations=self._extra_destinations(core),
                dicom_filters=core.dicom_filters,
                index=n,
            )
            for n, core in enumerate(self.extra_cores, start=1)
        )
        return (first, *extra)

    def _extra_destinations(self, core: ExtraCore) -> tuple[Destination, ...]:
        if isinstance(core.destinations, str):  # SAME_AS_FIRST
            return self.all_destinations()
        # Unset: a report core (no result objects), refused at load for an inference core.
        return core.destinations or ()


def require_api_tokens(settings: Settings) -> None:
    """What talking to the AI API needs: a token for every core."""
    for core in settings.cores:
        if not core.token:
            variable = core.variable("TOKEN")
            raise ConfigError(f"{variable}: not set; the Milvue API needs an API key")


def parse_destination(name: str, raw: str) -> Destination:
    """AET@host:port, checked like the settings are."""
    return convert(_destination_fields(name, raw), Destination, {}, name)


def _destination_fields(name: str, raw: str) -> dict[str, Any]:
    match = re.fullmatch(r"\s*([^@]+)@([^:@\s?]+):(\d+)(\?tls)?\s*", raw)
    if not match:
        raise ConfigError(f"{name}: expected AET@host:port or AET@host:port?tls, got {raw!r}")
    aet, host, port, tls = match.groups()
    return {"ae_title": aet.strip(), "host": host, "port": port, "tls": bool(tls)}


def _destinations(name: str, raw: str) -> list[dict[str, Any]] | str:
    if raw.strip().lower() == SAME_AS_FIRST and name != "DESTINATIONS":
        return SAME_AS_FIRST
    return [_destination_fields(name, d) for d in raw.split(",") if d.strip()]


_READERS = {"DESTINATIONS": _destinations}
# The names a site file may hold (besides the HL7 ones): Settings' own, and each core's.
TOP_LEVEL_VARIABLES = frozenset(variables_of(Settings)) - {"EXTRA_CORES", "HL7"}
PER_CORE_VARIABLES = frozenset(variables_of(ExtraCore))


def _check_nats(settings: Settings) -> None:
    if bool(settings.nats_tls_cert) != bool(settings.nats_tls_key):
        raise ConfigError(
            "NATS_TLS_CERT: a client certificate needs both NATS_TLS_CERT and NATS_TLS_KEY"
        )
    for name in ("nats_tls_ca", "nats_tls_cert", "nats_tls_key"):
        path = getattr(settings, name)
        if path and not Path(path).is_file():
            raise ConfigError(f"{name.upper()}: no such file, got {path!r}")
    if settings.nats_password and not settings.nats_user:
        raise ConfigError("NATS_USER: not set; NATS_PASSWORD needs the user it belongs to")
    if settings.nats_store_key and len(settings.nats_store_key) < 16:
        raise ConfigError("NATS_STORE_KEY: at least 16 characters (pacsor setup writes 43)")


def load_settings(
    environ: Mapping[str, str] | None = None,
    dotenv: Path | None = Path(".env"),
    overrides: Mapping[str, str] | None = None,
    running_demo: Mapping[str, str] | None = None,
) -> Settings:
    """Build Settings from `.env`, a running demo's settings, the environment, then
    `overrides` (last wins).

    A variable that pacsor would ignore (unknown, or numbered out of sequence) is a
    ConfigError with one line per variable, each naming the closest known name.
    """
    site_file = read_dotenv(dotenv) if dotenv is not None else {}
    environment = os.environ if environ is None else environ
    env: dict[str, str] = {
        **site_file,
        **(running_demo or {}),
        **environment,
        **(overrides or {}),
    }
    ignored = unknown_variables(site_file, environment, TOP_LEVEL_VARIABLES, PER_CORE_VARIABLES)
    if ignored:
        raise ConfigError("\n".join(ignored))

    raw = raw_fields(env, Settings, readers=_READERS)
    cores: list[dict[str, Any]] = []
    while env.get(f"API_URL_{len(cores) + 1}", "").strip():
        cores.append(raw_fields(env, ExtraCore, f"_{len(cores) + 1}", readers=_READERS))
    if cores:
        raw["EXTRA_CORES"] = cores
    settings = msgspec.structs.replace(
        convert(raw, Settings, env, "settings"), hl7=load_hl7_settings(env)
    )
    _check_nats(settings)
    names = [core.name for core in settings.cores]
    for n, name in enumerate(names):
        if name in names[:n]:
            variable = settings.cores[n].variable("CORE_NAME")
            raise ConfigError(f"{variable}: two cores are named {name!r}; names must differ")
    for n, core in enumerate(settings.extra_cores, start=1):
        if core.destinations is None and core.core_kind == "inference":
            raise ConfigError(
                f"DESTINATIONS_{n}: not set; core {names[n]!r} must name its own destinations, "
                f"or share the first core's with DESTINATIONS_{n}={SAME_AS_FIRST}"
            )
    unknown = [name for name in settings.hl7_cores if name not in names]
    if unknown:
        raise ConfigError(
            f"HL7_CORES: {unknown[0]!r} is not a core; the cores are {', '.join(names)}"
        )
    if bool(settings.dicom_tls_cert) != bool(settings.dicom_tls_key):
        variable = "DICOM_TLS_KEY" if settings.dicom_tls_cert else "DICOM_TLS_CERT"
        raise ConfigError(f"{variable}: not set; a client certificate needs both CERT and KEY")
    if 0 < len(settings.admin_token) < MIN_ADMIN_TOKEN:
        raise ConfigError(
            f"ADMIN_TOKEN: at least {MIN_ADMIN_TOKEN} characters are needed, it has "
            f"{len(settings.admin_token)} (make one with: openssl rand -hex 24)"
        )
    return settings
