"""Events as one line of text for people: `pacsor events` and the demo's progress."""

from __future__ import annotations

from collections import Counter

from pacsor.domain import events as ev


def describe(event: ev.Event) -> str:
    """What happened, in a few words, with what an operator needs to act on it."""
    when = event.occurred_at.isoformat(timespec="seconds")
    study = event.study_instance_uid or "(unknown study)"
    return f"{when}  {type(event).__name__:<16} {study}  {detail(event)}"


def detail(event: ev.Event) -> str:
    """The event's particulars, without its time, type and study."""
    match event:
        case ev.InstanceReceived():
            text = (
                f"{event.modality or '?'} {event.sop_instance_uid} from {event.calling_ae_title} "
                f"({event.size / 1e6:.1f} MB)"
            )
        case ev.InstanceRejected():
            text = f"0x{event.dimse_status:04X} from {event.calling_ae_title}: {event.reason}"
        case ev.StudyComplete():
            text = f"attempt {event.attempt}, {event.instance_count} instances ({event.reason})"
            if event.cores:
                text += f", cores: {', '.join(event.cores)}"
        case ev.InstancesSkipped():
            reasons = Counter(
                f"{s.reason} by {s.rule}" if s.rule else s.reason for s in event.skipped
            )
            text = f"{event.core} attempt {event.attempt}: " + ", ".join(
                f"{count} {reason}" for reason, count in reasons.items()
            )
        case ev.InstancesUploaded():
            text = (
                f"{event.core} attempt {event.attempt}, batch {event.batch}: "
                f"{len(event.instances)} instances"
            )
        case ev.Uploaded():
            text = f"{event.core} attempt {event.attempt}, {event.instance_count} instances"
            if event.skipped_count:
                text += f" ({event.skipped_count} skipped)"
        case ev.UploadFailed() | ev.ResultFailed() | ev.NothingToUpload():
            text = f"{event.core} attempt {event.attempt}: {event.reason}"
        case ev.ResultReady():
            text = f"{event.core} attempt {event.attempt}, {len(event.results)} result objects"
            if event.findings:
                text += ", findings of " + ", ".join(f.inference_command for f in event.findings)
            if not event.results:
                text += " (the API had none: nothing to dispatch)"
        case ev.Dispatched():
            text = (
                f"{event.core} attempt {event.attempt} to {event.destination}, "
                f"{len(event.sop_instance_uids)} objects"
            )
            if event.replay_id:
                text += f" (replay {event.replay_id[:8]})"
        case ev.DispatchFailed():
            text = (
                f"{event.core} attempt {event.attempt} to {event.destination} after "
                f"{event.tries} tries: {event.reason}"
            )
        case ev.RelaunchRequested():
            text = f"by {event.requested_by}, cores: {', '.join(event.cores) or 'all'}"
        case ev.DispatchReplayRequested():
            text = (
                f"{event.core} attempt {event.attempt} to {event.destination}, "
                f"by {event.requested_by} (results since {event.since.isoformat()})"
            )
        case ev.ObjectsExpired():
            text = f"{event.object_count} {event.kind} removed: {event.reason}"
        case ev.Hl7Sent():
            left_out = ", ".join(event.missing_findings)
            missing = f", without {left_out}" if left_out else ""
            text = (
                f"{event.core} attempt {event.attempt} to {event.ris}: {event.ack_code} "
                f"(control ID {event.control_id}{missing})"
            )
        case ev.Hl7Failed():
            text = (
                f"{event.core} attempt {event.attempt} to {event.ris} after {event.tries} tries: "
                f"{event.reason}"
            )
        case ev.StepFailed():
            text = f"{event.step} after {event.tries} tries: {event.reason}"
        case ev.ExternalReportReceived():
            text = f"report {event.report_id} from {event.provider} ({event.language})"
        case ev.Hl7ConfigLoaded():
            text = f"HL7 {event.kind} {event.name!r} loaded by {event.loaded_by}"
        case _:
            text = ""
    return text
