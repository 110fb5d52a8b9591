"""Every event pacsor records, as immutable msgspec Structs encoded as JSON.

An event is a fact: it is never changed once published. Each carries its `type` (the class
name, as the JSON tag), a `schema_version`, the study (`study_uid`, written
`study_instance_uid`) and when it happened.
Events after StudyComplete also carry the `core` (the AI API environment) and the `attempt`,
so that a relaunch (attempt 2, 3, ...) and several cores never mix.

The classes are the catalogue: each concrete event type (one with a `topic`) registers itself,
and the decoder's union is derived from them (`catalogue()`). Adding a field with a default
keeps old events readable; removing or retyping one means a new `schema_version` and an
upcaster from the old one on the class itself (`upcasters`, as StudyComplete has).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeAlias, TypedDict, TypeVar, Union

import msgspec

from pacsor.errors import PacsorError

SCHEMA_VERSION = 1


# A schema's JSON, as a dict, to the next schema's.
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
_CATALOGUE: dict[str, type[Event]] = {}
_SCHEMAS: dict[type[Event], int] = {}


def utc_now() -> datetime:
    return datetime.now(UTC)


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag=True):
    """Base of every event; never published itself."""

    study_uid: str = msgspec.field(name="study_instance_uid")
    occurred_at: datetime = msgspec.field(default_factory=utc_now)
    schema_version: int = SCHEMA_VERSION

    # The suffix of the subject, after `pacsor.study.<study>.`; see pacsor.jetstream.subjects.
    # A class with a topic is a concrete event type, in the catalogue; one without is a base.
    topic: ClassVar[str] = ""
    # Schema version n -> n + 1 of this class's JSON, as a dict: how an event written by an
    # older pacsor is read today. A version with no upcaster only gained fields with defaults.
    upcasters: ClassVar[Mapping[int, Upcaster]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.topic:
            if cls.__name__ in _CATALOGUE:
                raise TypeError(f"two event types named {cls.__name__}")
            _CATALOGUE[cls.__name__] = cls

    @classmethod
    def current_schema(cls) -> int:
        """The schema version this class writes."""
        # Kept per class: msgspec.structs.fields evaluates the annotations each time, and
        # decode() asks for every event read (it was most of a rebuild's time).
        version = _SCHEMAS.get(cls)
        if version is None:
            field = next(f for f in msgspec.structs.fields(cls) if f.name == "schema_version")
            version = _SCHEMAS[cls] = int(field.default)
        return version

    def idempotency_key(self) -> str:
        """The Nats-Msg-Id: a retried publish of the same fact is stored once."""
        raise NotImplementedError


class AttemptKey(TypedDict):
    """The study, AI core and attempt an event is about: `ev.Uploaded(**key, ...)` records an
    outcome of the same attempt as the event that led to it."""

    study_uid: str
    core: str
    attempt: int


class CoreEvent(Event, frozen=True, kw_only=True):
    """Base of the events of one AI core's handling of one attempt of a study.

    The outcomes of one step (Uploaded and UploadFailed, ...) share the step's idempotency key,
    so a step records one outcome, whichever replica gets there first.
    """

    core: str
    attempt: int

    step: ClassVar[str] = ""

    def idempotency_key(self) -> str:
        return f"{self.step}:{self.study_uid}:{self.core}:{self.attempt}"

    @property
    def key(self) -> AttemptKey:
        return AttemptKey(study_uid=self.study_uid, core=self.core, attempt=self.attempt)


class DestinationEvent(CoreEvent, frozen=True, kw_only=True):
    """Base of the outcomes of sending one attempt's results to one destination."""

    destination: str  # AET@host:port
    # Set when this is a replay to one destination (DispatchReplayRequested): a replay is a
    # step of its own, recorded beside the first dispatch.
    replay_id: str = ""

    step: ClassVar[str] = "dispatch"

    def idempotency_key(self) -> str:
        key = f"{super().idempotency_key()}:{self.destination}"
        return f"{key}:replay:{self.replay_id}" if self.replay_id else key


