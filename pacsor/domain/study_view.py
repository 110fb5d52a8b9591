"""The operators' view of a study, folded from its events: a pure function, no I/O.

    fold(events) -> {study UID: StudyView}
    apply(view, sequence, event) -> view

Per study the view keeps the state of the latest attempt per AI core and per destination, the
time of each step, every attempt, the instance and result counts and the rejected instances.
Applying the same events in the same order always gives the same view, so the view can be
thrown away and rebuilt from the stream at any time.

States, in the order a study goes through them:

    receiving -> complete -> uploaded -> results -> dispatched        (or failed, with a reason)
    receiving -> complete -> nothing_to_upload          (every instance filtered out)

A core's own step (`progress`) is `uploaded`, then `results`, then `dispatched`; its shown
`state` also answers for its destinations: `failed` while one of them is, `dispatched` only
when every one heard of took the results (core_state). A destination (a DICOM peer, or the RIS
for HL7) is `dispatched` or `failed`; sent again with success, it is `dispatched`. The study's
own state is the least advanced of its cores in the latest attempt, and `failed` when any core
or destination of that attempt failed: the study, its cores and its destinations never
disagree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, TypeVar

import msgspec

from pacsor.domain import events as ev

NOTHING_TO_UPLOAD = "nothing_to_upload"
STATES = (
    "receiving",
    "complete",
    "uploaded",
    "results",
    "dispatched",
    NOTHING_TO_UPLOAD,
    "failed",
)
_RANK = {state: rank for rank, state in enumerate(STATES)}
REJECTIONS_KEPT = 50


class CoreView(msgspec.Struct, kw_only=True):
    """One AI core's progress on the study's latest attempt it took part in."""

    core: str
    attempt: int
    state: str  # as shown: its own step and its destinations' outcome (core_state)
    progress: str = "complete"  # its own step: complete, uploaded, results, dispatched...
    reason: str = ""
    uploaded_at: datetime | None = None
    results_at: datetime | None = None
    failed_at: datetime | None = None
    finished_at: datetime | None = None
    result_count: int = 0
    uploaded_count: int = 0  # instances accepted by the AI so far, batch by batch
    skipped_count: int = 0


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
    replays_requested: int = 0
    replayed_at: datetime | None = None
    # A "send again" asked for and not answered yet.
    resending: bool = False


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


class StepFailure(msgspec.Struct, kw_only=True):
    step: str
    at: datetime
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
    step_failures: list[StepFailure] = msgspec.field(default_factory=list)
    external_reports: int = 0
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
    changed: dict[str, StudyView] = {}
    for sequence, event in recorded:
        uid = event.study_uid
        if not uid:
            continue  # an instance rejected before its study could be read
        view = views.get(uid)
        if view is None:
            view = views[uid] = StudyView(study_uid=uid)
        if apply_event(view, sequence, event):
            changed[uid] = view
    for view in changed.values():
        settle(view)
    return views


# What each event type does to a study's view, declared next to the function that does it;
# `events_not_shown` are the types that change no study's view, each with the reason.
_APPLIERS: dict[type[ev.Event], Callable[[StudyView, Any], None]] = {}
events_not_shown: dict[type[ev.Event], str] = {
    ev.Hl7ConfigLoaded: "a fact about the site, not a study (shown by /hl7/config)",
    ev.ResultObjectsListed: "a page of the result list; the view counts ResultReady's total",
    ev.Hl7Switched: "a fact about the site, not a study (the HL7 sending switched)",
    ev.AssociationRejected: "a caller refused before it could send a study (a site fact)",
}

Applier = TypeVar("Applier", bound=Callable[..., None])


def applies(*kinds: type[ev.Event]) -> Callable[[Applier], Applier]:
    """Declare the function that applies events of `kinds` to a view."""

    def register(function: Applier) -> Applier:
        for kind in kinds:
            if kind in _APPLIERS:
                raise TypeError(f"{kind.__name__} is applied twice")
            _APPLIERS[kind] = function
        return function

    return register


def events_shown() -> frozenset[type[ev.Event]]:
    return frozenset(_APPLIERS)


def apply(view: StudyView, sequence: int, event: ev.Event) -> StudyView:
    """Apply one event to the study's view, in place, and return the view."""
    if apply_event(view, sequence, event):
        settle(view)
    return view


