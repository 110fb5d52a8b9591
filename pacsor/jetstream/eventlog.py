"""Publishing events to, and reading a study's history from, the PACSOR stream."""

from __future__ import annotations

import logging

import msgspec
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError

from pacsor.domain import events as ev
from pacsor.jetstream.subjects import (
    EVENTS_STREAM,
    event_subject,
    received_subject,
    study_subjects,
)

log = logging.getLogger("pacsor.domain.events")

WRONG_LAST_SEQUENCE = 10071


class ConcurrentUpdate(RuntimeError):
    """Another writer changed the subject first: re-read the history and decide again."""


class RecordedEvent(msgspec.Struct, frozen=True):
    sequence: int
    subject: str
    event: ev.AnyEvent


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
        headers = {"Nats-Msg-Id": event.idempotency_key()}
        if expected_last_subject_sequence is not None:
            headers["Nats-Expected-Last-Subject-Sequence"] = str(expected_last_subject_sequence)
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
        log.info(
            type(event).__name__,
            extra={
                "study": event.study_instance_uid,
                "event": msgspec.to_builtins(event),
                "seq": ack.seq,
                "duplicate": bool(ack.duplicate),
            },
        )
        return int(ack.seq)

    async def history(self, study_uid: str) -> list[RecordedEvent]:
        """Every event of one study, oldest first."""
        return await self.read(study_subjects(study_uid))

    async def received(self, study_uid: str, through_sequence: int) -> list[RecordedEvent]:
        """The study's InstanceReceived events up to `through_sequence`, oldest first."""
        return await self.read(received_subject(study_uid), through_sequence)

    async def read(
        self, filter_subject: str = "pacsor.study.>", through_sequence: int | None = None
    ) -> list[RecordedEvent]:
        """Every event on `filter_subject` (up to `through_sequence`), oldest first, through an
        ephemeral consumer."""
        sub = await self._js.pull_subscribe(
            filter_subject,
            stream=EVENTS_STREAM,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.ALL,
                ack_policy=AckPolicy.NONE,
                inactive_threshold=30.0,
                mem_storage=True,
            ),
        )
        recorded: list[RecordedEvent] = []
        try:
            info = await sub.consumer_info()
            remaining = info.num_pending or 0
            while remaining > 0:
                for msg in await sub.fetch(min(remaining, 1000), timeout=self._timeout):
                    meta = msg.metadata
                    remaining = meta.num_pending
                    if through_sequence is not None and meta.sequence.stream > through_sequence:
                        remaining = 0
                        break
                    try:
                        event = ev.decode(msg.data)
                    except msgspec.MsgspecError as err:
                        log.error(
                            "unreadable event skipped",
                            extra={"seq": meta.sequence.stream, "error": str(err)},
                        )
                        continue
                    recorded.append(RecordedEvent(meta.sequence.stream, msg.subject, event))
        finally:
            await sub.unsubscribe()
        return recorded
