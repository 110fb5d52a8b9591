"""Keeps the read model up to date: follows the PACSOR stream from the last applied sequence.

EventLog.follow delivers every event after the read model's last sequence. Events are applied
in batches of up to BATCH_SIZE, each batch in one transaction with the sequence it reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from pacsor.admin.read_model import ReadModel
from pacsor.domain import events as ev
from pacsor.errors import InvalidInput
from pacsor.jetstream.eventlog import EventLog

log = logging.getLogger("pacsor.admin.projector")

BATCH_SIZE = 1000


class Observer(Protocol):
    """Hears what the projection applied: for the metrics."""

    def events_applied(self, recorded: list[tuple[int, ev.Event]]) -> None: ...

    def step_took(self, name: str, seconds: float) -> None: ...


class BeyondTheStream(InvalidInput):
    """A sequence asked for that the stream has not reached: waiting would not bring it."""

    def __init__(self, sequence: int, last: int) -> None:
        super().__init__(f"sequence {sequence} is beyond the stream's last, {last}")
        self.sequence = sequence
        self.last = last


class Projector:
    def __init__(self, events: EventLog, model: ReadModel, observe: Observer | None = None) -> None:
        self._events = events
        self.model = model
        self._observe = observe
        self._applied = asyncio.Condition()
        self.connected = False
        self.started_from = 0

    @property
    def applied_sequence(self) -> int:
        return self.model.last_sequence

    async def check_reached(self, sequence: int) -> None:
        """BeyondTheStream when the stream has not reached `sequence`: no wait would bring it."""
        if sequence > self.model.last_sequence:
            last = await self._events.last_sequence()
            if sequence > last:
                raise BeyondTheStream(sequence, last)

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
        feed = self._events.follow(start, stop, BATCH_SIZE)
        self.connected = True
        try:
            async for batch, through in feed:
                await self._apply([(r.sequence, r.event) for r in batch], through)
        finally:
            self.connected = False
            await feed.aclose()

    async def _apply(self, recorded: list[tuple[int, ev.Event]], through: int) -> None:
        observe = self._observe
        self.model.apply(recorded, through, observe.step_took if observe else None)
        if observe is not None:
            observe.events_applied(recorded)
        async with self._applied:
            self._applied.notify_all()
