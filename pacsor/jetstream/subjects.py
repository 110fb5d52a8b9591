"""The one place that knows JetStream names: streams, buckets, subjects, consumers.

    pacsor.study.<study>.received|rejected|complete              study-level events
    pacsor.study.<study>.<core>.uploaded|result_ready|...        per AI core events
    pacsor.timer.<study>.quiet    the pending quiet-period schedule (replaced on each instance)
    pacsor.timer.<study>.elapsed  where the server publishes it when it fires

DICOM UIDs hold only digits and dots; dots separate NATS tokens, so a UID is written with
`_` in place of `.` (reversible).
"""

from __future__ import annotations

import re

from pacsor.domain.events import Event

EVENTS_STREAM = "PACSOR"
TIMERS_STREAM = "PACSOR_TIMERS"
INSTANCES_BUCKET = "PACSOR_INSTANCES"
RESULTS_BUCKET = "PACSOR_RESULTS"

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


ALL_STUDY_EVENTS = "pacsor.study.>"


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


def instance_object_name(study_uid: str, sop_uid: str) -> str:
    return f"{study_uid}/{sop_uid}"


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
