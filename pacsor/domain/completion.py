"""When is a study complete? A pure decision from its event history.

A study is complete when no instance arrived for the quiet period. The server-side timer only
wakes the decision up; the decision itself is taken from the events, so a timer that fires
early, late or twice can never complete a study twice or too soon.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import msgspec

from pacsor.domain.events import InstanceReceived, RecordedEvent, StudyComplete


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

    # The latest copy of each instance wins (a modality may resend a corrected one).
    latest: dict[str, InstanceReceived] = {}
    for event in sorted(received, key=lambda e: e.occurred_at):
        latest[event.sop_instance_uid] = event
    instances = tuple(e.ref() for e in sorted(latest.values(), key=lambda e: e.occurred_at))

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