def apply_event(view: StudyView, sequence: int, event: ev.Event) -> bool:
    """Apply one event to the view, in place, but not the states derived from it: `settle`
    the view after the last of a run of events (a rebuild settles a study once a batch, not
    once an event: that was half of the fold's time). False when already applied."""
    if sequence <= view.last_sequence:
        return False  # already applied: replaying a batch twice changes nothing
    applier = _APPLIERS.get(type(event))
    if applier is None and type(event) not in events_not_shown:
        # Every type of the catalogue is declared (tests/test_study_view.py): a new one must be.
        raise TypeError(f"the study view does not know {type(event).__name__}")
    view.last_sequence = sequence
    view.event_count += 1
    at = event.occurred_at
    if view.updated_at is None or at > view.updated_at:
        view.updated_at = at
    if applier is not None:
        applier(view, event)
    return True


def settle(view: StudyView) -> StudyView:
    """Derive the states of the study and its cores from the rest of the view. The appliers
    never read them, so settling once after several events gives what settling after each
    would."""
    for core in view.cores:
        core.state = core_state(view, core)
    view.state = study_state(view)
    return view


@applies(ev.InstanceRejected)
def _rejected(view: StudyView, event: ev.InstanceRejected) -> None:
    at = event.occurred_at
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


@applies(ev.RelaunchRequested)
def _relaunch_requested(view: StudyView, event: ev.RelaunchRequested) -> None:
    view.relaunch_pending = True


@applies(ev.InstancesUploaded)
def _batch_uploaded(view: StudyView, event: ev.InstancesUploaded) -> None:
    core = _core(view, event.core, event.attempt)
    if core is not None:
        core.uploaded_count += len(event.instances)


@applies(ev.InstancesSkipped)
def _skipped(view: StudyView, event: ev.InstancesSkipped) -> None:
    core = _core(view, event.core, event.attempt)
    if core is not None:
        core.skipped_count += len(event.skipped)


@applies(ev.Uploaded)
def _uploaded(view: StudyView, event: ev.Uploaded) -> None:
    core = _core(view, event.core, event.attempt)
    if core is not None:
        core.progress, core.uploaded_at, core.reason = "uploaded", event.occurred_at, ""


@applies(ev.NothingToUpload)
def _nothing_to_upload(view: StudyView, event: ev.NothingToUpload) -> None:
    """Every instance was filtered out: this core is finished, with nothing sent."""
    core = _core(view, event.core, event.attempt)
    if core is not None:
        core.progress, core.reason = NOTHING_TO_UPLOAD, f"nothing to upload: {event.reason}"
        core.finished_at = event.occurred_at
        core.skipped_count = max(core.skipped_count, event.skipped_count)


@applies(ev.UploadFailed, ev.ResultFailed)
def _core_failed(view: StudyView, event: ev.UploadFailed | ev.ResultFailed) -> None:
    core = _core(view, event.core, event.attempt)
    if core is not None:
        core.progress, core.failed_at, core.reason = "failed", event.occurred_at, event.reason


@applies(ev.DispatchFailed)
def _dispatch_failed(view: StudyView, event: ev.DispatchFailed) -> None:
    reason = short_reason(event.reason, event.destination)
    if event.replay_id:
        dest = view.destination(event.destination, event.core)
        if dest is not None:
            dest.reason, dest.resending = f"sending again failed: {reason}", False
        return
    dest = _destination(view, event.destination, event.core, event.attempt)
    if dest is not None:
        dest.state, dest.at, dest.reason = "failed", event.occurred_at, reason
        dest.object_count = event.delivered_count


@applies(ev.DispatchReplayRequested)
def _replay_requested(view: StudyView, event: ev.DispatchReplayRequested) -> None:
    dest = view.destination(event.destination, event.core)
    if dest is not None:
        dest.replays_requested += 1
        dest.resending = True


@applies(ev.Hl7Sent, ev.Hl7Failed)
def _hl7(view: StudyView, event: ev.Hl7Sent | ev.Hl7Failed) -> None:
    # The RIS is shown as one more destination of the core's results.
    dest = _destination(view, f"RIS {event.ris}", event.core, event.attempt)
    if dest is None:
        return
    dest.at = event.occurred_at
    if isinstance(event, ev.Hl7Sent):
        missing = ", ".join(event.missing_findings)
        dest.state = "dispatched"
        dest.reason = f"ACK {event.ack_code}" + (f", without {missing}" if missing else "")
    else:
        dest.state, dest.reason = "failed", event.reason


@applies(ev.ExternalReportReceived)
def _external_report(view: StudyView, event: ev.ExternalReportReceived) -> None:
    view.external_reports += 1


