"""The one place that knows JetStream names: streams, buckets, subjects, consumers, headers.

    pacsor.study.<study>.received|rejected|complete              study-level events
    pacsor.study.<study>.<core>.uploaded|result_ready|...        per AI core events
    pacsor.site.hl7_config_loaded|...                            facts about no study
    pacsor.timer.<study>.quiet    the pending quiet-period schedule (replaced on each instance)
    pacsor.timer.<study>.held     the completion's look again at an association still open
    pacsor.timer.<study>.elapsed  where the server publishes either when it fires
    pacsor.hold.<study>.<holder>  an SCP's open associations sending the study (last value)

DICOM UIDs hold only digits and dots; dots separate NATS tokens, so a UID is written with
`_` in place of `.` (reversible).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable

from pacsor.domain.events import CoreEvent, Event, InstanceReceived, SiteEvent

EVENTS_STREAM = "PACSOR"
TIMERS_STREAM = "PACSOR_TIMERS"
HOLDS_STREAM = "PACSOR_HOLDS"
INSTANCES_BUCKET = "PACSOR_INSTANCES"
RESULTS_BUCKET = "PACSOR_RESULTS"
DISPATCH_PROGRESS_BUCKET = "PACSOR_DISPATCH"

# Headers JetStream understands.
MSG_ID_HEADER = "Nats-Msg-Id"  # deduplication within the stream's duplicate window
EXPECTED_LAST_SUBJECT_SEQUENCE_HEADER = "Nats-Expected-Last-Subject-Sequence"
WRONG_LAST_SEQUENCE = 10071  # JetStream's error code when that expectation fails
ROLLUP_HEADER = "Nats-Rollup"
ROLLUP_SUBJECT = "sub"  # the message replaces every earlier one on its subject
SCHEDULE_HEADER = "Nats-Schedule"
SCHEDULE_TARGET_HEADER = "Nats-Schedule-Target"

ALL_EVENTS = "pacsor.study.>"
SITE_EVENTS = "pacsor.site.>"
UNKNOWN_STUDY = "unknown"
_UID = re.compile(r"^[0-9.]{1,64}$")


def is_valid_uid(uid: str) -> bool:
    return bool(_UID.match(uid))


def uid_token(uid: str) -> str:
    if not uid:
        return UNKNOWN_STUDY
    if not is_valid_uid(uid):
        raise ValueError(f"not a DICOM UID: {uid!r}")
    return uid.replace(".", "_")


def uid_from_token(token: str) -> str:
    return "" if token == UNKNOWN_STUDY else token.replace("_", ".")


def study_subjects(study_uid: str) -> str:
    """Filter for one study's whole history."""
    return f"pacsor.study.{uid_token(study_uid)}.>"


def event_subject(event: Event) -> str:
    if isinstance(event, SiteEvent):
        return site_events(type(event))
    if isinstance(event, CoreEvent):
        return study_core_events(event.study_uid, type(event), event.core)
    return study_events(event.study_uid, type(event))


def events_filter(kind: type[Event]) -> str:
    """Filter for one event type across all studies (and cores): where every one of them is."""
    if issubclass(kind, SiteEvent):
        return site_events(kind)
    if issubclass(kind, CoreEvent):
        return core_events_filter(kind, "*")
    return f"pacsor.study.*.{kind.topic}"


def site_events(kind: type[SiteEvent]) -> str:
    """The subject of one kind of fact about the site."""
    return f"pacsor.site.{kind.topic}"


def core_events_filter(kind: type[CoreEvent], core: str) -> str:
    """Filter for one per-core event type of one core (`*`: every core), across studies."""
    return f"pacsor.study.*.{core}.{kind.topic}"


def study_events(study_uid: str, kind: type[Event]) -> str:
    """The subject of one study-level event type of one study."""
    if issubclass(kind, CoreEvent):
        raise ValueError(f"{kind.__name__} is recorded per core: see study_core_events")
    return f"pacsor.study.{uid_token(study_uid)}.{kind.topic}"


def study_core_events(study_uid: str, kind: type[CoreEvent], core: str) -> str:
    """Filter for one per-core event type of one study and core."""
    return f"pacsor.study.{uid_token(study_uid)}.{core}.{kind.topic}"


# The key-value bucket of shared limits: `upload.<core>` holds the next free upload slot.
LIMITS_BUCKET = "PACSOR_LIMITS"


