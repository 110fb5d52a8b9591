"""When is a study complete, and which instances make an attempt? Pure decisions from events.

A study is complete when no instance arrived for the quiet period and no association that is
sending it is still open (an SCP's hold, see Hold). The server-side timer only wakes the
decision up; the decision itself is taken from the events and the holds, so a timer that fires
early, late or twice can never complete a study twice or too soon.

An attempt's instances are not listed in its StudyComplete (a study may have tens of thousands):
they are the study's InstanceReceived events up to the attempt's `through_sequence`, the latest
copy of each SOP Instance UID (attempt_instances). Whoever builds an attempt (the quiet period,
a relaunch) and whoever reads one (the uploader) use that one function.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
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

# Why a completion waits.
QUIET_PERIOD = "quiet period"
ASSOCIATION_OPEN = "an association sending it is open"
CHECKING_STALE_HOLD = "checking a stale hold"
# An SCP refreshes the hold of each study it is receiving this often...
HOLD_HEARTBEAT = timedelta(seconds=2)
# ...so a hold not refreshed for this long may have been left by an SCP that died. It is
# presumed dead only once it has stayed unrefreshed for another HOLD_LEASE after that was
# first seen: after an outage of JetStream, the SCPs refresh their holds within a heartbeat,
# while the timers that fell due during the outage fire at once.
HOLD_LEASE = timedelta(seconds=10)


class Hold(msgspec.Struct, frozen=True, kw_only=True):
    """One SCP's (the holder's) open associations that have sent instances of a study.

    Written by the SCP when such an association opens or closes and every HOLD_HEARTBEAT while
    one is open; `associations` 0 with `released_at` once the last one closed.
    """

    holder: str
    associations: int
    heartbeat_at: datetime
    released_at: datetime | None = None


class Complete(msgspec.Struct, frozen=True):
    event: StudyComplete
    expected_last_subject_sequence: int  # the last StudyComplete's sequence, 0 if none


class WaitUntil(msgspec.Struct, frozen=True):
    at: datetime
    reason: str = QUIET_PERIOD
    # Set when a hold looked stale: the next look treats it as dead if still not refreshed.
    holds_checked_at: datetime | None = None

    @property
    def held(self) -> bool:
        """Waiting for an association that is still open (or for its SCP's lease), not for
        the quiet period: the SCP wakes the study itself when the association closes."""
        return self.reason in (ASSOCIATION_OPEN, CHECKING_STALE_HOLD)


class AlreadyComplete(msgspec.Struct, frozen=True):
    attempt: int


class NothingReceived(msgspec.Struct, frozen=True):
    pass


Decision = Complete | WaitUntil | AlreadyComplete | NothingReceived


def attempt_instances(
    received: Iterable[RecordedEvent], through_sequence: int
) -> tuple[InstanceRef, ...]:
    """The instances of an attempt: of the study's InstanceReceived events up to
    `through_sequence`, the latest copy of each SOP Instance UID (a modality may resend a
    corrected one), in the order those copies were recorded. Other events are ignored."""
    latest: dict[str, tuple[int, InstanceReceived]] = {}
    for record in received:
        event = record.event
        if isinstance(event, InstanceReceived) and record.sequence <= through_sequence:
            current = latest.get(event.sop_instance_uid)
            if current is None or record.sequence > current[0]:
                latest[event.sop_instance_uid] = (record.sequence, event)
    return tuple(event.ref() for _, event in sorted(latest.values(), key=lambda p: p[0]))


def next_attempt(
    study_uid: str, history: Sequence[RecordedEvent], now: datetime, reason: str
) -> Complete | NothingReceived:
    """StudyComplete of the next attempt, with every instance received so far."""
    received = [r.sequence for r in history if isinstance(r.event, InstanceReceived)]
    if not received:
        return NothingReceived()
    through = max(received)
    completions = [r for r in history if isinstance(r.event, StudyComplete)]
    last_sequence = completions[-1].sequence if completions else 0
    last_attempt = max(
        (c.event.attempt for c in completions if isinstance(c.event, StudyComplete)), default=0
    )
    return Complete(
        StudyComplete(
            study_uid=study_uid,
            attempt=last_attempt + 1,
            instance_count=len(attempt_instances(history, through)),
            through_sequence=through,
            reason=reason,
            occurred_at=now,
        ),
        expected_last_subject_sequence=last_sequence,
    )


def decide_from_latest(
    last_received: RecordedEvent | None,
    last_complete: RecordedEvent | None,
    now: datetime,
    quiet: timedelta,
) -> WaitUntil | AlreadyComplete | None:
    """The cheap first look, from the study's last InstanceReceived and last StudyComplete
    alone; None when the whole history must decide.

    An arrival within the quiet period means the study is still arriving; no arrival after the
    last attempt's `through_sequence` means that attempt holds every instance. Timers fire
    many times while a large study's arrivals are processed late and out of order (each re-arms
    the timer, for an earlier time too): this keeps those firings from each reading a history
    of thousands of instances.
    """
    if last_received is None or not isinstance(last_received.event, InstanceReceived):
        return None
    until = last_received.event.occurred_at + quiet
    if until > now:
        return WaitUntil(until)
    complete = last_complete.event if last_complete is not None else None
    if isinstance(complete, StudyComplete) and complete.through_sequence >= last_received.sequence:
        return AlreadyComplete(complete.attempt)
    return None


def redelivery_delay(wait: WaitUntil, now: datetime, within: timedelta) -> float | None:
    """Seconds to wait for `wait` by redelivering the fired timer's message, when it ends
    within `within` (a timer armed early, or one that fired just before an arrival's quiet
    period ended); None: arm the timer again (a longer wait, or a stale hold's first look,
    whose time the timer's payload must carry)."""
    if wait.holds_checked_at is not None or wait.at - now > within:
        return None
    return max((wait.at - now).total_seconds(), 0.001)


def decide_completion(
    study_uid: str,
    history: Sequence[RecordedEvent],
    now: datetime,
    quiet: timedelta,
    holds: Sequence[Hold] = (),
    holds_checked_at: datetime | None = None,
) -> Decision:
    received = [r for r in history if isinstance(r.event, InstanceReceived)]
    if not received:
        return NothingReceived()

    # The quiet period runs from the last arrival, or from when the last association that was
    # sending the study closed (a sender may reconnect to resend what was refused).
    last_arrival = max(r.event.occurred_at for r in received)
    releases = [h.released_at for h in holds if h.associations == 0 and h.released_at]
    quiet_from = max([last_arrival, *releases])
    if quiet_from + quiet > now:
        return WaitUntil(quiet_from + quiet)

    open_holds = [h for h in holds if h.associations > 0]
    if any(h.heartbeat_at + HOLD_LEASE > now for h in open_holds):
        return WaitUntil(now + max(quiet, HOLD_LEASE), ASSOCIATION_OPEN)
    unverified = [
        h for h in open_holds if holds_checked_at is None or h.heartbeat_at >= holds_checked_at
    ]
    if unverified:
        return WaitUntil(now + HOLD_LEASE, CHECKING_STALE_HOLD, holds_checked_at=now)

    completions = [r for r in history if isinstance(r.event, StudyComplete)]
    if completions:
        last = completions[-1]
        assert isinstance(last.event, StudyComplete)
        before = attempt_instances(received, last.event.through_sequence)
        latest = attempt_instances(received, max(r.sequence for r in received))
        if {(i.sop_instance_uid, i.digest) for i in before} == {
            (i.sop_instance_uid, i.digest) for i in latest
        }:
            return AlreadyComplete(last.event.attempt)

    reason = "quiet period elapsed" if not completions else "new instances after completion"
    return next_attempt(study_uid, history, now, reason)


class UnknownStudy(msgspec.Struct, frozen=True):
    pass


class InstancesGone(msgspec.Struct, frozen=True):
    reason: str


class Relaunchable(msgspec.Struct, frozen=True):
    instances: tuple[InstanceRef, ...]


def relaunch_check(history: Sequence[RecordedEvent]) -> UnknownStudy | InstancesGone | Relaunchable:
    """Can the study be sent again? Not when it never arrived, nor once its instances were
    removed (retention) after they last arrived."""
    received = [r.sequence for r in history if isinstance(r.event, InstanceReceived)]
    if not received:
        return UnknownStudy()
    last_arrival = max(received)
    for r in history:
        if (
            isinstance(r.event, ObjectsExpired)
            and r.event.kind == "instances"
            and r.sequence > last_arrival
        ):
            return InstancesGone(r.event.reason)
    return Relaunchable(attempt_instances(history, last_arrival))


def decide_relaunch(
    request: RelaunchRequested, history: Sequence[RecordedEvent], now: datetime
) -> Complete | AlreadyComplete | UnknownStudy | InstancesGone | NothingReceived:
    """A person asked to send the study again: the StudyComplete of the next attempt, with
    every instance received so far, unless this request was already answered."""
    for recorded in history:
        event = recorded.event
        if isinstance(event, StudyComplete) and event.relaunch_id == request.relaunch_id:
            return AlreadyComplete(event.attempt)
    check = relaunch_check(history)
    if not isinstance(check, Relaunchable):
        return check
    decision = next_attempt(
        request.study_uid, history, now, f"relaunched by {request.requested_by}"
    )
    if not isinstance(decision, Complete):
        return decision
    relaunched = msgspec.structs.replace(
        decision.event,
        relaunch=True,
        requested_by=request.requested_by,
        relaunch_id=request.relaunch_id,
        cores=request.cores,
    )
    return Complete(relaunched, decision.expected_last_subject_sequence)