@applies(ev.ObjectsExpired)
def _expired(view: StudyView, event: ev.ObjectsExpired) -> None:
    if event.kind == "instances":
        view.instances_stored = False
    for made in view.results_made:
        if event.kind == "results" and (made.core, made.attempt) == (event.core, event.attempt):
            made.removed = True
    what = f"{event.kind} {event.core} attempt {event.attempt}" if event.core else event.kind
    when = event.occurred_at.isoformat(timespec="seconds")
    view.expired.append(f"{when} {what}: {event.reason}")


@applies(ev.StepFailed)
def _step_failed(view: StudyView, event: ev.StepFailed) -> None:
    """A step gave up on the study (completion, or a step without a failure event of its own):
    the study has failed, whatever its cores said before."""
    view.step_failures.append(
        StepFailure(step=event.step, at=event.occurred_at, reason=event.reason)
    )
    del view.step_failures[:-REJECTIONS_KEPT]


def study_state(view: StudyView) -> str:
    """The study's state: its least advanced core of the latest attempt, or failed.

    A core with nothing to upload is finished: the study is `nothing_to_upload` when every
    core is, else the least advanced of the others. A step that gave up on the study since
    its latest attempt began (or before any, for completion) makes it failed."""
    started = view.attempts[-1].completed_at if view.attempts else None
    if any(started is None or f.at >= started for f in view.step_failures):
        return "failed"
    if view.attempt == 0:
        return "receiving"
    cores = [c for c in view.cores if c.attempt == view.attempt]
    if not cores:
        return "complete"
    destinations = [d for d in view.destinations if d.attempt == view.attempt]
    if any(c.state == "failed" for c in cores) or any(d.state == "failed" for d in destinations):
        return "failed"
    working = [c.state for c in cores if c.state != NOTHING_TO_UPLOAD]
    if not working:
        return NOTHING_TO_UPLOAD
    return min(working, key=_RANK.__getitem__)


def core_state(view: StudyView, core: CoreView) -> str:
    """The core as shown: its own step, unless its destinations say more.

    Once results are ready a core is `failed` while one of its destinations is, and
    `dispatched` only when every destination heard of took the results."""
    if core.progress not in {"results", "dispatched"}:
        return core.progress
    destinations = [
        d for d in view.destinations if (d.core, d.attempt) == (core.core, core.attempt)
    ]
    if any(d.state == "failed" for d in destinations):
        return "failed"
    if destinations and all(d.state == "dispatched" for d in destinations):
        return "dispatched"
    return "results"


def short_reason(reason: str, destination: str) -> str:
    """A destination's failure without its own name, which the page shows beside it."""
    for prefix in (f"{destination}: ", f"to {destination}: "):
        reason = reason.replace(prefix, "")
    return reason.replace(f" {destination}", "").strip() or reason


@applies(ev.InstanceReceived)
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


@applies(ev.StudyComplete)
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
        core.attempt, core.progress, core.reason, core.result_count = attempt, "complete", "", 0
        core.uploaded_count = core.skipped_count = 0
        core.uploaded_at = core.results_at = core.failed_at = core.finished_at = None
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
        dest.resending = False
    return dest


@applies(ev.ResultReady)
def _results(view: StudyView, event: ev.ResultReady) -> None:
    view.results_made.append(
        ResultsMade(
            core=event.core,
            attempt=event.attempt,
            at=event.occurred_at,
            result_count=event.result_count,
        )
    )
    core = _core(view, event.core, event.attempt)
    if core is not None and core.progress != "dispatched":
        core.progress, core.results_at, core.reason = "results", event.occurred_at, ""
        core.result_count = event.result_count


@applies(ev.Dispatched)
def _dispatched(view: StudyView, event: ev.Dispatched) -> None:
    if event.replay_id:
        # Results sent again: a failed delivery of that attempt is now a delivered one.
        dest = view.destination(event.destination, event.core)
        if dest is None:
            dest = DestinationView(
                destination=event.destination,
                core=event.core,
                attempt=event.attempt,
                state="dispatched",
                at=event.occurred_at,
                object_count=event.object_count,
            )
            view.destinations.append(dest)
        elif dest.attempt == event.attempt and dest.state != "dispatched":
            dest.state, dest.at = "dispatched", event.occurred_at
            dest.reason = "delivered when sent again"
            dest.object_count = event.object_count
        dest.replays += 1
        dest.replayed_at = event.occurred_at
        dest.resending = False
        return
    dest = _destination(view, event.destination, event.core, event.attempt)
    if dest is not None:
        dest.state, dest.at, dest.reason = "dispatched", event.occurred_at, ""
        dest.object_count = event.object_count
    core = _core(view, event.core, event.attempt)
    if core is not None and core.progress in {"results", "dispatched"}:
        core.progress = "dispatched"


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