def upload_rate_key(core: str) -> str:
    return f"upload.{core}"


def quiet_schedule_subject(study_uid: str) -> str:
    return f"pacsor.timer.{uid_token(study_uid)}.quiet"


def quiet_elapsed_subject(study_uid: str) -> str:
    return f"pacsor.timer.{uid_token(study_uid)}.elapsed"


def held_schedule_subject(study_uid: str) -> str:
    return f"pacsor.timer.{uid_token(study_uid)}.held"


QUIET_ELAPSED_FILTER = "pacsor.timer.*.elapsed"
QUIET_SCHEDULES = "pacsor.timer.*.quiet"
HELD_SCHEDULES = "pacsor.timer.*.held"


def study_from_subject(subject: str) -> str:
    """The study UID in any pacsor.study.* or pacsor.timer.* subject."""
    return uid_from_token(subject.split(".")[2])


# Durable consumer names: one per handler, per core and per destination where it applies.
QUIET_TIMER_CONSUMER = "quiet-timer"
COMPLETION_CONSUMER = "study-completion"


def upload_consumer(core: str) -> str:
    return f"upload-{core}"


def poll_consumer(core: str) -> str:
    return f"poll-{core}"


def destination_token(destination: str) -> str:
    """A destination `AET@host:port` as one name token: `AET_host_port`."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", destination)


def dispatch_consumer(core: str, destination: str) -> str:
    return f"dispatch-{core}-{destination_token(destination)}"


def dispatch_progress_key(study_uid: str, core: str, attempt: int, destination: str) -> str:
    return f"{uid_token(study_uid)}.{core}.{attempt}.{destination_token(destination)}"


def received_subject(study_uid: str) -> str:
    """Where a study's InstanceReceived events are: read back to list an attempt's instances."""
    return study_events(study_uid, InstanceReceived)


def hold_subject(study_uid: str, holder: str) -> str:
    return f"pacsor.hold.{uid_token(study_uid)}.{holder}"


def holds_filter(study_uid: str) -> str:
    return f"pacsor.hold.{uid_token(study_uid)}.*"


ALL_HOLDS = "pacsor.hold.>"


def stream_api_subject(action: str, stream: str) -> str:
    """JetStream's API for streams, used raw to apply the declarations as they are written."""
    return f"$JS.API.STREAM.{action}.{stream}"


# Object-store buckets, in the layout of nats-py's and the `nats` CLI's object store.
def object_store_stream(bucket: str) -> str:
    return f"OBJ_{bucket}"


def object_meta_subject(bucket: str, name: str) -> str:
    return f"$O.{bucket}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"


def object_chunk_subject(bucket: str, nuid: str) -> str:
    return f"$O.{bucket}.C.{nuid}"


def instance_object_name(study_uid: str, sop_uid: str, digest_hex: str) -> str:
    """One version of an instance: a resent, changed instance is another object, never a
    replacement, so an event always names the bytes it describes."""
    return f"{study_uid}/{sop_uid}/{digest_hex}"


def result_object_name(study_uid: str, core: str, attempt: int, sop_uid: str) -> str:
    return f"{study_uid}/{core}/{attempt}/{sop_uid}"


def findings_object_name(study_uid: str, core: str, attempt: int, inference_command: str) -> str:
    """Where the JSON findings of one inference command are kept in the results bucket."""
    return f"{study_uid}/{core}/{attempt}/findings/{inference_command}.json"


# The RIS sender's durable consumer: every core's ResultReady.
HL7_DURABLE = "hl7-ris"


# --- Operators: relaunch and replay ---------------------------------------------------------

RELAUNCH_FILTER = "pacsor.study.*.relaunch_requested"
RELAUNCH_DURABLE = "study-relaunch"