class InstanceRef(msgspec.Struct, frozen=True, kw_only=True):
    """One stored input instance of an attempt (see pacsor.domain.completion.attempt_instances)."""

    sop_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    object_name: str
    size: int
    digest: str


class ResultObject(msgspec.Struct, frozen=True, kw_only=True):
    """One result DICOM object fetched from the AI API and stored in the results bucket."""

    inference_command: str
    sop_instance_uid: str
    sop_class_uid: str
    object_name: str
    size: int


class FindingsObject(msgspec.Struct, frozen=True, kw_only=True):
    """The JSON findings of one inference command, as the API sent them, in the results
    bucket (`<study>/<core>/<attempt>/findings/<command>.json`)."""

    inference_command: str
    object_name: str
    size: int
    digest: str


class SkippedInstance(msgspec.Struct, frozen=True, kw_only=True):
    """An instance of the study that was not uploaded to a core, and why."""

    sop_instance_uid: str
    reason: str  # "filtered", "already uploaded" or "unreadable: ..."
    rule: str = ""  # the DICOM filter rule that skipped it, as written in the settings


class UploadedInstance(msgspec.Struct, frozen=True, kw_only=True):
    sop_instance_uid: str
    digest: str


# --- Reception ----------------------------------------------------------------------------


class InstanceReceived(Event, frozen=True, kw_only=True):
    """A C-STORE'd instance is durable in the instances bucket.

    Schema version 2 adds what operators search by: the accession number, the study date and
    description. Version 1 events lack them and read as "". Patient names, IDs and birth dates
    never enter an event.
    """

    topic: ClassVar[str] = "received"
    schema_version: int = 2

    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    modality: str = ""
    calling_ae_title: str = ""
    object_name: str
    size: int
    digest: str
    accession_number: str = ""
    study_date: str = ""
    study_description: str = ""
    # The stream sequence of the other version this copy comes after, when the same bytes
    # were received before it (A, A', A): the sender's last word is a new fact. 0 otherwise.
    follows: int = 0

    def idempotency_key(self) -> str:
        key = f"received:{self.sop_instance_uid}:{self.digest}"
        return f"{key}:after:{self.follows}" if self.follows else key

    def ref(self) -> InstanceRef:
        return msgspec.convert(self, InstanceRef, from_attributes=True)


class InstanceRejected(Event, frozen=True, kw_only=True):
    """A C-STORE was refused; `study_instance_uid` is "" when it could not be read."""

    topic: ClassVar[str] = "rejected"

    reason: str
    dimse_status: int
    calling_ae_title: str = ""
    sop_instance_uid: str = ""
    rejection_id: str

    def idempotency_key(self) -> str:
        return f"rejected:{self.rejection_id}"


# --- Study completion ---------------------------------------------------------------------


class StudyComplete(Event, frozen=True, kw_only=True):
    """No instance arrived for STUDY_QUIET_SECONDS: the study goes to the AI, as `attempt`.

    It stays small whatever the study's size: the attempt's instances are the study's
    InstanceReceived events up to stream sequence `through_sequence`, the latest copy of each
    SOP Instance UID (pacsor.domain.completion.attempt_instances), read back by subject.
    Schema 2; schema 1 listed every instance in the event and stopped near 2,350 instances.
    A schema 1 event reads with `instance_count` from its list and `through_sequence` 0,
    meaning "up to this event itself": `decode_at` puts in its own stream sequence (the list
    was every instance received before it).

    A relaunch asked by a person is marked: `relaunch` is true, `requested_by` says who,
    `relaunch_id` names the RelaunchRequested it answers, and `cores` limits the attempt to
    those AI cores (empty: every core).
    """

    topic: ClassVar[str] = "complete"
    upcasters: ClassVar[Mapping[int, Upcaster]] = {
        1: lambda raw: {**raw, "instance_count": len(raw.pop("instances", ()))},
    }

    schema_version: int = 2
    attempt: int
    # Defaults only for schema 1 events, which lack both; schema 2 always writes them.
    instance_count: int = 0
    through_sequence: int = 0
    reason: str = "quiet period elapsed"
    relaunch: bool = False
    requested_by: str = ""
    relaunch_id: str = ""
    cores: tuple[str, ...] = ()

    def for_core(self, core: str) -> bool:
        return not self.cores or core in self.cores

    def key_for(self, core: str) -> AttemptKey:
        """The key of this attempt's events on `core`."""
        return AttemptKey(study_uid=self.study_uid, core=core, attempt=self.attempt)

    def idempotency_key(self) -> str:
        return f"complete:{self.study_uid}:{self.attempt}"


