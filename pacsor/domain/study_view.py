"""The operators' view of a study, folded from its events: a pure function, no I/O.

    fold(events) -> {study UID: StudyView}
    apply(view, sequence, event) -> view

Per study the view keeps the state of the latest attempt per AI core and per destination, the
time of each step, every attempt, the instance and result counts and the rejected instances.
Applying the same events in the same order always gives the same view, so the view can be
thrown away and rebuilt from the stream at any time.

States, in the order a study goes through them:

    receiving -> complete -> uploaded -> results -> dispatched        (or failed, with a reason)

A core is `uploaded`, then `results`, then `dispatched` once a destination took its results;
a destination (a DICOM peer, or the RIS for HL7) is `dispatched` or `failed`. The study's own
state is the least advanced of its cores in the latest attempt, and `failed` when any core or
destination of that attempt failed.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import msgspec

from pacsor.domain import events as ev

STATES = ("receiving", "complete", "uploaded", "results", "dispatched", "failed")
_RANK = {state: rank for rank, state in enumerate(STATES)}
REJECTIONS_KEPT = 50


class CoreView(msgspec.Struct, kw_only=True):
    """One AI core's progress on the study's latest attempt it took part in."""

    core: str
    attempt: int
    state: str
    reason: str = ""
    uploaded_at: datetime | None = None
    results_at: datetime | None = None
    failed_at: datetime | None = None
    result_count: int = 0


class DestinationView(msgspec.Struct, kw_only=True):
    """One destination's delivery of one core's results."""

    destination: str
    core: str
    attempt: int
    state: str
    reason: str = ""
    at: datetime | None = None
    object_count: int = 0
    replays: int = 0
    replayed_at: datetime | None = None


class AttemptView(msgspec.Struct, kw_only=True):
    attempt: int
    completed_at: datetime
    reason: str
    relaunch: bool = False
    requested_by: str = ""
    cores: tuple[str, ...] = ()
    instance_count: int = 0


class RejectionView(msgspec.Struct, kw_only=True):
    at: datetime
    sop_instance_uid: str
    dimse_status: int
    reason: str


class ResultsMade(msgspec.Struct, kw_only=True):
    """Results of one core and attempt became ready: what a replay to a destination resends."""

    core: str
    attempt: int
    at: datetime
    result_count: int
    removed: bool = False


class StudyView(msgspec.Struct, kw_only=True):
    study_uid: str = msgspec.field(name="study_instance_uid")
    state: str = "receiving"
    accession_number: str = ""
    study_date: str = ""
    study_description: str = ""
    modalities: list[str] = msgspec.field(default_factory=list)
    first_received_at: datetime | None = None
    last_received_at: datetime | None = None
    updated_at: datetime | None = None
    instance_count: int = 0
    size: int = 0
    rejected_count: int = 0
    rejections: list[RejectionView] = msgspec.field(default_factory=list)
    attempt: int = 0
    attempts: list[AttemptView] = msgspec.field(default_factory=list)
    cores: list[CoreView] = msgspec.field(default_factory=list)
    destinations: list[DestinationView] = msgspec.field(default_factory=list)
    results_made: list[ResultsMade] = msgspec.field(default_factory=list)
    relaunch_pending: bool = False
    instances_stored: bool = True
    expired: list[str] = msgspec.field(default_factory=list)
    event_count: int = 0
    last_sequence: int = 0
    # The stored instances, so that a copy sent twice counts once.
    sop_instance_uids: list[str] = msgspec.field(default_factory=list)

    def holds_objects(self) -> bool:
        """Whether stored instances or result objects of the study may still be there."""
        return self.instances_stored or any(not r.removed for r in self.results_made)

    def core(self, name: str) -> CoreView | None:
        return next((c for c in self.cores if c.core == name), None)

    def destination(self, name: str, core: str) -> DestinationView | None:
        return next(
            (d for d in self.destinations if d.destination == name and d.core == core), None
        )


def fold(
    recorded: Iterable[tuple[int, ev.Event]], views: dict[str, StudyView] | None = None
) -> dict[str, StudyView]:
    """Apply `(stream sequence, event)` pairs, in stream order, to `views` (a new dict if None)."""
    views = {} if views is None else views
    for sequence, event in recorded:
        uid = event.study_uid
        if not uid:
            continue  # an instance rejected before its study could be read
        view = views.get(uid)
        if view is None:
            view = views[uid] = StudyView(study_uid=uid)
        apply(view, sequence, event)
    return views


def apply(view: StudyView, sequence: int, event: ev.Event) -> StudyView:
    """Apply one event to the study's view, in place, and return the view."""
    if sequence <= view.last_sequence:
        return view  # already applied: replaying a batch twice changes nothing
    view.last_sequence = sequence
    view.event_count += 1
    at = event.occurred_at
    if view.updated_at is None or at > view.updated_at:
        view.updated_at = at

    match event:
        case ev.InstanceReceived():
            _received(view, event)
        case ev.InstanceRejected():
            view.rejected_count += 1
            view.rejections.append(
                RejectionView(
                    at=at,
                    sop_instance_uid=event.sop_instance_uid,
                    dimse_status=event.dimse_status,
                    reason=event.reason,
                )
            )
            del view.rejections[:-REJECTIONS_KEPT]
            if view.first_received_at is None:
                view.first_received_at = at
        case ev.StudyComplete():
            _complete(view, event)
        case ev.RelaunchRequested():
            view.relaunch_pending = True
        case ev.Uploaded():
            core = _core(view, event.core, event.attempt)
            if core is not None:
                core.state, core.uploaded_at, core.reason = "uploaded", at, ""
        case ev.UploadFailed() | ev.ResultFailed():
            core = _core(view, event.core, event.attempt)
            if core is not None:
                core.state, core.failed_at, core.reason = "failed", at, event.reason
        case ev.ResultReady():
            _results(view, event)
        case ev.Dispatched():
            _dispatched(view, event)
        case ev.DispatchFailed(replay_id=""):
            dest = _destination(view, event.destination, event.core, event.attempt)
            if dest is not None:
                dest.state, dest.at, dest.reason = "failed", at, event.reason
                dest.object_count = len(event.delivered_sop_instance_uids)
        case ev.DispatchFailed():
            dest = view.destination(event.destination, event.core)
            if dest is not None:
                dest.reason = f"replay failed: {event.reason}"
        case ev.Hl7Sent() | ev.Hl7Failed():
            # The RIS is shown as one more destination of the core's results.
            dest = _destination(view, f"RIS {event.ris}", event.core, event.attempt)
            if dest is not None:
                dest.at = at
                if isinstance(event, ev.Hl7Sent):
                    missing = ", ".join(event.missing_findings)
                    dest.state = "dispatched"
                    dest.reason = f"ACK {event.ack_code}" + (
                        f", without {missing}" if missing else ""
                    )
                else:
                    dest.state, dest.reason = "failed", event.reason
        case ev.ObjectsExpired():
            if event.kind == "instances":
                view.instances_stored = False
            for made in view.results_made:
                if event.kind == "results" and (made.core, made.attempt) == (
                    event.core,
                    event.attempt,
                ):
                    made.removed = True
            what = (
                f"{event.kind} {event.core} attempt {event.attempt}" if event.core else event.kind
            )
            view.expired.append(f"{at.isoformat(timespec='seconds')} {what}: {event.reason}")
        case _:
            pass
    view.state = study_state(view)
    return view


