"""Runs a handler as a durable JetStream pull consumer.

A handler is a small async function from one message to an Outcome: events to emit, "try
again later", or "part done" (Continue: checkpoint events to record before the handler is
called again, within the same delivery, with what it learnt in `Delivery.resume`). A handler
only returns events; the runner does the JetStream part: it publishes the emitted events (each with
its idempotency key) *before* acknowledging the message, so a crash anywhere means a
redelivery and never a lost step; it turns Retry into a NAK with delay, keeps long handlers
alive with in-progress acks, and logs every error with the study it concerns.

A handler error is retried with the retry policy's backoff. A PacsorError that is not
retryable (pacsor.errors) ends at once; one that is not a lost connection to JetStream (which
only delays, and after which nothing could be recorded anyway) ends at the
RETRY_MAX_ATTEMPTS-th delivery, in a failure event for that study and step (the step's own,
from `ConsumerSpec.failed`, else StepFailed with the error) and the message is terminated:
nothing is retried forever unseen. An event too large to publish (MaxPayloadError) can never
succeed: it is that failure event at once. Each error is logged, counted
(pacsor.process.counters) and shows in the consumer's redelivery count.

Several processes running the same handler share its durable consumer, and so the work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, Literal, TypeVar

import msgspec
from nats import errors as nats_errors
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError, ServiceUnavailableError

from pacsor.domain.events import Event, StepFailed, StepFailure
from pacsor.domain.retry import RetryPolicy
from pacsor.errors import PacsorError, UndeclaredEvent
from pacsor.jetstream.eventlog import ConcurrentUpdate, EventLog
from pacsor.jetstream.liveness import Heartbeat
from pacsor.process.counters import HANDLER_ERRORS, STEPS_FAILED

log = logging.getLogger("pacsor.runner")

# Messages being handled now, per durable consumer, in this process: what a stop waits for.
IN_FLIGHT: Counter[str] = Counter()


def in_flight() -> dict[str, int]:
    """The consumers of this process that are handling a message now, and how many."""
    return {durable: n for durable, n in IN_FLIGHT.items() if n > 0}


M = TypeVar("M")

# JetStream unreachable or unavailable for now: retried until it answers, never given up on.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    TimeoutError,  # a JetStream acknowledgement awaited with a deadline (nats' own subclasses it)
    nats_errors.TimeoutError,
    nats_errors.ConnectionClosedError,
    nats_errors.ConnectionReconnectingError,
    nats_errors.NoRespondersError,
    nats_errors.NoServersError,
    nats_errors.StaleConnectionError,
    nats_errors.OutboundBufferLimitError,
    ServiceUnavailableError,
)


class Emit(msgspec.Struct, frozen=True):
    """Done: publish these events (possibly none), then acknowledge."""

    events: tuple[Event, ...] = ()
    expected_last_subject_sequence: int | None = None


class Retry(msgspec.Struct, frozen=True):
    """Not done yet: publish `events` (the progress made), then redeliver after `delay`."""

    delay: float
    reason: str
    events: tuple[Event, ...] = ()


class Continue(msgspec.Struct, frozen=True):
    """Part done: publish these checkpoint events, then call the handler again at once with
    `resume`. A crash after a checkpoint redelivers the message; the handler then resumes
    from the checkpoints recorded, with `resume` None."""

    events: tuple[Event, ...]
    resume: Any = None


Outcome = Emit | Retry | Continue


class Delivery(msgspec.Struct, frozen=True):
    """What the handler may know about this delivery of the message."""

    subject: str
    stream_sequence: int
    num_delivered: int
    # What the handler's previous Continue handed on (None on a new delivery).
    resume: Any = None


@dataclass(frozen=True)
class ConsumerSpec(Generic[M]):
    durable: str
    stream: str
    filter_subject: str
    decode: Callable[[bytes, str], M]
    ack_wait: float = 60.0
    max_ack_pending: int = 64
    concurrency: int = 4
    description: str = ""
    # "all": a new consumer starts at the first event still in the stream (the pipeline must
    # not miss events published before it first ran); "new": at the time it is first created
    # (a destination added later must not receive every past study's results).
    start: Literal["all", "new"] = "all"
    study_of: Callable[[M], str] = field(default=lambda m: getattr(m, "study_uid", ""))
    # The step's own failure event from (message, error, tries), recorded when the handler
    # keeps failing; None: StepFailed.
    failed: Callable[[M, str, int], Event] | None = None
    # The event types the handler may return (its role on NATS grants no others); None: any.
    emits: frozenset[type[Event]] | None = None

    def declared(self, events: Sequence[Event]) -> Sequence[Event]:
        """`events`, when the step declares every one of their types."""
        undeclared = sorted(
            {
                type(e).__name__
                for e in events
                if self.emits is not None and type(e) not in self.emits
            }
        )
        if undeclared:
            raise UndeclaredEvent(
                f"consumer {self.durable} returned {', '.join(undeclared)}, which its step does "
                "not declare in `emits`"
            )
        return events


Handler = Callable[[M, Delivery], Awaitable[Outcome]]


async def ensure_consumer(js: JetStreamContext, spec: ConsumerSpec[M]) -> None:
    """Create the durable consumer, or update it keeping where it started."""
    try:
        existing: ConsumerConfig | None = (await js.consumer_info(spec.stream, spec.durable)).config
    except NotFoundError:
        existing = None
    if existing is not None:
        deliver_policy, start_time = existing.deliver_policy, existing.opt_start_time
    elif spec.start == "new":
        deliver_policy, start_time = DeliverPolicy.BY_START_TIME, datetime.now(UTC)
    else:
        deliver_policy, start_time = DeliverPolicy.ALL, None
    config = ConsumerConfig(
        durable_name=spec.durable,
        description=spec.description or None,
        filter_subject=spec.filter_subject,
        deliver_policy=deliver_policy,
        opt_start_time=start_time,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=spec.ack_wait,
        # Unbounded on purpose: polling redelivers as long as the AI runs. Handler errors are
        # bounded by the runner (RETRY_MAX_ATTEMPTS, then a failure event), retries by each
        # handler's policy.
        max_deliver=-1,
        max_ack_pending=spec.max_ack_pending,
    )
    await js.add_consumer(spec.stream, config)


async def run_consumer(
    js: JetStreamContext,
    events: EventLog,
    spec: ConsumerSpec[M],
    handler: Handler[M],
    stop: asyncio.Event,
    error_policy: RetryPolicy,
    heartbeat: Heartbeat | None = None,
) -> None:
    """Process messages until `stop` is set; `heartbeat` hears of every fetch round."""
    await ensure_consumer(js, spec)
    sub = await js.pull_subscribe_bind(spec.durable, spec.stream)
    log.info("consumer started", extra={"consumer": spec.durable, "filter": spec.filter_subject})

    async def worker() -> None:
        while not stop.is_set():
            try:
                msgs = await sub.fetch(1, timeout=1.0)
            except (TimeoutError, NatsTimeoutError):
                if heartbeat is not None:
                    heartbeat.beat(spec.stream, spec.durable)
                continue
            except Exception:  # e.g. disconnected: logged, then the loop tries again
                log.warning("fetch failed", extra={"consumer": spec.durable}, exc_info=True)
                await asyncio.sleep(1.0)
                continue
            if heartbeat is not None:
                heartbeat.beat(spec.stream, spec.durable)
            for msg in msgs:
                IN_FLIGHT[spec.durable] += 1
                try:
                    await _process(msg, spec, handler, events, error_policy)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    # Acknowledging failed (connection lost): the message is redelivered.
                    log.warning("ack failed", extra={"consumer": spec.durable}, exc_info=True)
                finally:
                    IN_FLIGHT[spec.durable] -= 1

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(spec.concurrency):
                group.create_task(worker())
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def _process(
    msg: Msg,
    spec: ConsumerSpec[M],
    handler: Handler[M],
    events: EventLog,
    error_policy: RetryPolicy,
) -> None:
    meta = msg.metadata
    delivery = Delivery(msg.subject, meta.sequence.stream, meta.num_delivered)
    try:
        message = spec.decode(msg.data, msg.subject)
    except (msgspec.MsgspecError, ValueError) as err:
        # A malformed message can never succeed; terminate it, it stays readable in the stream.
        log.error(
            "unreadable message terminated",
            extra={"consumer": spec.durable, "seq": delivery.stream_sequence, "error": str(err)},
        )
        await msg.term()
        return

    study = spec.study_of(message)
    heartbeat = asyncio.create_task(_keep_alive(msg, spec.ack_wait))
    try:
        outcome = await handler(message, delivery)
        while isinstance(outcome, Continue):
            for event in spec.declared(outcome.events):
                await events.publish(event)
            resumed = msgspec.structs.replace(delivery, resume=outcome.resume)
            outcome = await handler(message, resumed)
        if isinstance(outcome, Emit):
            for event in spec.declared(outcome.events):
                await events.publish(event, outcome.expected_last_subject_sequence)
            await msg.ack_sync()
        else:
            for event in spec.declared(outcome.events):
                await events.publish(event)
            log.info(
                "retry later",
                extra={
                    "consumer": spec.durable,
                    "study": study,
                    "reason": outcome.reason,
                    "delay": outcome.delay,
                    "delivery": delivery.num_delivered,
                },
            )
            await msg.nak(delay=outcome.delay)
    except ConcurrentUpdate as err:
        log.info("concurrent update, deciding again", extra={"study": study, "error": str(err)})
        await msg.nak()
    except nats_errors.MaxPayloadError as err:
        # An event too large to publish is too large on every try: recorded as failed at once.
        HANDLER_ERRORS.labels(spec.durable, "false").inc()
        await _give_up(msg, message, delivery, spec, events, study, err)
    except asyncio.CancelledError:
        # Stopping: leave the message unacknowledged; it is redelivered after ack_wait.
        raise
    except Exception as err:
        transient = isinstance(err, TRANSIENT_ERRORS)
        HANDLER_ERRORS.labels(spec.durable, str(transient).lower()).inc()
        tries = delivery.num_delivered
        # pacsor's own error says whether trying again can help; anything else may be passing.
        permanent = isinstance(err, PacsorError) and not err.retryable
        if permanent or (not transient and tries >= error_policy.max_attempts):
            await _give_up(msg, message, delivery, spec, events, study, err)
            return
        delay = error_policy.delay_after(tries) or error_policy.max_seconds
        log.warning(
            "handler failed; the message will be redelivered",
            extra={
                "consumer": spec.durable,
                "study": study,
                "delay": delay,
                "delivery": tries,
                "transient": transient,
            },
            exc_info=True,
        )
        await msg.nak(delay=delay)
    finally:
        heartbeat.cancel()


async def _give_up(
    msg: Msg,
    message: M,
    delivery: Delivery,
    spec: ConsumerSpec[M],
    events: EventLog,
    study: str,
    err: Exception,
) -> None:
    """Record the step's failure with the error, then terminate the message."""
    reason = f"{type(err).__name__}: {err}"[:2000]
    tries = delivery.num_delivered
    if spec.failed is not None:
        failure = spec.failed(message, reason, tries)
    else:
        failure = StepFailed(
            study_uid=study,
            step=spec.durable,
            stream=spec.stream,
            message_sequence=delivery.stream_sequence,
            reason=reason,
            tries=tries,
        )
    log.error(
        "handler failed on its last try; the step is recorded as failed",
        extra={"consumer": spec.durable, "study": study, "tries": tries, "error": reason},
        exc_info=err,
    )
    await events.publish(failure)
    await msg.term()
    STEPS_FAILED.labels(spec.durable).inc()


async def _keep_alive(msg: Msg, ack_wait: float) -> None:
    """Tell the server the message is still being worked on, so it is not redelivered."""
    while True:
        await asyncio.sleep(ack_wait / 3)
        await msg.in_progress()


def retry_or_fail(
    delivery: Delivery,
    policy: RetryPolicy,
    reason: str,
    retryable: bool,
    failed: StepFailure,
    at_least: float | None = None,
    progress: tuple[Event, ...] = (),
) -> Outcome:
    """Retry with the policy's backoff, or emit `failed` with the tries made when none is left;
    either way the `progress` made before the failure is recorded first."""
    delay = policy.delay_after(delivery.num_delivered, at_least) if retryable else None
    if delay is None:
        return Emit((*progress, msgspec.structs.replace(failed, tries=delivery.num_delivered)))
    return Retry(delay, reason, progress)
