"""Liveness of a component's pull loops, for container healthchecks (`pacsor health`).

Each running component keeps a small file up to date: the durable consumers it pulls from,
rewritten after every fetch round that ended while connected to NATS (at most every few
seconds). `pacsor health <component>`, run in the same container, finds the file fresh, then
asks NATS itself that every consumer named in it exists.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from nats.aio.client import Client
from nats.js.errors import NotFoundError

from pacsor.jetstream.subjects import EVENTS_STREAM

WRITE_EVERY = 5.0  # seconds between rewrites of the file
STALE_AFTER = 30.0  # seconds without a rewrite before the component counts as stuck


def liveness_file(data_dir: Path, component: str) -> Path:
    return data_dir / "alive" / component


class Heartbeat:
    """Records, for one component of this process, that its pull loops are turning."""

    def __init__(self, path: Path, nc: Client) -> None:
        self.path = path
        self.nc = nc
        self.consumers: dict[str, str] = {}  # durable -> stream
        self._written = 0.0

    def beat(self, stream: str, durable: str) -> None:
        known = durable in self.consumers
        self.consumers[durable] = stream
        self.alive(force=not known)

    def alive(self, force: bool = False) -> None:
        """The component is turning while connected (a component that pulls from no consumer
        of its own, like the retention sweeper, says so itself)."""
        if not self.nc.is_connected:
            return  # a fetch that timed out while disconnected proves nothing
        now = time.monotonic()
        if not force and now - self._written < WRITE_EVERY:
            return
        self._written = now
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".tmp")
        partial.write_text(json.dumps({"consumers": self.consumers}))
        os.replace(partial, self.path)  # the probe never reads half a file


async def probe(nc: Client, path: Path, now: float | None = None) -> list[str]:
    """What is wrong with the component whose liveness file is `path`; empty when healthy."""
    try:
        written = path.stat().st_mtime
        consumers: dict[str, str] = json.loads(path.read_text())["consumers"]
    except FileNotFoundError:
        return [f"{path.name}: no pull loop has fetched yet"]
    age = (time.time() if now is None else now) - written
    if age > STALE_AFTER:
        return [f"{path.name}: no fetch completed for {age:.0f} s"]
    js = nc.jetstream(timeout=5)
    problems = []
    try:
        await js.stream_info(EVENTS_STREAM)
    except NotFoundError:
        problems.append(f"stream {EVENTS_STREAM}: missing")
    for durable, stream in consumers.items():
        try:
            await js.consumer_info(stream, durable)
        except NotFoundError:
            problems.append(f"consumer {durable}: missing from {stream}")
    return problems
