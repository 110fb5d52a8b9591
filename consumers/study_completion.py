"""Quiet timer elapsed → StudyComplete (or wait longer, or nothing).

The decision is pacsor.domain.completion.decide_completion over the study's events and the
SCPs' holds (associations still sending it); the StudyComplete is written with an
expected-last-subject-sequence, so two replicas handling the same timer cannot both complete
the study.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from pacsor.domain.completion import AlreadyComplete, Complete, WaitUntil, decide_completion
from pacsor.domain.events import utc_now
from pacsor.jetstream.eventlog import EventLog
from pacsor.jetstream.handler_runner import ConsumerSpec, Delivery, Emit, Outcome
from pacsor.jetstream.holds import Holds
from pacsor.jetstream.quiet_timers import QuietElapsed, QuietTimers, decode_elapsed
from pacsor.jetstream.subjects import QUIET_ELAPSED_FILTER, TIMERS_STREAM

log = logging.getLogger("pacsor.domain.completion")

CONSUMER: ConsumerSpec[QuietElapsed] = ConsumerSpec(
    durable="study-completion",
    stream=TIMERS_STREAM,
    filter_subject=QUIET_ELAPSED_FILTER,
    decode=decode_elapsed,
    ack_wait=15.0,
    concurrency=4,
    description="quiet timer elapsed -> StudyComplete",
)


async def complete_study(
    elapsed: QuietElapsed,
    delivery: Delivery,
    events: EventLog,
    timers: QuietTimers,
    holds: Holds,
    quiet: timedelta,
) -> Outcome:
    study = elapsed.study_instance_uid
    history = await events.history(study)
    decision = decide_completion(
        study, history, utc_now(), quiet, await holds.of_study(study), elapsed.holds_checked_at
    )
    if isinstance(decision, Complete):
        return Emit((decision.event,), decision.expected_last_subject_sequence)
    if isinstance(decision, WaitUntil):
        # An instance arrived after this timer was armed (its own timer may not be armed yet),
        # or an association sending the study is still open.
        await timers.arm(study, decision.at, decision.holds_checked_at)
        log.info(
            "study still receiving",
            extra={"study": study, "until": decision.at.isoformat(), "reason": decision.reason},
        )
    elif isinstance(decision, AlreadyComplete):
        log.info("study already complete", extra={"study": study, "attempt": decision.attempt})
    return Emit()
