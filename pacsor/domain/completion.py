"""When is a study complete? A pure decision from its event history.

A study is complete when no instance arrived for the quiet period. The server-side timer only
wakes the decision up; the decision itself is taken from the events, so a timer that fires
early, late or twice can never complete a study twice or too soon.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import msgspec

from pacsor.domain.events import (
    InstanceReceived,
    InstanceRef,
    ObjectsExpired,
    RecordedEvent,
    RelaunchRequested,
    StudyComplete,
)


class Complete(msgspec.Struct, frozen=True):
    event: StudyComplete
    expected_last_subject_sequence: int  # the last StudyComplete's sequence, 0 if none


class WaitUntil(msgspec.Struct, frozen=True):
    at: datetime


class AlreadyComplete(msgspec.Struct, frozen=True):
    attempt: int


class NothingReceived(msgspec.Struct, frozen=True):
    pass


Decision = Complete | WaitUntil | AlreadyComplete | NothingReceived


def decide_completion(
    study_uid: str, history: Sequence[RecordedEvent], now: datetime, quiet: timedelta
) -> Decision:
    received = [r.event for r in history if isinstance(r.event, InstanceReceived)]
    completions = [r for r in history if isinstance(r.event, StudyComplete)]
    if not received:
        return NothingReceived()

    last_arrival = max(e.occurred_at for e in received)
    if last_arrival + quiet > now:
        return WaitUntil(last_arrival + quiet)

    instances = latest_instances(received)

    last_sequence = 0
    last_attempt = 0
    if completions:
        last = completions[-1]
        assert isinstance(last.event, StudyComplete)
        last_sequence, last_attempt = last.sequence, last.event.attempt
        if {(i.sop_instance_uid, i.digest) for i in last.event.instances} == {
            (i.sop_instance_uid, i.digest) for i in instances
        }:
            return AlreadyComplete(last_attempt)

    reason = "quiet period elapsed" if not completions else "new instances after completion"
    return Complete(
        StudyComplete(
            study_instance_uid=study_uid,
            attempt=last_attempt + 1,
            instances=instances,
            reason=reason,
            occurred_at=now,
        ),
        expected_last_subject_sequence=last_sequence,
    )


def latest_instances(received: Sequence[InstanceReceived]) -> tuple[InstanceRef, ...]:
    """The study's instances: the latest copy of each wins (a modality may resend one)."""
    latest: dict[str, InstanceReceived] = {}
    for event in sorted(received, key=lambda e: e.occurred_at):
        latest[event.sop_instance_uid] = event
    return tuple(e.ref() for e in sorted(latest.values(), key=lambda e: e.occurred_at))


class UnknownStudy(msgspec.Struct, frozen=True):
    pass


class InstancesGone(msgspec.Struct, frozen=True):
    reason: str


class Relaunchable(msgspec.Struct, frozen=True):
    instances: tuple[InstanceRef, ...]


def relaunch_check(history: Sequence[RecordedEvent]) -> UnknownStudy | InstancesGone | Relaunchable:
    """Can the study be sent again? Not when it never arrived, nor once its instances were
    removed (retention) after they last arrived."""
    received = [r.event for r in history if isinstance(r.event, InstanceReceived)]
    if not received:
        return UnknownStudy()
    last_arrival = max(r.sequence for r in history if isinstance(r.event, InstanceReceived))
    for r in history:
        if (
            isinstance(r.event, ObjectsExpired)
            and r.event.kind == "instances"
            and r.sequence > last_arrival
        ):
            return InstancesGone(r.event.reason)
    return Relaunchable(latest_instances(received))


def decide_relaunch(
    request: RelaunchRequested, history: Sequence[RecordedEvent], now: datetime
) -> Complete | AlreadyComplete | UnknownStudy | InstancesGone:
    """A person asked to send the study again: the StudyComplete of the next attempt, built
    from its InstanceReceived events, unless this request was already answered."""
    completions = [r for r in history if isinstance(r.event, StudyComplete)]
    for recorded in completions:
        assert isinstance(recorded.event, StudyComplete)
        if recorded.event.relaunch_id == request.relaunch_id:
            return AlreadyComplete(recorded.event.attempt)
    check = relaunch_check(history)
    if not isinstance(check, Relaunchable):
        return check
    last_sequence, last_attempt = 0, 0
    if completions:
        last = completions[-1].event
        assert isinstance(last, StudyComplete)
        last_sequence, last_attempt = completions[-1].sequence, last.attempt
    return Complete(
        StudyComplete(
            study_instance_uid=request.study_instance_uid,
            attempt=last_attempt + 1,
            instances=check.instances,
            reason=f"relaunched by {request.requested_by}",
            relaunch=True,
            requested_by=request.requested_by,
            relaunch_id=request.relaunch_id,
            cores=request.cores,
            occurred_at=now,
        ),
        expected_last_subject_sequence=last_sequence,
    )