# --- AI API -------------------------------------------------------------------------------


class InstancesSkipped(CoreEvent, frozen=True, kw_only=True):
    """Instances of `attempt` not uploaded to `core`: filtered out, or uploaded before.

    A large study has several, `part` 1, 2, ..., each listing at most a few hundred.
    """

    topic: ClassVar[str] = "skipped"
    step: ClassVar[str] = "skipped"

    part: int
    skipped: tuple[SkippedInstance, ...]

    def idempotency_key(self) -> str:
        return f"{super().idempotency_key()}:{self.part}"


class InstancesUploaded(CoreEvent, frozen=True, kw_only=True):
    """One batch of `attempt` accepted by `core`: what NO_DUPLICATE_UPLOAD reads back, and
    where an upload interrupted by a crash or a retry resumes."""

    topic: ClassVar[str] = "batch_uploaded"
    step: ClassVar[str] = "batch"

    batch: int
    instances: tuple[UploadedInstance, ...]

    def idempotency_key(self) -> str:
        return f"{super().idempotency_key()}:{self.batch}"


class Uploaded(CoreEvent, frozen=True, kw_only=True):
    """The AI core accepted the study's instances; its answer is in `api_message`."""

    topic: ClassVar[str] = "uploaded"
    step: ClassVar[str] = "upload"

    instance_count: int  # uploaded in this attempt
    api_message: str = ""
    skipped_count: int = 0  # filtered out or uploaded before (see InstancesSkipped)
    signed_url: bool = False


class NothingToUpload(CoreEvent, frozen=True, kw_only=True):
    """Every instance of `attempt` was filtered out for `core`: the study is not uploaded
    there. A final state: the reason says which rules left nothing."""

    topic: ClassVar[str] = "nothing_to_upload"
    step: ClassVar[str] = "upload"

    reason: str
    skipped_count: int


class ApiFailure(CoreEvent, frozen=True, kw_only=True):
    """Base of the AI core's failures: why, in the API's words, and its HTTP status if any."""

    reason: str
    http_status: int | None = None


class UploadFailed(ApiFailure, frozen=True, kw_only=True):
    """The AI core refused the upload, or retries are exhausted (`tries`)."""

    topic: ClassVar[str] = "upload_failed"
    step: ClassVar[str] = "upload"

    tries: int = 1


# Result objects per ResultObjectsListed page: a page of 250 is about 50 KB of JSON, far
# under JetStream's 1 MB message limit whatever the UIDs' length.
RESULTS_PAGE_SIZE = 250


def results_digest(results: Iterable[ResultObject]) -> str:
    """SHA-256 (hex) of a result list, in order: names the list that pages and events share."""
    h = hashlib.sha256()
    for r in results:
        h.update(_encoder.encode(r))
        h.update(b"\n")
    return h.hexdigest()


class ResultObjectsListed(CoreEvent, frozen=True, kw_only=True):
    """One page (`part` 1, 2, ...) of the result objects of (`core`, `attempt`), recorded
    before the ResultReady that counts them; pages of another list (`results_digest`) are
    never mixed in."""

    topic: ClassVar[str] = "results_listed"
    step: ClassVar[str] = "results_listed"

    results_digest: str
    part: int
    results: tuple[ResultObject, ...]

    def idempotency_key(self) -> str:
        return f"{super().idempotency_key()}:{self.results_digest}:{self.part}"


