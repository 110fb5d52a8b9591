"""Events as one line of text for people: `pacsor events` and the demo's progress."""

from __future__ import annotations

from pacsor.domain import events as ev


def describe(event: ev.Event) -> str:
    """What happened, in a few words, with what an operator needs to act on it."""
    match event:
        case ev.InstanceReceived():
            detail = (
                f"{event.modality or '?'} {event.sop_instance_uid} from {event.calling_ae_title} "
                f"({event.size / 1e6:.1f} MB)"
            )
        case ev.InstanceRejected():
            detail = f"0x{event.dimse_status:04X} from {event.calling_ae_title}: {event.reason}"
        case ev.StudyComplete():
            detail = f"attempt {event.attempt}, {event.instance_count} instances ({event.reason})"
        case ev.Uploaded():
            detail = f"{event.core} attempt {event.attempt}, {event.instance_count} instances"
        case ev.UploadFailed() | ev.ResultFailed():
            detail = f"{event.core} attempt {event.attempt}: {event.reason}"
        case ev.ResultReady():
            detail = f"{event.core} attempt {event.attempt}, {len(event.results)} result objects"
        case ev.Dispatched():
            detail = (
                f"{event.core} attempt {event.attempt} to {event.destination}, "
                f"{len(event.sop_instance_uids)} objects"
            )
        case ev.DispatchFailed():
            detail = (
                f"{event.core} attempt {event.attempt} to {event.destination} after "
                f"{event.tries} tries: {event.reason}"
            )
        case ev.StepFailed():
            detail = f"{event.step} after {event.tries} tries: {event.reason}"
        case _:
            detail = ""
    when = event.occurred_at.isoformat(timespec="seconds")
    study = event.study_instance_uid or "(unknown study)"
    return f"{when}  {type(event).__name__:<16} {study}  {detail}"
