"""Every event pacsor records, as immutable msgspec Structs encoded as JSON.

An event is a fact: it is never changed once published. Each carries its `type` (the class
name, as the JSON tag), a `schema_version`, the `study_instance_uid` and when it happened.
Events after StudyComplete also carry the `core` (the AI API environment) and the `attempt`,
so that a relaunch (attempt 2, 3, ...) and several cores never mix.

Adding a field with a default keeps old events readable; removing or retyping one means a new
`schema_version` and a decoder for the old one here.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import ClassVar, TypeVar

import msgspec

SCHEMA_VERSION = 1


def utc_now() -> datetime:
    return datetime.now(UTC)


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag=True):
    """Base of every event; never published itself."""

    study_instance_uid: str
    occurred_at: datetime = msgspec.field(default_factory=utc_now)
    schema_version: int = SCHEMA_VERSION

    # The suffix of the subject, after `pacsor.study.<study>.`; see pacsor.jetstream.subjects.
    topic: ClassVar[str] = ""

    def idempotency_key(self) -> str:
        """The Nats-Msg-Id: a retried publish of the same fact is stored once."""
        raise NotImplementedError


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


# --- Reception ----------------------------------------------------------------------------


class InstanceReceived(Event, frozen=True, kw_only=True):
    """A C-STORE'd instance is durable in the instances bucket."""

    topic: ClassVar[str] = "received"

    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    modality: str = ""
    calling_ae_title: str = ""
    object_name: str
    size: int
    digest: str

    def idempotency_key(self) -> str:
        return f"received:{self.sop_instance_uid}:{self.digest}"

    def ref(self) -> InstanceRef:
        return InstanceRef(
            sop_instance_uid=self.sop_instance_uid,
            series_instance_uid=self.series_instance_uid,
            sop_class_uid=self.sop_class_uid,
            object_name=self.object_name,
            size=self.size,
            digest=self.digest,
        )


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
    """

    topic: ClassVar[str] = "complete"

    schema_version: int = 2
    attempt: int
    instance_count: int
    through_sequence: int
    reason: str = "quiet period elapsed"

    def idempotency_key(self) -> str:
        return f"complete:{self.study_instance_uid}:{self.attempt}"


# --- AI API -------------------------------------------------------------------------------


class Uploaded(Event, frozen=True, kw_only=True):
    topic: ClassVar[str] = "uploaded"

    core: str
    attempt: int
    instance_count: int
    api_message: str = ""

    def idempotency_key(self) -> str:
        return f"upload:{self.study_instance_uid}:{self.core}:{self.attempt}"


class UploadFailed(Event, frozen=True, kw_only=True):
    topic: ClassVar[str] = "upload_failed"

    core: str
    attempt: int
    reason: str
    http_status: int | None = None
    tries: int = 1

    def idempotency_key(self) -> str:
        # Shares Uploaded's key: one attempt has one upload outcome.
        return f"upload:{self.study_instance_uid}:{self.core}:{self.attempt}"


class ResultReady(Event, frozen=True, kw_only=True):
    topic: ClassVar[str] = "result_ready"

    core: str
    attempt: int
    results: tuple[ResultObject, ...]
    api_version: str = ""

    def idempotency_key(self) -> str:
        return f"result:{self.study_instance_uid}:{self.core}:{self.attempt}"


class ResultFailed(Event, frozen=True, kw_only=True):
    topic: ClassVar[str] = "result_failed"

    core: str
    attempt: int
    reason: str
    http_status: int | None = None

    def idempotency_key(self) -> str:
        return f"result:{self.study_instance_uid}:{self.core}:{self.attempt}"


# --- Dispatch -----------------------------------------------------------------------------


class Dispatched(Event, frozen=True, kw_only=True):
    """Every result object of `attempt` was accepted by `destination` (AET@host:port)."""

    topic: ClassVar[str] = "dispatched"

    core: str
    attempt: int
    destination: str
    sop_instance_uids: tuple[str, ...]

    def idempotency_key(self) -> str:
        return dispatch_key(self.study_instance_uid, self.core, self.attempt, self.destination)


class ObjectStatus(msgspec.Struct, frozen=True, kw_only=True):
    """What a destination answered to one result object's C-STORE (-1: no answer)."""

    sop_instance_uid: str
    status: int


class DispatchFailed(Event, frozen=True, kw_only=True):
    """`destination` refused objects for good, or its retries are exhausted.

    `delivered` and `refused` (a permanent failure status: 0xA9xx, 0xCxxx, ...) list objects
    with the status the destination answered; `undelivered` those still failing transiently
    (0xA7xx, no answer, not reached) after the last try, with their last status. The results
    stay in the results bucket.
    """

    topic: ClassVar[str] = "dispatch_failed"

    core: str
    attempt: int
    destination: str
    reason: str
    tries: int
    delivered_sop_instance_uids: tuple[str, ...] = ()
    delivered: tuple[ObjectStatus, ...] = ()
    refused: tuple[ObjectStatus, ...] = ()
    undelivered: tuple[ObjectStatus, ...] = ()

    def idempotency_key(self) -> str:
        return dispatch_key(self.study_instance_uid, self.core, self.attempt, self.destination)


def dispatch_key(study: str, core: str, attempt: int, destination: str) -> str:
    return f"dispatch:{study}:{core}:{attempt}:{destination}"


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


AnyEvent = (
    InstanceReceived
    | InstanceRejected
    | StudyComplete
    | Uploaded
    | UploadFailed
    | ResultReady
    | ResultFailed
    | Dispatched
    | DispatchFailed
    | StepFailed
)
EVENT_TYPES: tuple[type[Event], ...] = (
    InstanceReceived,
    InstanceRejected,
    StudyComplete,
    Uploaded,
    UploadFailed,
    ResultReady,
    ResultFailed,
    Dispatched,
    DispatchFailed,
    StepFailed,
)

_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[AnyEvent] = msgspec.json.Decoder(AnyEvent)


def encode(event: Event) -> bytes:
    return _encoder.encode(event)


def decode(data: bytes) -> AnyEvent:
    """Decode any event; raises msgspec.ValidationError / DecodeError on a malformed one."""
    return _decoder.decode(data)


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
