"""Keeps the read model up to date: follows the PACSOR stream from the last applied sequence.

An ordered consumer (ephemeral, no acknowledgements, recreated by nats-py after a
reconnection) delivers every event after the read model's last sequence. Events are applied in
batches of up to BATCH_SIZE, each batch in one transaction with the sequence it reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

import msgspec
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from pacsor.admin.read_model import ReadModel
from pacsor.domain import events as ev
from pacsor.jetstream.subjects import ALL_STUDY_EVENTS, EVENTS_STREAM

log = logging.getLogger("pacsor.admin.projector")

BATCH_SIZE = 1000


class Observer(Protocol):
    """Hears what the projection applied: for the metrics."""

    def events_applied(self, recorded: list[tuple[int, ev.Event]]) -> None: ...

    def step_took(self, name: str, seconds: float) -> None: ...


class Projector:
    def __init__(
        self, js: JetStreamContext, model: ReadModel, observe: Observer | None = None
    ) -> None:
        self._js = js
        self.model = model
        self._observe = observe
        self._applied = asyncio.Condition()
        self.connected = False
        self.started_from = 0

    @property
    def applied_sequence(self) -> int:
        return self.model.last_sequence

    async def wait_for(self, sequence: int, timeout: float) -> bool:
        """Wait until the read model has applied `sequence`; False when `timeout` passed."""
        async with self._applied:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._applied.wait_for(lambda: self.model.last_sequence >= sequence), timeout
                )
        return self.model.last_sequence >= sequence

    async def run(self, stop: asyncio.Event) -> None:
        start = self.started_from = self.model.last_sequence + 1
        log.info("projection starts", extra={"from_sequence": start, "file": str(self.model.path)})
        sub = await self._js.subscribe(
            ALL_STUDY_EVENTS,
            stream=EVENTS_STREAM,
            ordered_consumer=True,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start
            ),
        )
        self.connected = True
        try:
            while not stop.is_set():
                try:
                    first = await sub.next_msg(timeout=1.0)
                except (TimeoutError, NatsTimeoutError):
                    continue
                batch = [first]
                while len(batch) < BATCH_SIZE and batch[-1].metadata.num_pending > 0:
                    try:
                        batch.append(await sub.next_msg(timeout=5.0))
                    except (TimeoutError, NatsTimeoutError):
                        break
                await self._apply(batch)
        finally:
            self.connected = False
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _apply(self, batch: list[Msg]) -> None:
        recorded: list[tuple[int, ev.Event]] = []
        for msg in batch:
            sequence = msg.metadata.sequence.stream
            try:
                recorded.append((sequence, ev.decode(msg.data)))
            except msgspec.MsgspecError as err:
                # Unreadable events stay in the stream; the projection passes over them.
                log.error("unreadable event skipped", extra={"seq": sequence, "error": str(err)})
        through = batch[-1].metadata.sequence.stream
        observe = self._observe
        self.model.apply(recorded, through, observe.step_took if observe else None)
        if observe is not None:
            observe.events_applied(recorded)
        async with self._applied:
            self._applied.notify_all()
