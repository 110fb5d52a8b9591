"""The one place that knows JetStream names: streams, buckets, subjects, consumers.

    pacsor.study.<study>.received|rejected|complete              study-level events
    pacsor.study.<study>.<core>.uploaded|result_ready|...        per AI core events
    pacsor.timer.<study>.quiet    the pending quiet-period schedule (replaced on each instance)
    pacsor.timer.<study>.elapsed  where the server publishes it when it fires
    pacsor.hold.<study>.<holder>  an SCP's open associations sending the study (last value)

DICOM UIDs hold only digits and dots; dots separate NATS tokens, so a UID is written with
`_` in place of `.` (reversible).
"""

from __future__ import annotations

import re

from pacsor.domain.events import Event

EVENTS_STREAM = "PACSOR"
TIMERS_STREAM = "PACSOR_TIMERS"
HOLDS_STREAM = "PACSOR_HOLDS"
INSTANCES_BUCKET = "PACSOR_INSTANCES"
RESULTS_BUCKET = "PACSOR_RESULTS"
DISPATCH_PROGRESS_BUCKET = "PACSOR_DISPATCH"

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
    core = getattr(event, "core", None)
    middle = (
        f"{uid_token(event.study_instance_uid)}.{core}"
        if core
        else uid_token(event.study_instance_uid)
    )
    return f"pacsor.study.{middle}.{event.topic}"


def events_filter(topic: str, per_core: bool) -> str:
    """Filter for one event type across all studies (and cores)."""
    return f"pacsor.study.*.*.{topic}" if per_core else f"pacsor.study.*.{topic}"


def quiet_schedule_subject(study_uid: str) -> str:
    return f"pacsor.timer.{uid_token(study_uid)}.quiet"


def quiet_elapsed_subject(study_uid: str) -> str:
    return f"pacsor.timer.{uid_token(study_uid)}.elapsed"


QUIET_ELAPSED_FILTER = "pacsor.timer.*.elapsed"


def study_from_subject(subject: str) -> str:
    """The study UID in any pacsor.study.* or pacsor.timer.* subject."""
    return uid_from_token(subject.split(".")[2])


def received_subject(study_uid: str) -> str:
    """Where a study's InstanceReceived events are: read back to list an attempt's instances."""
    return f"pacsor.study.{uid_token(study_uid)}.received"


def hold_subject(study_uid: str, holder: str) -> str:
    return f"pacsor.hold.{uid_token(study_uid)}.{holder}"


def holds_filter(study_uid: str) -> str:
    return f"pacsor.hold.{uid_token(study_uid)}.*"


def instance_object_name(study_uid: str, sop_uid: str, digest_hex: str) -> str:
    """One version of an instance: a resent, changed instance is another object, never a
    replacement, so an event always names the bytes it describes."""
    return f"{study_uid}/{sop_uid}/{digest_hex}"


def destination_token(destination: str) -> str:
    """A destination `AET@host:port` as one name token: `AET_host_port`."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", destination)


def dispatch_consumer(core: str, destination: str) -> str:
    return f"dispatch-{core}-{destination_token(destination)}"


def dispatch_progress_key(study_uid: str, core: str, attempt: int, destination: str) -> str:
    return f"{uid_token(study_uid)}.{core}.{attempt}.{destination_token(destination)}"


def result_object_name(study_uid: str, core: str, attempt: int, sop_uid: str) -> str:
    return f"{study_uid}/{core}/{attempt}/{sop_uid}"