class ResultReady(CoreEvent, frozen=True, kw_only=True):
    """The AI's result objects are stored in the results bucket, ready to dispatch. A
    `result_count` of 0 means the API had none for this study (status `empty`): recorded,
    and nothing is dispatched.

    Schema 2 stays small whatever the number of results: it carries their count, the digest
    of their list and the number of ResultObjectsListed pages recorded before it, which hold
    the list (read back by pacsor.jetstream.eventlog.EventLog.result_objects). Schema 1
    listed every object in `results` and broke the 1 MB limit near 4,000 objects; it reads
    with its count and digest computed from that list and `result_pages` 0.
    """

    topic: ClassVar[str] = "result_ready"
    step: ClassVar[str] = "result"
    upcasters: ClassVar[Mapping[int, Upcaster]] = {1: lambda raw: _counted_results(raw)}

    schema_version: int = 2
    result_count: int = 0
    results_digest: str = ""
    result_pages: int = 0
    # Schema 1 only: the list itself. Schema 2 writes it empty, in pages instead.
    results: tuple[ResultObject, ...] = ()
    api_version: str = ""
    findings: tuple[FindingsObject, ...] = ()


def list_results(
    key: AttemptKey, results: Sequence[ResultObject], page_size: int = RESULTS_PAGE_SIZE
) -> tuple[tuple[ResultObjectsListed, ...], str]:
    """The pages recording `results` (none for an empty list), and the list's digest."""
    digest = results_digest(results)
    pages = tuple(
        ResultObjectsListed(
            **key,
            results_digest=digest,
            part=n + 1,
            results=tuple(results[start : start + page_size]),
        )
        for n, start in enumerate(range(0, len(results), page_size))
    )
    return pages, digest


def _counted_results(raw: dict[str, Any]) -> dict[str, Any]:
    """Schema 1 -> 2 of ResultReady: the list it carries, counted and digested."""
    listed = msgspec.convert(raw.get("results", []), tuple[ResultObject, ...])
    return {**raw, "result_count": len(listed), "results_digest": results_digest(listed)}


class ResultListIncomplete(PacsorError, ValueError):
    """The pages read back do not make the list a ResultReady counts (missing, or altered)."""


def assemble_results(
    ready: ResultReady, pages: Iterable[ResultObjectsListed]
) -> tuple[ResultObject, ...]:
    """The result list of `ready`, from its own inline list (schema 1) or from its pages."""
    if not ready.result_pages:
        return ready.results
    by_part: dict[int, ResultObjectsListed] = {}
    for page in pages:
        if (page.attempt, page.results_digest) == (ready.attempt, ready.results_digest):
            by_part.setdefault(page.part, page)
    missing = [n for n in range(1, ready.result_pages + 1) if n not in by_part]
    if missing:
        raise ResultListIncomplete(
            f"{len(missing)} of {ready.result_pages} result pages not found (first: {missing[0]})"
        )
    listed = tuple(r for n in range(1, ready.result_pages + 1) for r in by_part[n].results)
    if len(listed) != ready.result_count or results_digest(listed) != ready.results_digest:
        raise ResultListIncomplete("the result pages do not match the ResultReady's digest")
    return listed


class ResultFailed(ApiFailure, frozen=True, kw_only=True):
    """The AI answered an error for the study, or no result came in time."""

    topic: ClassVar[str] = "result_failed"
    step: ClassVar[str] = "result"


# --- Dispatch -----------------------------------------------------------------------------


class Dispatched(DestinationEvent, frozen=True, kw_only=True):
    """Every result object of `attempt` was accepted by `destination` (AET@host:port).

    Schema 2 carries their count and the digest of the ResultReady's list (the list is in
    its pages); schema 1 listed their SOP Instance UIDs and reads with the count of them.
    """

    topic: ClassVar[str] = "dispatched"
    upcasters: ClassVar[Mapping[int, Upcaster]] = {
        1: lambda raw: {**raw, "object_count": len(raw.pop("sop_instance_uids", ()))},
    }

    schema_version: int = 2
    object_count: int = 0
    results_digest: str = ""


