"""The handler runner against a real nats-server: redelivery, retries, poison messages."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeoutError

from pacsor.domain import events as ev
from pacsor.domain.retry import RetryPolicy
from pacsor.errors import InvalidInput, TransientError
from pacsor.jetstream.eventlog import ConcurrentUpdate, EventLog
from pacsor.jetstream.handler_runner import (
    ConsumerSpec,
    Delivery,
    Emit,
    Outcome,
    Retry,
    run_consumer,
)
from pacsor.jetstream.subjects import EVENTS_STREAM, events_filter
from pacsor.process.counters import HANDLER_ERRORS
from tests.harness import of_type, wait_for_event

STUDY = "1.2.826.0.1.3680043.8.498.77"
POLICY = RetryPolicy(initial_seconds=0.1, max_seconds=0.2, max_attempts=5)


def complete(attempt: int = 1, study: str = STUDY) -> ev.StudyComplete:
    return ev.StudyComplete(study_uid=study, attempt=attempt, instance_count=0, through_sequence=0)


def spec(name: str) -> ConsumerSpec[ev.StudyComplete]:
    return ConsumerSpec(
        durable=name,
        stream=EVENTS_STREAM,
        filter_subject=events_filter(ev.StudyComplete),
        decode=ev.decoder(ev.StudyComplete),
        ack_wait=5.0,
        concurrency=1,
    )


@contextlib.asynccontextmanager
async def consuming(nc: Client, name: str, handler: Any) -> AsyncIterator[None]:
    stop = asyncio.Event()
    js = nc.jetstream()
    task = asyncio.create_task(run_consumer(js, EventLog(js), spec(name), handler, stop, POLICY))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def uploaded(event: ev.StudyComplete) -> ev.Uploaded:
    return ev.Uploaded(
        study_uid=event.study_uid,
        core="c",
        attempt=event.attempt,
        instance_count=0,
    )


async def test_a_failing_handler_gets_the_message_again_and_emits_once(nc: Client) -> None:
    deliveries: list[int] = []
    done = asyncio.Event()

    async def flaky(event: ev.StudyComplete, delivery: Delivery) -> Outcome:
        deliveries.append(delivery.num_delivered)
        if delivery.num_delivered < 3:
            raise RuntimeError("crash mid-message")
        done.set()
        return Emit((uploaded(event),))

    log = EventLog(nc.jetstream())
    await log.publish(complete())
    async with consuming(nc, "flaky", flaky):
        await asyncio.wait_for(done.wait(), 10)
    assert deliveries == [1, 2, 3]
    kinds = [type(r.event).__name__ for r in await log.history(STUDY)]
    assert kinds == ["StudyComplete", "Uploaded"]


async def test_retry_redelivers_after_the_delay(nc: Client) -> None:
    seen: list[tuple[int, float]] = []
    done = asyncio.Event()
    loop = asyncio.get_running_loop()

    async def polling(event: ev.StudyComplete, delivery: Delivery) -> Outcome:
        seen.append((delivery.num_delivered, loop.time()))
        if delivery.num_delivered == 1:
            return Retry(0.5, "AI still running")
        done.set()
        return Emit()

    await EventLog(nc.jetstream()).publish(complete())
    async with consuming(nc, "polling", polling):
        await asyncio.wait_for(done.wait(), 10)
    assert [n for n, _ in seen] == [1, 2]
    assert seen[1][1] - seen[0][1] >= 0.45


async def test_an_unreadable_message_is_terminated_not_retried(nc: Client) -> None:
    handled = asyncio.Event()

    async def handler(event: ev.StudyComplete, delivery: Delivery) -> Outcome:
        handled.set()
        return Emit()

    js = nc.jetstream()
    # JetStream announces each terminated message; an acknowledged one has no advisory.
    terminated = await nc.subscribe(f"$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.{EVENTS_STREAM}.>")
    subject = f"pacsor.study.{STUDY.replace('.', '_')}.complete"
    bad = await js.publish(subject, b'{"type": "StudyComplete", "attempt": "one"}')
    good = await js.publish(subject, ev.encode(complete()))
    async with consuming(nc, "strict", handler):
        await asyncio.wait_for(handled.wait(), 10)
        advisory = json.loads((await terminated.next_msg(timeout=10)).data)
    assert (advisory["consumer"], advisory["stream_seq"]) == ("strict", bad.seq)
    info = await js.consumer_info(EVENTS_STREAM, "strict")
    assert info.num_redelivered == 0 and info.num_ack_pending == 0
    assert info.ack_floor.stream_seq == good.seq  # the good one was acknowledged
    with pytest.raises(NatsTimeoutError):  # and only the bad one terminated
        await terminated.next_msg(timeout=0.5)


async def test_expected_sequence_makes_a_decision_atomic(nc: Client) -> None:
    log = EventLog(nc.jetstream())
    study = "1.2.826.0.1.3680043.8.498.78"
    first = await log.publish(complete(1, study), expected_last_subject_sequence=0)
    with pytest.raises(ConcurrentUpdate):
        await log.publish(complete(2, study), expected_last_subject_sequence=0)
    await log.publish(complete(2, study), expected_last_subject_sequence=first)
    assert [r.event.attempt for r in await log.history(study)] == [1, 2]  # type: ignore[union-attr]
    # The same fact published again is stored once.
    assert await log.publish(complete(2, study)) == (await log.history(study))[-1].sequence


async def test_a_step_that_can_never_succeed_ends_in_a_recorded_failure(nc: Client) -> None:
    """The 3,000-instance study's symptom: an event over the 1 MB limit, retried forever
    before. Now, at the RETRY_MAX_ATTEMPTS-th try, StepFailed says why, and it stops."""
    deliveries: list[int] = []

    async def too_big(event: ev.StudyComplete, delivery: Delivery) -> Outcome:
        deliveries.append(delivery.num_delivered)
        huge = ev.Uploaded(
            study_uid=event.study_uid,
            core="c",
            attempt=1,
            instance_count=0,
            api_message="x" * 2_000_000,
        )
        return Emit((huge,))

    js = nc.jetstream()
    log = EventLog(js)
    study = "1.2.826.0.1.3680043.8.498.79"
    await log.publish(complete(study=study))
    async with consuming(nc, "too-big", too_big):
        failed = await wait_for_event(nc, study, of_type(ev.StepFailed), 20)
        await asyncio.sleep(1.0)  # longer than the backoff: no more tries come
    assert deliveries == [1, 2, 3, 4, 5]
    assert isinstance(failed, ev.StepFailed)
    assert (failed.step, failed.tries, failed.stream) == ("too-big", 5, EVENTS_STREAM)
    assert "MaxPayloadError" in failed.reason
    info = await js.consumer_info(EVENTS_STREAM, "too-big")
    assert info.num_ack_pending == 0 and info.num_pending == 0
    assert info.num_redelivered == 0  # terminated: nothing left to redeliver
    assert HANDLER_ERRORS.labels("too-big", "false")._value.get() == 5


async def test_the_steps_own_failure_event_and_transient_errors(nc: Client) -> None:
    """A step with a failure event of its own records it; a lost connection to JetStream
    is retried past RETRY_MAX_ATTEMPTS, as it only delays."""
    js = nc.jetstream()
    log = EventLog(js)
    study_a, study_b = "1.2.826.0.1.3680043.8.498.80", "1.2.826.0.1.3680043.8.498.81"
    tries: dict[str, int] = {}

    async def handler(event: ev.StudyComplete, delivery: Delivery) -> Outcome:
        tries[event.study_uid] = delivery.num_delivered
        if event.study_uid == study_a:
            raise KeyError("a bug")
        if delivery.num_delivered <= 7:
            raise NatsTimeoutError
        return Emit((uploaded(event),))

    own = dataclasses.replace(
        spec("own"),
        concurrency=2,
        failed=lambda event, reason, n: ev.UploadFailed(
            study_uid=event.study_uid,
            core="c",
            attempt=event.attempt,
            reason=reason,
            tries=n,
        ),
    )
    await log.publish(complete(study=study_a))
    await log.publish(complete(study=study_b))
    stop = asyncio.Event()
    task = asyncio.create_task(run_consumer(js, log, own, handler, stop, POLICY))
    try:
        failed = await wait_for_event(nc, study_a, of_type(ev.UploadFailed), 20)
        done = await wait_for_event(nc, study_b, of_type(ev.Uploaded), 20)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert isinstance(failed, ev.UploadFailed) and failed.tries == 5
    assert failed.reason == "KeyError: 'a bug'"
    assert isinstance(done, ev.Uploaded) and tries[study_b] == 8
    kinds = [type(r.event).__name__ for r in await log.history(study_b)]
    assert kinds == ["StudyComplete", "Uploaded"]


async def test_a_permanent_error_is_recorded_at_once_and_a_transient_one_retried(
    nc: Client,
) -> None:
    """The runner reads pacsor.errors: trying again cannot fix invalid input, so its failure
    is recorded at the first delivery; a transient error goes through the backoff."""
    js = nc.jetstream()
    log = EventLog(js)
    study_a, study_b = "1.2.826.0.1.3680043.8.498.82", "1.2.826.0.1.3680043.8.498.83"
    tries: dict[str, list[int]] = {study_a: [], study_b: []}

    async def handler(event: ev.StudyComplete, delivery: Delivery) -> Outcome:
        tries[event.study_uid].append(delivery.num_delivered)
        if event.study_uid == study_a:
            raise InvalidInput("not DICOM")
        raise TransientError("the peer is down")

    await log.publish(complete(study=study_a))
    await log.publish(complete(study=study_b))
    async with consuming(nc, "by-kind", handler):
        permanent = await wait_for_event(nc, study_a, of_type(ev.StepFailed), 20)
        transient = await wait_for_event(nc, study_b, of_type(ev.StepFailed), 20)
    assert isinstance(permanent, ev.StepFailed) and permanent.tries == 1
    assert permanent.reason == "InvalidInput: not DICOM"
    assert tries[study_a] == [1]
    assert isinstance(transient, ev.StepFailed) and transient.tries == POLICY.max_attempts
    assert tries[study_b] == list(range(1, POLICY.max_attempts + 1))