def study_state(view: StudyView) -> str:
    """The study's state: its least advanced core of the latest attempt, or failed."""
    if view.attempt == 0:
        return "receiving"
    cores = [c for c in view.cores if c.attempt == view.attempt]
    if not cores:
        return "complete"
    destinations = [d for d in view.destinations if d.attempt == view.attempt]
    if any(c.state == "failed" for c in cores) or any(d.state == "failed" for d in destinations):
        return "failed"
    return min((c.state for c in cores), key=_RANK.__getitem__)


def _received(view: StudyView, event: ev.InstanceReceived) -> None:
    at = event.occurred_at
    if view.first_received_at is None or at < view.first_received_at:
        view.first_received_at = at
    if view.last_received_at is None or at > view.last_received_at:
        view.last_received_at = at
    if event.sop_instance_uid not in view.sop_instance_uids:
        view.sop_instance_uids.append(event.sop_instance_uid)
        view.instance_count += 1
        view.size += event.size
    if event.modality and event.modality not in view.modalities:
        view.modalities.append(event.modality)
    # Version 1 events carry no accession number: keep what a later instance said.
    view.accession_number = event.accession_number or view.accession_number
    view.study_date = event.study_date or view.study_date
    view.study_description = event.study_description or view.study_description
    view.instances_stored = True


