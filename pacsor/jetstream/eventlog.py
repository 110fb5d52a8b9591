"""Publishing events to, and reading a study's history from, the PACSOR stream."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator

import msgspec
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError, NotFoundError

from pacsor.domain import events as ev
from pacsor.domain.event_text import detail
from pacsor.domain.events import RecordedEvent
from pacsor.errors import TransientError
from pacsor.jetstream.snapshot import messages_now
from pacsor.jetstream.subjects import (
    ALL_EVENTS,
    EVENTS_STREAM,
    EXPECTED_LAST_SUBJECT_SEQUENCE_HEADER,
    MSG_ID_HEADER,
    event_subject,
    received_subject,
    study_events,
    study_subjects,
)

log = logging.getLogger("pacsor.events")

WRONG_LAST_SEQUENCE = 10071  # JetStream's error code for a failed expected-sequence check

__all__ = ["ConcurrentUpdate", "EventLog", "RecordedEvent"]


class ConcurrentUpdate(TransientError):
    """Another writer changed the subject first: re-read the history and decide again."""


class EventLog:
    def __init__(self, js: JetStreamContext, timeout: float = 10.0) -> None:
        self._js = js
        self._timeout = timeout

    async def publish(
        self, event: ev.Event, expected_last_subject_sequence: int | None = None
    ) -> int:
        """Publish `event` once (Nats-Msg-Id); returns its stream sequence.

        With `expected_last_subject_sequence` the write only happens if the event's subject
        still ends at that sequence (0: has no message), which makes a decision taken from the
        history atomic; otherwise ConcurrentUpdate.
        """
        headers = {MSG_ID_HEADER: event.idempotency_key()}
        if expected_last_subject_sequence is not None:
            headers[EXPECTED_LAST_SUBJECT_SEQUENCE_HEADER] = str(expected_last_subject_sequence)
        try:
            ack = await self._js.publish(
                event_subject(event),
                ev.encode(event),
                timeout=self._timeout,
                stream=EVENTS_STREAM,
                headers=headers,
            )
        except APIError as err:
            if err.err_code == WRONG_LAST_SEQUENCE:
                raise ConcurrentUpdate(str(err)) from err
            raise
        # One short line: what the event says, never its whole body (`pacsor events` has it).
        core = (
            {"core": event.core, "attempt": event.attempt}
            if isinstance(event, ev.CoreEvent)
            else {}
        )
        log.info(
            type(event).__name__,
            extra={
                "study": event.study_uid,
                **core,
                "outcome": detail(event, short=True),
                "seq": ack.seq,
                "duplicate": bool(ack.duplicate),
            },
        )
        return int(ack.seq)

    async def last_sequence(self) -> int:
        """The stream's last sequence: what a reader must have applied to be up to date."""
        info = await self._js.stream_info(EVENTS_STREAM)
        return int(info.state.last_seq)

    async def last(self, subject: str) -> RecordedEvent | None:
        """The latest event on `subject` (one subject, no wildcard), or None."""
        try:
            msg = await self._js.get_last_msg(EVENTS_STREAM, subject)
        except NotFoundError:
            return None
        if msg.data is None or msg.seq is None:
            return None
        return RecordedEvent(int(msg.seq), subject, ev.decode_at(msg.data, int(msg.seq)))

    async def history(self, study_uid: str) -> list[RecordedEvent]:
        """Every event of one study, oldest first."""
        return await self.read(study_subjects(study_uid))

    async def received(self, study_uid: str, through_sequence: int) -> list[RecordedEvent]:
        """The study's InstanceReceived events up to `through_sequence`, oldest first."""
        return await self.read(received_subject(study_uid), through_sequence)

    async def latest(self, study_uid: str, kind: type[ev.Event]) -> RecordedEvent | None:
        """The study's latest event of a study-level `kind`, by one direct read."""
        return await self.last(study_events(study_uid, kind))

    async def read(
        self, filter_subject: str = ALL_EVENTS, through_sequence: int | None = None
    ) -> list[RecordedEvent]:
        """Every event on `filter_subject` (up to `through_sequence`), oldest first, through an
        ephemeral consumer."""
        recorded: list[RecordedEvent] = []
        feed = messages_now(self._js, EVENTS_STREAM, filter_subject, self._timeout)
        async with contextlib.aclosing(feed) as messages:
            async for msg in messages:
                sequence = msg.metadata.sequence.stream
                if through_sequence is not None and sequence > through_sequence:
                    break
                try:
                    event = ev.decode_at(msg.data, sequence)
                except msgspec.MsgspecError as err:
                    log.error(
                        "unreadable event skipped", extra={"seq": sequence, "error": str(err)}
                    )
                    continue
                recorded.append(RecordedEvent(sequence, msg.subject, event))
        return recorded

    async def follow(
        self, from_sequence: int, stop: asyncio.Event, batch_size: int = 1000
    ) -> AsyncGenerator[tuple[list[RecordedEvent], int], None]:
        """Every event from `from_sequence` on, live, in batches: (readable events, last seq).

        An ordered consumer (ephemeral, no acknowledgements, recreated by nats-py after a
        reconnection) delivers them in stream order until `stop` is set. The last sequence of
        a batch counts unreadable events too, which stay in the stream and are logged.
        """
        sub = await self._js.subscribe(
            ALL_EVENTS,
            stream=EVENTS_STREAM,
            ordered_consumer=True,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=from_sequence
            ),
        )
        try:
            while not stop.is_set():
                try:
                    first = await sub.next_msg(timeout=1.0)
                except (TimeoutError, NatsTimeoutError):
                    continue
                batch = [first]
                while len(batch) < batch_size and batch[-1].metadata.num_pending > 0:
                    try:
                        batch.append(await sub.next_msg(timeout=5.0))
                    except (TimeoutError, NatsTimeoutError):
                        break
                yield _readable(batch), batch[-1].metadata.sequence.stream
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


def _readable(batch: list[Msg]) -> list[RecordedEvent]:
    recorded: list[RecordedEvent] = []
    for msg in batch:
        sequence = msg.metadata.sequence.stream
        try:
            recorded.append(RecordedEvent(sequence, msg.subject, ev.decode_at(msg.data, sequence)))
        except msgspec.MsgspecError as err:
            log.error("unreadable event skipped", extra={"seq": sequence, "error": str(err)})
    return recorded