class StepTime(msgspec.Struct, frozen=True, kw_only=True):
    """How long one step of the latest attempt took (`ended` None: still going)."""

    step: str
    core: str = ""
    started: datetime
    ended: datetime | None
    outcome: str = ""

    def seconds(self, now: datetime) -> float:
        return max(((self.ended or now) - self.started).total_seconds(), 0.0)


def step_times(view: StudyView) -> list[StepTime]:
    """The latest attempt's steps in order: receiving, waiting for the study to be complete,
    then per core its upload, the AI's work and the delivery to its destinations."""
    steps: list[StepTime] = []
    attempt = next((a for a in reversed(view.attempts) if a.attempt == view.attempt), None)
    first, last = view.first_received_at, view.last_received_at
    if first is not None and last is not None and (attempt is None or not attempt.relaunch):
        ended = attempt.completed_at if attempt else None
        steps.append(StepTime(step="receive", started=first, ended=last if attempt else None))
        steps.append(StepTime(step="quiet period", started=last, ended=ended))
    if attempt is None:
        return steps
    for core in (c for c in view.cores if c.attempt == view.attempt):
        upload_end = core.uploaded_at or core.finished_at
        if core.uploaded_at is None and core.failed_at and core.results_at is None:
            upload_end = core.failed_at
        steps.append(
            StepTime(
                step="upload",
                core=core.core,
                started=attempt.completed_at,
                ended=upload_end,
                outcome="nothing to upload" if core.finished_at else "",
            )
        )
        if core.uploaded_at is None:
            continue
        steps.append(
            StepTime(
                step="AI",
                core=core.core,
                started=core.uploaded_at,
                ended=core.results_at or core.failed_at,
            )
        )
        if core.results_at is None:
            continue
        destinations = [
            d for d in view.destinations if (d.core, d.attempt) == (core.core, core.attempt)
        ]
        done = [d.at for d in destinations if d.at is not None and d.state != "results"]
        finished = bool(destinations) and len(done) == len(destinations)
        steps.append(
            StepTime(
                step="delivery",
                core=core.core,
                started=core.results_at,
                ended=max(done) if finished and done else None,
            )
        )
    return steps


class PeerSeen(msgspec.Struct, kw_only=True):
    """An AI core or a destination as last seen through the studies' events."""

    kind: str  # "core" or "destination"
    name: str
    ok_at: datetime | None = None
    failed_at: datetime | None = None
    reason: str = ""
    study: str = ""

    @property
    def state(self) -> str:
        if self.failed_at is None and self.ok_at is None:
            return "unseen"
        if self.failed_at is None or (self.ok_at is not None and self.ok_at > self.failed_at):
            return "ok"
        return "failing"


def peer_outcome(event: ev.Event) -> tuple[str, str, bool, str] | None:
    """(kind, name, worked, reason) when `event` says how a core or destination answered."""
    match event:
        case ev.Uploaded() | ev.ResultReady():
            return ("core", event.core, True, "")
        case ev.UploadFailed() | ev.ResultFailed():
            return ("core", event.core, False, event.reason)
        case ev.Dispatched():
            return ("destination", event.destination, True, "")
        case ev.DispatchFailed():
            return ("destination", event.destination, False, event.reason)
        case ev.Hl7Sent():
            return ("destination", f"RIS {event.ris}", True, "")
        case ev.Hl7Failed():
            return ("destination", f"RIS {event.ris}", False, event.reason)
        case _:
            return None


def see_peer(peers: dict[tuple[str, str], PeerSeen], event: ev.Event) -> PeerSeen | None:
    """Record in `peers` what `event` says of a core or destination; the one changed."""
    outcome = peer_outcome(event)
    if outcome is None:
        return None
    kind, name, worked, reason = outcome
    peer = peers.setdefault((kind, name), PeerSeen(kind=kind, name=name))
    at = event.occurred_at
    if worked and (peer.ok_at is None or at >= peer.ok_at):
        peer.ok_at, peer.study = at, event.study_uid
    elif not worked and (peer.failed_at is None or at >= peer.failed_at):
        peer.failed_at, peer.study = at, event.study_uid
        peer.reason = short_reason(reason, name)
    return peer