class ObjectStatus(msgspec.Struct, frozen=True, kw_only=True):
    """What a destination answered to one result object's C-STORE (-1: no answer)."""

    sop_instance_uid: str
    status: int


# Objects a DispatchFailed names with their status, at most, per kind: every answer is in
# the PACSOR_DISPATCH bucket; the event says how many and shows the first ones.
STATUS_SAMPLE = 50


class DispatchFailed(DestinationEvent, frozen=True, kw_only=True):
    """`destination` refused objects for good, or its retries are exhausted.

    `delivered_count`, `refused_count` (a permanent failure status: 0xA9xx, 0xCxxx, ...) and
    `undelivered_count` (still failing transiently: 0xA7xx, no answer, not reached, after the
    last try) count the objects; `refused` and `undelivered` show the first STATUS_SAMPLE of
    each with the status the destination answered, every answer being in the PACSOR_DISPATCH
    bucket. The results stay in the results bucket. Schema 1 listed every object (and the
    delivered ones twice); it reads with the counts of its lists.
    """

    topic: ClassVar[str] = "dispatch_failed"
    upcasters: ClassVar[Mapping[int, Upcaster]] = {1: lambda raw: _counted_statuses(raw)}

    schema_version: int = 2
    reason: str
    tries: int = 1
    delivered_count: int = 0
    refused_count: int = 0
    undelivered_count: int = 0
    refused: tuple[ObjectStatus, ...] = ()
    undelivered: tuple[ObjectStatus, ...] = ()


def _counted_statuses(raw: dict[str, Any]) -> dict[str, Any]:
    """Schema 1 -> 2 of DispatchFailed: counts from its lists (delivered ones were listed
    twice); the refused and undelivered lists stay as the sample."""
    delivered = max(len(raw.pop("delivered", ())), len(raw.pop("delivered_sop_instance_uids", ())))
    return {
        **raw,
        "delivered_count": delivered,
        "refused_count": len(raw.get("refused", ())),
        "undelivered_count": len(raw.get("undelivered", ())),
    }


# --- RIS ---------------------------------------------------------------------------------


class Hl7Sent(CoreEvent, frozen=True, kw_only=True):
    """The RIS acknowledged the ORU^R01 of (`core`, `attempt`) with `ack_code` (AA or CA).

    `missing_findings` names the inference commands whose findings were not in the message
    (still running when the wait ended, or never produced).
    """

    topic: ClassVar[str] = "hl7_sent"
    step: ClassVar[str] = "hl7"  # shared with Hl7Failed: one attempt has one RIS outcome

    ris: str
    control_id: str
    ack_code: str
    ack_text: str = ""
    tries: int = 1
    missing_findings: tuple[str, ...] = ()
    with_report: bool = False
    report_id: str = ""  # set when the message carries an external report

    def idempotency_key(self) -> str:
        key = super().idempotency_key()
        return f"{key}:report:{self.report_id}" if self.report_id else key


class Hl7Failed(CoreEvent, frozen=True, kw_only=True):
    """The ORU^R01 was not accepted after the last try: `reason` says the RIS's last answer."""

    topic: ClassVar[str] = "hl7_failed"
    step: ClassVar[str] = "hl7"

    ris: str
    control_id: str
    reason: str
    tries: int = 1
    ack_code: str = ""  # the last MSA-1 when the RIS answered (AE, AR...), else ""
    report_id: str = ""

    def idempotency_key(self) -> str:
        key = super().idempotency_key()
        return f"{key}:report:{self.report_id}" if self.report_id else key


class WrittenReport(msgspec.Struct, frozen=True, kw_only=True):
    """A radiology report's text: what the RIS shows under the study."""

    title: str
    indication: str = ""
    technique: str = ""
    findings: str = ""
    conclusion: str = ""
    language: str = "EN"


