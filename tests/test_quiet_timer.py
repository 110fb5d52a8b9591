"""The quiet timer against a real nats-server: which instance arms the study's schedule."""

from __future__ import annotations

from datetime import timedelta

import msgspec
import pytest
from nats.aio.client import Client
from nats.js.errors import NotFoundError
from pacsor.consumers.quiet_timer import arm_quiet_timer
from pydicom.uid import generate_uid

from pacsor.domain import events as ev
from pacsor.jetstream.eventlog import EventLog
from pacsor.jetstream.handler_runner import Delivery, Emit
from pacsor.jetstream.quiet_timers import QuietElapsed, QuietTimers
from pacsor.jetstream.subjects import TIMERS_STREAM, event_subject, quiet_schedule_subject

QUIET = timedelta(seconds=60)  # never fires during the test


def received(study: str) -> ev.InstanceReceived:
    sop = str(generate_uid())
    return ev.InstanceReceived(
        study_uid=study,
        series_instance_uid=f"{study}.1",
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.7",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        object_name=f"{study}/{sop}/00",
        size=10,
        digest="00",
    )


async def test_an_instance_overtaken_by_a_later_one_leaves_the_arming_to_it(nc: Client) -> None:
    """In a backlog, the instances already followed by another arm nothing (each would fire
    the timer at once, past its time); the study's last instance arms it."""
    js = nc.jetstream()
    events, timers = EventLog(js), QuietTimers(js)
    study = str(generate_uid())
    first, last = received(study), received(study)
    sequences = [await events.publish(first), await events.publish(last)]

    async def arm(event: ev.InstanceReceived, sequence: int) -> None:
        delivery = Delivery(event_subject(event), sequence, 1)
        assert await arm_quiet_timer(event, delivery, timers, events, QUIET) == Emit()

    await arm(first, sequences[0])
    with pytest.raises(NotFoundError):
        await js.get_last_msg(TIMERS_STREAM, quiet_schedule_subject(study))
    await arm(last, sequences[1])
    schedule = await js.get_last_msg(TIMERS_STREAM, quiet_schedule_subject(study))
    assert schedule.data is not None
    armed = msgspec.json.decode(schedule.data, type=QuietElapsed)
    assert armed.armed_for == last.occurred_at + QUIET
