"""Events as one line of text for people: `pacsor events` and the demo's progress."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

from pacsor.domain import events as ev


def describe(event: ev.Event) -> str:
    """What happened, in a few words, with what an operator needs to act on it."""
    when = event.occurred_at.isoformat(timespec="seconds")
    study = event.study_uid or "(unknown study)"
    return f"{when}  {type(event).__name__:<16} {study}  {detail(event)}"


def short_uid(uid: str) -> str:
    """A UID a person can tell apart in a line: `1.2.826.…498.12` (first 8, last 6)."""
    return uid if len(uid) <= 18 else f"{uid[:8]}…{uid[-6:]}"


def describe_short(event: ev.Event) -> str:
    """`describe` for a line that scrolls by: the time of day, the study shortened."""
    when = event.occurred_at.astimezone().strftime("%H:%M:%S")
    study = short_uid(event.study_uid) if event.study_uid else "(unknown)"
    return f"{when}  {type(event).__name__:<17} {study}  {detail(event, short=True)}"


def detail(event: ev.Event, short: bool = False) -> str:
    """The event's particulars, without its time, type and study (UIDs shortened if short)."""
    text = _particulars(event)
    if short and isinstance(event, ev.InstanceReceived):
        text = text.replace(event.sop_instance_uid, short_uid(event.sop_instance_uid))
    if isinstance(event, ev.CoreEvent):  # every step of a core names the core and attempt first
        return f"{event.core} attempt {event.attempt}{text}"
    return text


Words = TypeVar("Words", bound=Callable[..., str])
_TEXTS: dict[type[ev.Event], Callable[[Any], str]] = {}


def texts(*kinds: type[ev.Event]) -> Callable[[Words], Words]:
    """Declare the function that words the particulars of events of `kinds`."""

    def register(function: Words) -> Words:
        for kind in kinds:
            if kind in _TEXTS:
                raise TypeError(f"{kind.__name__} is worded twice")
            _TEXTS[kind] = function
        return function

    return register


def events_worded() -> frozenset[type[ev.Event]]:
    return frozenset(_TEXTS)


def _particulars(event: ev.Event) -> str:
    words = _TEXTS.get(type(event))
    return words(event) if words is not None else ""


@texts(ev.InstanceReceived)
def _received(event: ev.InstanceReceived) -> str:
    return (
        f"{event.modality or '?'} {event.sop_instance_uid} from {event.calling_ae_title} "
        f"({event.size / 1e6:.1f} MB)"
    )


@texts(ev.InstanceRejected)
def _rejected(event: ev.InstanceRejected) -> str:
    return f"0x{event.dimse_status:04X} from {event.calling_ae_title}: {event.reason}"


@texts(ev.StudyComplete)
def _complete(event: ev.StudyComplete) -> str:
    cores = f", cores: {', '.join(event.cores)}" if event.cores else ""
    return f"attempt {event.attempt}, {event.instance_count} instances ({event.reason})" + cores


@texts(ev.InstancesSkipped)
def _skipped(event: ev.InstancesSkipped) -> str:
    reasons = Counter(f"{s.reason} by {s.rule}" if s.rule else s.reason for s in event.skipped)
    return ": " + ", ".join(f"{count} {reason}" for reason, count in reasons.items())


@texts(ev.InstancesUploaded)
def _batch(event: ev.InstancesUploaded) -> str:
    return f", batch {event.batch}: {len(event.instances)} instances"


@texts(ev.Uploaded)
def _uploaded(event: ev.Uploaded) -> str:
    skipped = f" ({event.skipped_count} skipped)" if event.skipped_count else ""
    return f", {event.instance_count} instances{skipped}"


@texts(ev.UploadFailed, ev.ResultFailed, ev.NothingToUpload)
def _with_reason(event: ev.UploadFailed | ev.ResultFailed | ev.NothingToUpload) -> str:
    return f": {event.reason}"


@texts(ev.ResultObjectsListed)
def _results_listed(event: ev.ResultObjectsListed) -> str:
    return f", page {event.part}: {len(event.results)} result objects"


@texts(ev.ResultReady)
def _results(event: ev.ResultReady) -> str:
    findings = ", ".join(f.inference_command for f in event.findings)
    return (
        f", {event.result_count} result objects"
        + (f", findings of {findings}" if findings else "")
        + ("" if event.result_count else " (the API had none: nothing to dispatch)")
    )


@texts(ev.Dispatched)
def _dispatched(event: ev.Dispatched) -> str:
    replay = f" (replay {event.replay_id[:8]})" if event.replay_id else ""
    return f" to {event.destination}, {event.object_count} objects{replay}"


@texts(ev.DispatchFailed)
def _dispatch_failed(event: ev.DispatchFailed) -> str:
    return f" to {event.destination} after {event.tries} tries: {event.reason}"


@texts(ev.RelaunchRequested)
def _relaunch(event: ev.RelaunchRequested) -> str:
    return f"by {event.requested_by}, cores: {', '.join(event.cores) or 'all'}"


@texts(ev.DispatchReplayRequested)
def _replay(event: ev.DispatchReplayRequested) -> str:
    since = event.since.isoformat()
    return f" to {event.destination}, by {event.requested_by} (results since {since})"


@texts(ev.ObjectsExpired)
def _expired(event: ev.ObjectsExpired) -> str:
    return f"{event.object_count} {event.kind} removed: {event.reason}"


@texts(ev.Hl7Sent)
def _hl7_sent(event: ev.Hl7Sent) -> str:
    left_out = ", ".join(event.missing_findings)
    missing = f", without {left_out}" if left_out else ""
    return f" to {event.ris}: {event.ack_code} (control ID {event.control_id}{missing})"


@texts(ev.Hl7Failed)
def _hl7_failed(event: ev.Hl7Failed) -> str:
    return f" to {event.ris} after {event.tries} tries: {event.reason}"


@texts(ev.StepFailed)
def _step_failed(event: ev.StepFailed) -> str:
    return f"{event.step} after {event.tries} tries: {event.reason}"


@texts(ev.ExternalReportReceived)
def _external_report(event: ev.ExternalReportReceived) -> str:
    return f"report {event.report_id} from {event.provider} ({event.report.language})"


@texts(ev.Hl7ConfigLoaded)
def _hl7_config(event: ev.Hl7ConfigLoaded) -> str:
    return f"HL7 {event.kind} {event.name!r} loaded by {event.loaded_by}"


@texts(ev.Hl7Switched)
def _hl7_switched(event: ev.Hl7Switched) -> str:
    sending = "sends to the RIS" if event.sending else "stopped sending to the RIS"
    reports = "takes" if event.external_reports else "refuses"
    return f"HL7 {sending}, {reports} external reports ({event.config_name!r})"


@texts(ev.AssociationRejected)
def _association_rejected(event: ev.AssociationRejected) -> str:
    return f"{event.calling_ae_title!r} from {event.address}: {event.reason}"
