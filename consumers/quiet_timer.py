"""InstanceReceived → (re)arm the study's quiet-period timer.

Each new instance pushes the study's completion back to its arrival + STUDY_QUIET_SECONDS.
The time comes from the event, not the clock of this handler, so a backlog or a redelivery
arms the same timer. An instance recorded after this one arms it later, in its own delivery
by this consumer: in a backlog, arming for every instance already overtaken would fire the
timer once each, past its time, and each firing is a completion decision.
"""

from __future__ import annotations

from datetime import timedelta
from functools import partial

from pacsor.domain import events as ev
from pacsor.jetstream.eventlog import EventLog
from pacsor.jetstream.handler_runner import Delivery, Emit, Outcome
from pacsor.jetstream.nats_auth import Publishes
from pacsor.jetstream.quiet_timers import QuietTimers
from pacsor.jetstream.subjects import QUIET_TIMER_CONSUMER, events_filter
from pacsor.process.runtime import (
    Component,
    FanOut,
    Runtime,
    Started,
    Step,
    emitted,
    run_steps,
)

STEP = Step(
    consumes=ev.InstanceReceived,
    fan_out=FanOut.ONCE,
    durable=QUIET_TIMER_CONSUMER,
    filter_subject=events_filter(ev.InstanceReceived),
    description="InstanceReceived -> arm the study's quiet-period timer",
    emits=(ev.StepFailed,),
    max_ack_pending=1024,
    concurrency=8,
)


async def arm_quiet_timer(
    event: ev.InstanceReceived,
    delivery: Delivery,
    timers: QuietTimers,
    events: EventLog,
    quiet: timedelta,
) -> Outcome:
    latest = await events.latest(event.study_uid, ev.InstanceReceived)
    if latest is not None and latest.sequence > delivery.stream_sequence:
        return Emit()  # overtaken: the later instance's delivery arms the timer
    await timers.arm(event.study_uid, event.occurred_at + quiet)
    return Emit()


async def run(rt: Runtime, started: Started) -> None:
    arm = partial(
        arm_quiet_timer, timers=rt.timers, events=rt.events, quiet=rt.settings.quiet_period
    )
    await run_steps(rt, started, [(STEP, lambda _: arm)])


COMPONENT = Component(
    "quiet-timer",
    "InstanceReceived -> re-arms the study's quiet-period timer",
    run,
    publishes=Publishes(events=emitted(STEP), quiet_timers=True),
)
