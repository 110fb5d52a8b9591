"""Quiet timer elapsed → StudyComplete (or wait longer, or nothing);
RelaunchRequested → StudyComplete of the next attempt.

The decisions are pacsor.domain.completion.decide_completion (over the study's events and
the SCPs' holds: associations still sending it) and decide_relaunch; the StudyComplete is
written with an expected-last-subject-sequence, so two replicas handling the same timer or
request cannot both complete the study.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from functools import partial

from pacsor.domain import events as ev
from pacsor.domain.completion import (
    AlreadyComplete,
    Complete,
    Decision,
    WaitUntil,
    decide_completion,
    decide_from_latest,
    decide_relaunch,
    redelivery_delay,
)
from pacsor.domain.events import utc_now
from pacsor.jetstream.eventlog import EventLog
from pacsor.jetstream.handler_runner import Delivery, Emit, Outcome, Retry
from pacsor.jetstream.holds import Holds
from pacsor.jetstream.nats_auth import Publishes
from pacsor.jetstream.quiet_timers import QuietElapsed, QuietTimers, decode_elapsed
from pacsor.jetstream.subjects import (
    COMPLETION_CONSUMER,
    QUIET_ELAPSED_FILTER,
    RELAUNCH_DURABLE,
    RELAUNCH_FILTER,
    TIMERS_STREAM,
)
from pacsor.process.runtime import (
    Component,
    FanOut,
    Runtime,
    Started,
    Step,
    emitted,
    run_steps,
)

log = logging.getLogger("pacsor.domain.completion")

STEP = Step(
    consumes=QuietElapsed,
    fan_out=FanOut.ONCE,
    durable=COMPLETION_CONSUMER,
    stream=TIMERS_STREAM,
    filter_subject=QUIET_ELAPSED_FILTER,
    decode=decode_elapsed,
    description="quiet timer elapsed -> StudyComplete",
    emits=(ev.StudyComplete, ev.StepFailed),
)


async def complete_study(
    elapsed: QuietElapsed,
    delivery: Delivery,
    events: EventLog,
    timers: QuietTimers,
    holds: Holds,
    quiet: timedelta,
) -> Outcome:
    study = elapsed.study_uid
    decision: Decision | None = decide_from_latest(
        await events.latest(study, ev.InstanceReceived),
        await events.latest(study, ev.StudyComplete),
        utc_now(),
        quiet,
    )
    if decision is None:
        history = await events.history(study)
        decision = decide_completion(
            study, history, utc_now(), quiet, await holds.of_study(study), elapsed.holds_checked_at
        )
    if isinstance(decision, Complete):
        return Emit((decision.event,), decision.expected_last_subject_sequence)
    if isinstance(decision, WaitUntil):
        # The timer fired early on purpose (quiet_timers.FIRES_EARLY), or an instance arrived
        # after it was armed (its own timer may not be armed yet), or an association sending
        # the study is still open. A short wait is this message's redelivery, to the
        # millisecond; a longer one a timer armed again.
        delay = redelivery_delay(decision, utc_now(), 2 * timers.early)
        if delay is not None:
            return Retry(delay, decision.reason)
        await timers.arm(study, decision.at, decision.holds_checked_at, decision.held)
        log.info(
            "study still receiving",
            extra={"study": study, "until": decision.at.isoformat(), "reason": decision.reason},
        )
    elif isinstance(decision, AlreadyComplete):
        log.info("study already complete", extra={"study": study, "attempt": decision.attempt})
    return Emit()


RELAUNCH_STEP = Step(
    consumes=ev.RelaunchRequested,
    fan_out=FanOut.ONCE,
    durable=RELAUNCH_DURABLE,
    filter_subject=RELAUNCH_FILTER,
    description="RelaunchRequested -> StudyComplete of the next attempt",
    emits=(ev.StudyComplete, ev.StepFailed),
    concurrency=2,
)


async def relaunch_study(
    request: ev.RelaunchRequested, delivery: Delivery, events: EventLog
) -> Outcome:
    study = request.study_uid
    decision = decide_relaunch(request, await events.history(study), utc_now())
    if isinstance(decision, Complete):
        return Emit((decision.event,), decision.expected_last_subject_sequence)
    log.warning(
        "relaunch not done",
        extra={"study": study, "relaunch": request.relaunch_id, "why": type(decision).__name__},
    )
    return Emit()


async def run(rt: Runtime, started: Started) -> None:
    complete = partial(
        complete_study,
        events=rt.events,
        timers=rt.timers,
        holds=rt.holds,
        quiet=rt.settings.quiet_period,
    )
    relaunch = partial(relaunch_study, events=rt.events)
    await run_steps(rt, started, [(STEP, lambda _: complete), (RELAUNCH_STEP, lambda _: relaunch)])


COMPONENT = Component(
    "completion",
    "quiet timer elapsed, RelaunchRequested -> StudyComplete",
    run,
    # A study whose sender still holds an association is looked at again later.
    publishes=Publishes(events=emitted(STEP, RELAUNCH_STEP), quiet_timers=True),
)