def destination_slug(destination: str) -> str:
    """A destination (AET@host:port) as a token usable in a durable consumer's name."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", destination.replace("@", "_").replace(":", "_"))


def replay_filter(core: str) -> str:
    return f"pacsor.study.*.{core}.replay_requested"


def replay_durable(core: str, destination: str) -> str:
    return f"replay-{core}-{destination_slug(destination)}"


def retention_max_ages(events_days: float, objects_hours: float) -> dict[str, float]:
    """The streams' max_age in seconds: the events for EVENTS_RETENTION_DAYS; the stored objects
    a day longer than RETENTION_HOURS, a backstop behind the recorded removals."""
    objects = (objects_hours + 24) * 3600
    return {
        EVENTS_STREAM: events_days * 86400,
        f"OBJ_{INSTANCES_BUCKET}": objects,
        f"OBJ_{RESULTS_BUCKET}": objects,
    }


# External report providers push reports here (core NATS request/reply, not JetStream).
WEBPS_SUBJECT_PREFIX = "pacsor.webps"
# The hl7 component's consumer of ExternalReportReceived.
HL7_EXTERNAL_DURABLE = "hl7-external-reports"
# The hl7 component's consumer of Hl7ConfigLoaded (HL7_ENABLE, WEBPS_ENABLE without restart).
HL7_SWITCH_DURABLE = "hl7-switches"


def webps_subject(provider: str) -> str:
    return f"{WEBPS_SUBJECT_PREFIX}.{provider}.report"


HL7_WEBPS_QUEUE = "hl7-webps"  # queue group: one replica answers each pushed report
WEBPS_SUBJECTS = f"{WEBPS_SUBJECT_PREFIX}.*.report"

# Where versions before the site subjects recorded HL7 configuration loads: still read.
LEGACY_HL7_CONFIG_SUBJECT = f"pacsor.study.{UNKNOWN_STUDY}.hl7_config_loaded"


def consumer_next_subject(stream: str, consumer: str) -> str:
    """JetStream's API subject that asks a pull consumer for its next messages."""
    return f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"


# --- Who may publish what (pacsor.jetstream.nats_auth) ----------------------------------------

# The whole pipeline in one process (`pacsor up`) and the operator's commands: its events,
# schedules and holds, the JetStream API, acknowledgements and flow control, key-value and
# object-store entries, replies.
PIPELINE_PUBLISHES = ("pacsor.>", "$JS.API.>", "$JS.ACK.>", "$JS.FC.>", "$KV.>", "$O.>", "_INBOX.>")
# What would erase history: nobody, the pipeline included, may ask it of the event stream.
EVENTS_DESTRUCTION = (
    stream_api_subject("DELETE", EVENTS_STREAM),
    stream_api_subject("PURGE", EVENTS_STREAM),
    stream_api_subject("MSG.DELETE", EVENTS_STREAM),
)
# The API calls that only read (the `nats` CLI's stream and consumer ls, info, get, view).
READ_API = (
    "$JS.API.INFO",
    "$JS.API.STREAM.NAMES",
    "$JS.API.STREAM.LIST",
    "$JS.API.STREAM.INFO.*",
    "$JS.API.STREAM.MSG.GET.*",
    "$JS.API.DIRECT.GET.>",
    "$JS.API.CONSUMER.NAMES.*",
    "$JS.API.CONSUMER.LIST.*",
    "$JS.API.CONSUMER.INFO.*.*",
)
READ_ONLY_API = (
    *READ_API,
    # An ephemeral consumer without a name: this form refuses a durable name, so a reader can
    # neither create a durable consumer nor change one of the pipeline's.
    "$JS.API.CONSUMER.CREATE.*",
    # The flow-control replies of a push consumer.
    "$JS.FC.>",
)
# What every component of a split deployment may do besides writing what it declares: read,
# run its consumers (create, fetch, acknowledge), and create a stream that is not there yet
# (whichever component starts first); changing a stream is the pipeline's and the admin's.
COMPONENT_API = (
    *READ_API,
    "$JS.API.CONSUMER.>",
    "$JS.ACK.>",
    "$JS.FC.>",
)


def stream_create_subjects(streams: Iterable[str]) -> tuple[str, ...]:
    return tuple(stream_api_subject("CREATE", name) for name in streams)


def stream_update_subjects(streams: Iterable[str]) -> tuple[str, ...]:
    return tuple(stream_api_subject("UPDATE", name) for name in streams)


def bucket_writes(bucket: str) -> tuple[str, ...]:
    """Putting objects into an object-store bucket: chunks and metadata, and purging the chunks
    of an object removed or never committed."""
    return (f"$O.{bucket}.>", stream_api_subject("PURGE", object_store_stream(bucket)))


def key_value_writes(bucket: str) -> str:
    return f"$KV.{bucket}.>"


REPLIES = "_INBOX.>"