class ExternalReportReceived(Event, frozen=True, kw_only=True):
    """A written report pushed by an external report provider (WEBPS_PROVIDERS).

    It goes to the RIS like the AI's results: Hl7Sent / Hl7Failed with core
    `webps-<provider>`, attempt 0 and this `report_id`.
    """

    topic: ClassVar[str] = "external_report"

    provider: str
    report_id: str
    report: WrittenReport

    def idempotency_key(self) -> str:
        return f"webps:{self.study_uid}:{self.provider}:{self.report_id}"


class SiteEvent(Event, frozen=True, kw_only=True):
    """A fact about the site, not about a study: it has a subject of its own
    (pacsor.site.<topic>), and `study_uid` is always ""."""

    study_uid: str = msgspec.field(default="", name="study_instance_uid")


class AssociationRejected(SiteEvent, frozen=True, kw_only=True):
    """The SCP refused an association from a caller it does not know (ALLOWED_CALLING_AETS).

    One is recorded per caller and address per
    `window` (a minute): a caller retrying in a loop does not fill the log.
    """

    topic: ClassVar[str] = "association_rejected"

    calling_ae_title: str
    called_ae_title: str = ""
    address: str  # the caller's IP address
    reason: str
    window: int  # minutes since the epoch

    def idempotency_key(self) -> str:
        return f"assoc_rejected:{self.calling_ae_title}:{self.address}:{self.window}"


class Hl7ConfigLoaded(SiteEvent, frozen=True, kw_only=True):
    """A named HL7 configuration or template was loaded (HL7_CUSTOM_DIR): what is in force.

    `settings` are HL7 variables that win over
    the environment; `template` is the template's JSON text ("" for none). The latest one is
    what the hl7 component applies.
    """

    topic: ClassVar[str] = "hl7_config_loaded"

    load_id: str
    name: str
    kind: str  # "config" or "template"
    loaded_by: str
    settings: dict[str, str] = {}
    template: str = ""

    def idempotency_key(self) -> str:
        return f"hl7config:{self.load_id}"


class Hl7Switched(SiteEvent, frozen=True, kw_only=True):
    """The hl7 component started or stopped sending to the RIS (HL7_ENABLE) or taking
    external reports (WEBPS_ENABLE), because a loaded configuration says so; no restart.

    `load_id` is the Hl7ConfigLoaded's.
    """

    topic: ClassVar[str] = "hl7_switched"

    load_id: str
    config_name: str
    sending: bool
    external_reports: bool

    def idempotency_key(self) -> str:
        return f"hl7switch:{self.load_id}"


# --- Operators ----------------------------------------------------------------------------


class RelaunchRequested(Event, frozen=True, kw_only=True):
    """A person asked to send the study to the AI again (all cores, or `cores`).

    The completion handler answers with the StudyComplete of the next attempt, built from the
    study's InstanceReceived events.
    """

    topic: ClassVar[str] = "relaunch_requested"

    relaunch_id: str
    requested_by: str
    cores: tuple[str, ...] = ()

    def idempotency_key(self) -> str:
        return f"relaunch:{self.relaunch_id}"


class DispatchReplayRequested(CoreEvent, frozen=True, kw_only=True):
    """Send the results of (`core`, `attempt`) again to one `destination` (AET@host:port)."""

    topic: ClassVar[str] = "replay_requested"

    destination: str
    replay_id: str
    requested_by: str
    since: datetime

    def idempotency_key(self) -> str:
        return f"replay:{self.replay_id}:{self.study_uid}:{self.core}:{self.attempt}"


class ObjectsExpired(Event, frozen=True, kw_only=True):
    """Stored DICOM objects of the study were removed, and why (retention, output cleaning).

    `kind` is "instances" (the received images: a relaunch is no longer possible) or
    "results" (the result objects of `core` / `attempt`, when set).
    """

    topic: ClassVar[str] = "expired"

    kind: str
    object_count: int
    reason: str
    core: str = ""
    attempt: int = 0

    def idempotency_key(self) -> str:
        return f"expired:{self.study_uid}:{self.kind}:{self.core}:{self.attempt}"


