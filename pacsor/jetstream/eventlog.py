"""Publishing events to, and reading a study's history from, the PACSOR stream."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator

import msgspec
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import ConnectionClosedError, ConnectionReconnectingError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, PubAck
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
    WRONG_LAST_SEQUENCE,
    consumer_next_subject,
    event_subject,
    received_subject,
    study_core_events,
    study_events,
    study_subjects,
)

log = logging.getLogger("pacsor.events")

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

    async def publish_pending(self, event: ev.Event) -> asyncio.Future[PubAck]:
        """Publish `event` once (Nats-Msg-Id) without waiting: the future is its
        acknowledgement, to await with others (see `logged`)."""
        return await self._js.publish_async(
            event_subject(event),
            ev.encode(event),
            stream=EVENTS_STREAM,
            headers={MSG_ID_HEADER: event.idempotency_key()},
        )

    def logged(self, event: ev.Event, ack: PubAck) -> int:
        log.info(
            type(event).__name__,
            extra={
                "study": event.study_uid,
                "event": msgspec.to_builtins(event),
                "seq": ack.seq,
                "duplicate": bool(ack.duplicate),
            },
        )
        return int(ack.seq)

    async def received_again(self, event: ev.InstanceReceived, first: int) -> int:
        """`event` was a duplicate of the copy at sequence `first`: when another version of
        that SOP Instance was received since, record it again as following that version (the
        sender's last word wins). Read only on a duplicate; returns the sequence in force."""
        latest: tuple[int, ev.InstanceReceived] | None = None
        feed = messages_now(
            self._js,
            EVENTS_STREAM,
            received_subject(event.study_uid),
            self._timeout,
            start_sequence=first + 1,
        )
        async with contextlib.aclosing(feed) as messages:
            async for msg in messages:
                other = ev.decode(msg.data)
                if isinstance(other, ev.InstanceReceived) and (
                    other.sop_instance_uid == event.sop_instance_uid
                ):
                    latest = (msg.metadata.sequence.stream, other)
        if latest is None or latest[1].digest == event.digest:
            return first
        return await self.publish(msgspec.structs.replace(event, follows=latest[0]))

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

    async def result_objects(self, ready: ev.ResultReady) -> tuple[ev.ResultObject, ...]:
        """The result objects `ready` counts: its own list (schema 1), else its pages, read
        back by subject; ResultListIncomplete when they do not make that list."""
        if not ready.result_pages:
            return ready.results
        subject = study_core_events(ready.study_uid, ev.ResultObjectsListed, ready.core)
        pages = [
            r.event for r in await self.read(subject) if isinstance(r.event, ev.ResultObjectsListed)
        ]
        return ev.assemble_results(ready, pages)

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

        Read in large ordered batches through a pull consumer without acknowledgements, its
        messages taken from a plain subscription: nats-py's per-message JetStream handling
        (next_msg, metadata objects) was what bounded a rebuild, not the server. At most two
        batches are requested at once (bounded memory). A gap (a reconnection, the consumer
        gone) starts a new consumer after the last event yielded. The last sequence of a
        batch counts unreadable events too, which stay in the stream and are logged.
        """
        reader = _BatchReader(self._js, from_sequence, batch_size, self._timeout)
        try:
            while not stop.is_set():
                batch = await reader.next_batch(stop)
                if batch:
                    yield _decoded(batch), batch[-1][0]
        finally:
            await reader.close()


class _BatchReader:
    """Ordered batches of (stream sequence, subject, data) from the PACSOR stream."""

    def __init__(self, js: JetStreamContext, start: int, batch: int, timeout: float) -> None:
        self._js = js
        self._nc = js._nc
        self._next = start  # the next stream sequence wanted
        self._batch = batch
        self._timeout = timeout
        self._consumer: str | None = None
        self._sub: Subscription | None = None
        self._received: list[tuple[int, str, bytes]] = []
        self._requested = 0  # messages asked for and not yet received
        self._expected_cseq = 1
        self._arrived = asyncio.Event()
        self._caught_up = False
        self._broken = False

    async def _open(self) -> None:
        await self.close()
        inbox = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(
            inbox, cb=self._on_msg, pending_msgs_limit=4 * self._batch + 100
        )
        info = await self._js.add_consumer(
            EVENTS_STREAM,
            ConsumerConfig(
                filter_subject=ALL_EVENTS,
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=self._next,
                ack_policy=AckPolicy.NONE,
                mem_storage=True,
                inactive_threshold=60.0,
                max_waiting=16,
            ),
        )
        self._consumer, self._inbox = info.name, inbox
        self._received, self._requested, self._expected_cseq = [], 0, 1
        self._broken = self._caught_up = False

    async def _request(self) -> None:
        assert self._consumer is not None
        body = json.dumps({"batch": self._batch, "expires": int(1e9)}).encode()
        await self._nc.publish(
            consumer_next_subject(EVENTS_STREAM, self._consumer),
            body,
            reply=self._inbox,
        )
        self._requested += self._batch

    async def _on_msg(self, msg: Msg) -> None:
        if not msg.reply:
            # A status ends a request: 408 expired, 404 nothing now, 409 (too many waiting,
            # ...). 503 (no consumer: it went away during a disconnection) starts again.
            headers = msg.headers or {}
            status = headers.get("Status", "")
            if status == "503" or "deleted" in headers.get("Description", "").lower():
                self._broken = True
            self._requested = 0
            self._caught_up = True
            self._arrived.set()
            return
        tokens = msg.reply.split(".")
        if len(tokens) == 9:
            stream_seq, consumer_seq, pending = tokens[5], tokens[6], tokens[8]
        else:
            stream_seq, consumer_seq, pending = tokens[7], tokens[8], tokens[10]
        if int(consumer_seq) != self._expected_cseq:
            self._broken = True  # a gap: start again after what was yielded
            self._arrived.set()
            return
        self._expected_cseq += 1
        self._received.append((int(stream_seq), msg.subject, msg.data))
        self._requested -= 1
        self._caught_up = pending == "0"
        if len(self._received) >= self._batch or self._caught_up:
            self._arrived.set()

    async def next_batch(self, stop: asyncio.Event) -> list[tuple[int, str, bytes]]:
        """The next batch: a full one, or what is there once the stream is caught up (an
        empty one after a second with nothing new)."""
        if not self._nc.is_connected:
            await asyncio.sleep(0.5)
            return []
        if self._consumer is None or self._broken:
            try:
                await self._open()
            except (TimeoutError, NatsTimeoutError, APIError) as err:
                log.warning("event feed could not start; trying again", extra={"error": str(err)})
                await asyncio.sleep(1.0)
                return []
        if self._requested < self._batch:
            try:
                await self._request()
            except (ConnectionReconnectingError, ConnectionClosedError):
                await asyncio.sleep(0.5)  # the client reconnects; the next call asks again
                return []
        if len(self._received) < self._batch and not self._caught_up:
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), 1.0)
        if stop.is_set() or self._broken:
            return []
        batch = self._received[: self._batch]
        del self._received[: len(batch)]
        if batch:
            self._next = batch[-1][0] + 1
        if not self._received:
            self._caught_up = False
        return batch

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self._js.delete_consumer(EVENTS_STREAM, self._consumer)
            self._consumer = None


def _decoded(batch: list[tuple[int, str, bytes]]) -> list[RecordedEvent]:
    recorded: list[RecordedEvent] = []
    for sequence, subject, data in batch:
        try:
            recorded.append(RecordedEvent(sequence, subject, ev.decode_at(data, sequence)))
        except msgspec.MsgspecError as err:
            log.error("unreadable event skipped", extra={"seq": sequence, "error": str(err)})
    return recorded


def _readable(batch: list[Msg]) -> list[RecordedEvent]:
    recorded: list[RecordedEvent] = []
    for msg in batch:
        sequence = msg.metadata.sequence.stream
        try:
            recorded.append(RecordedEvent(sequence, msg.subject, ev.decode_at(msg.data, sequence)))
        except msgspec.MsgspecError as err:
            log.error("unreadable event skipped", extra={"seq": sequence, "error": str(err)})
    return recorded