def _complete(view: StudyView, event: ev.StudyComplete) -> None:
    view.attempts.append(
        AttemptView(
            attempt=event.attempt,
            completed_at=event.occurred_at,
            reason=event.reason,
            relaunch=event.relaunch,
            requested_by=event.requested_by,
            cores=event.cores,
            instance_count=event.instance_count,
        )
    )
    view.attempt = max(view.attempt, event.attempt)
    if event.relaunch:
        view.relaunch_pending = False


def _core(view: StudyView, name: str, attempt: int) -> CoreView | None:
    """The core's view for `attempt`; None when the event is of an older attempt."""
    core = view.core(name)
    if core is None:
        core = CoreView(core=name, attempt=attempt, state="complete")
        view.cores.append(core)
    elif attempt < core.attempt:
        return None
    elif attempt > core.attempt:
        core.attempt, core.state, core.reason, core.result_count = attempt, "complete", "", 0
        core.uploaded_at = core.results_at = core.failed_at = None
    return core


def _destination(view: StudyView, name: str, core: str, attempt: int) -> DestinationView | None:
    dest = view.destination(name, core)
    if dest is None:
        dest = DestinationView(destination=name, core=core, attempt=attempt, state="results")
        view.destinations.append(dest)
    elif attempt < dest.attempt:
        return None
    elif attempt > dest.attempt:
        dest.attempt, dest.state, dest.reason, dest.object_count = attempt, "results", "", 0
    return dest


def _results(view: StudyView, event: ev.ResultReady) -> None:
    view.results_made.append(
        ResultsMade(
            core=event.core,
            attempt=event.attempt,
            at=event.occurred_at,
            result_count=len(event.results),
        )
    )
    core = _core(view, event.core, event.attempt)
    if core is not None and core.state != "dispatched":
        core.state, core.results_at, core.reason = "results", event.occurred_at, ""
        core.result_count = len(event.results)


def _dispatched(view: StudyView, event: ev.Dispatched) -> None:
    if event.replay_id:
        # A replay resends results already delivered or not: it never changes the attempt's state.
        dest = view.destination(event.destination, event.core)
        if dest is None:
            dest = DestinationView(
                destination=event.destination,
                core=event.core,
                attempt=event.attempt,
                state="dispatched",
                at=event.occurred_at,
                object_count=len(event.sop_instance_uids),
            )
            view.destinations.append(dest)
        dest.replays += 1
        dest.replayed_at = event.occurred_at
        return
    dest = _destination(view, event.destination, event.core, event.attempt)
    if dest is not None:
        dest.state, dest.at, dest.reason = "dispatched", event.occurred_at, ""
        dest.object_count = len(event.sop_instance_uids)
    core = _core(view, event.core, event.attempt)
    if core is not None and core.state in {"results", "dispatched"}:
        core.state = "dispatched"


def step_durations(view: StudyView, event: ev.Event) -> list[tuple[str, float]]:
    """How long the step that `event` ends took, in seconds, from the view just after it.

    receive_to_complete: last instance -> StudyComplete; upload: StudyComplete -> Uploaded;
    ai_wait: Uploaded -> ResultReady; dispatch: ResultReady -> Dispatched.
    """
    started: datetime | None = None
    name = ""
    match event:
        case ev.StudyComplete(relaunch=False):
            name, started = "receive_to_complete", view.last_received_at
        case ev.Uploaded():
            attempt = next((a for a in view.attempts if a.attempt == event.attempt), None)
            name, started = "upload", attempt.completed_at if attempt else None
        case ev.ResultReady():
            core = view.core(event.core)
            if core is not None and core.attempt == event.attempt:
                name, started = "ai_wait", core.uploaded_at
        case ev.Dispatched(replay_id=""):
            core = view.core(event.core)
            if core is not None and core.attempt == event.attempt:
                name, started = "dispatch", core.results_at
        case _:
            pass
    if started is None:
        return []
    return [(name, max((event.occurred_at - started).total_seconds(), 0.0))]