# The failure of a step retried by the runner; it records how many tries were made.
StepFailure = UploadFailed | DispatchFailed | Hl7Failed

# --- Any step -----------------------------------------------------------------------------


class StepFailed(Event, frozen=True, kw_only=True):
    """A handler kept failing on one message and gave up after RETRY_MAX_ATTEMPTS tries.

    Recorded by the handler runner for steps that have no failure event of their own (the
    quiet timer, completion); the upload, result and dispatch steps record theirs instead.
    `step` is the durable consumer, `message_sequence` the message's sequence in `stream`.
    """

    topic: ClassVar[str] = "step_failed"

    step: str
    stream: str
    message_sequence: int
    reason: str
    tries: int

    def idempotency_key(self) -> str:
        return f"step_failed:{self.step}:{self.stream}:{self.message_sequence}"


def catalogue() -> tuple[type[Event], ...]:
    """Every event type, in the order the classes are declared (by stage, above)."""
    return tuple(_CATALOGUE.values())


def by_name(name: str) -> type[Event]:
    """The event class whose JSON `type` is `name`; KeyError for one pacsor never wrote."""
    return _CATALOGUE[name]


# Static typing sees the base class; decoding uses the union of every concrete class, derived
# from the classes themselves so that a new event type needs no list updated by hand.
AnyEvent: TypeAlias = Event


class RecordedEvent(msgspec.Struct, frozen=True):
    """An event as read back from the log, with its position there."""

    sequence: int
    subject: str
    event: AnyEvent


_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[Event] = msgspec.json.Decoder(
    Union[catalogue()]  # noqa: UP007 (a union built at run time)
)


class _Tagged(msgspec.Struct):
    type: str
    schema_version: int = 1


def encode(event: Event) -> bytes:
    return _encoder.encode(event)


def decode(data: bytes) -> Event:
    """Decode any event; raises msgspec.ValidationError / DecodeError on a malformed one.

    An event written under an older schema is passed through its class's upcasters, one
    version at a time, and comes out in today's shape (its `schema_version` unchanged)."""
    try:
        event = _decoder.decode(data)
    except msgspec.ValidationError:
        event = None  # perhaps an older schema that no longer fits the class: upcast it
    if event is not None and event.schema_version >= type(event).current_schema():
        return event
    head = msgspec.json.decode(data, type=_Tagged)
    kind = _CATALOGUE.get(head.type)
    if kind is None or head.schema_version >= kind.current_schema():
        if event is not None:
            return event
        raise msgspec.ValidationError(f"unknown event type {head.type!r}")
    raw: dict[str, Any] = msgspec.json.decode(data)
    for version in range(head.schema_version, kind.current_schema()):
        upcast = kind.upcasters.get(version)
        if upcast is not None:
            raw = upcast(raw)
    # `schema_version` keeps saying which schema the event was written in.
    return msgspec.convert(raw, kind)


def decode_at(data: bytes, sequence: int) -> AnyEvent:
    """Decode an event read from stream sequence `sequence`; a schema 1 StudyComplete gets
    that sequence as its `through_sequence`."""
    event = decode(data)
    if isinstance(event, StudyComplete) and not event.through_sequence:
        event = msgspec.structs.replace(event, through_sequence=sequence)
    return event


E = TypeVar("E", bound=Event)


def decode_as(data: bytes, kind: type[E]) -> E:
    """Decode an event that must be of type `kind`."""
    event = decode(data)
    if not isinstance(event, kind):
        raise msgspec.ValidationError(f"expected {kind.__name__}, got {type(event).__name__}")
    return event


def decoder(kind: type[E]) -> Callable[[bytes, str], E]:
    """A message decoder for a handler that consumes `kind` events."""
    return lambda data, _subject: decode_as(data, kind)
