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
    text = _particulars(event)
    if isinstance(event, ev.CoreEvent):  # every step of a core names the core and attempt first
        return f"{event.core} attempt {event.attempt}{text}"
    return text


def _particulars(event: ev.Event) -> str:
    match event:
        case ev.InstanceReceived():
            return (
                f"{event.modality or '?'} {event.sop_instance_uid} from {event.calling_ae_title} "
                f"({event.size / 1e6:.1f} MB)"
            )
        case ev.InstanceRejected():
            return f"0x{event.dimse_status:04X} from {event.calling_ae_title}: {event.reason}"
        case ev.StudyComplete():
            cores = f", cores: {', '.join(event.cores)}" if event.cores else ""
            return (
                f"attempt {event.attempt}, {event.instance_count} instances ({event.reason})"
                + cores
            )
        case ev.InstancesSkipped():
            reasons = Counter(
                f"{s.reason} by {s.rule}" if s.rule else s.reason for s in event.skipped
            )
            return ": " + ", ".join(f"{count} {reason}" for reason, count in reasons.items())
        case ev.InstancesUploaded():
            return f", batch {event.batch}: {len(event.instances)} instances"
        case ev.Uploaded():
            skipped = f" ({event.skipped_count} skipped)" if event.skipped_count else ""
            return f", {event.instance_count} instances{skipped}"
        case ev.UploadFailed() | ev.ResultFailed() | ev.NothingToUpload():
            return f": {event.reason}"
        case ev.ResultReady():
            findings = ", ".join(f.inference_command for f in event.findings)
            return (
                f", {len(event.results)} result objects"
                + (f", findings of {findings}" if findings else "")
                + ("" if event.results else " (the API had none: nothing to dispatch)")
            )
        case ev.Dispatched():
            replay = f" (replay {event.replay_id[:8]})" if event.replay_id else ""
            return f" to {event.destination}, {len(event.sop_instance_uids)} objects{replay}"
        case ev.DispatchFailed():
            return f" to {event.destination} after {event.tries} tries: {event.reason}"
        case ev.RelaunchRequested():
            return f"by {event.requested_by}, cores: {', '.join(event.cores) or 'all'}"
        case ev.DispatchReplayRequested():
            since = event.since.isoformat()
            return f" to {event.destination}, by {event.requested_by} (results since {since})"
        case ev.ObjectsExpired():
            return f"{event.object_count} {event.kind} removed: {event.reason}"
        case ev.Hl7Sent():
            left_out = ", ".join(event.missing_findings)
            missing = f", without {left_out}" if left_out else ""
            return f" to {event.ris}: {event.ack_code} (control ID {event.control_id}{missing})"
        case ev.Hl7Failed():
            return f" to {event.ris} after {event.tries} tries: {event.reason}"
        case ev.StepFailed():
            return f"{event.step} after {event.tries} tries: {event.reason}"
        case ev.ExternalReportReceived():
            return f"report {event.report_id} from {event.provider} ({event.report.language})"
        case ev.Hl7ConfigLoaded():
            return f"HL7 {event.kind} {event.name!r} loaded by {event.loaded_by}"
        case ev.Hl7Switched():
            sending = "sends to the RIS" if event.sending else "stopped sending to the RIS"
            reports = "takes" if event.external_reports else "refuses"
            return f"HL7 {sending}, {reports} external reports ({event.config_name!r})"
        case _:
            return ""
