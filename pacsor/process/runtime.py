"""What a component is, and what it is given to run: the shared connections of one process.

A component declares itself next to its code (`COMPONENT = Component(...)` in its module) and
is listed once in pacsor.components. `pacsor run NAME` and `pacsor up` look it up there; adding
one touches only its module and that list.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from nats.aio.client import Client
from nats.js import JetStreamContext

from pacsor.ai.milvue_api import MilvueApi, core_clients
from pacsor.config import CoreSettings, Settings
from pacsor.domain.retry import RetryPolicy
from pacsor.jetstream.blobs import BlobStore
from pacsor.jetstream.eventlog import EventLog
from pacsor.jetstream.handler_runner import ConsumerSpec, Handler, ensure_consumer, run_consumer
from pacsor.jetstream.holds import Holds
from pacsor.jetstream.liveness import Heartbeat, liveness_file
from pacsor.jetstream.quiet_timers import QuietTimers

M = TypeVar("M")

# A component calls this once it serves (its consumers exist, its port listens), with what
# a person needs to reach it (for example the DICOM port).
Started = Callable[[Mapping[str, Any]], None]


def retry_policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy(
        initial_seconds=settings.retry_initial_seconds,
        max_seconds=settings.retry_max_seconds,
        max_attempts=settings.retry_max_attempts,
    )


@dataclass(frozen=True)
class Runtime:
    """Everything a component may use, built once per process."""

    settings: Settings
    nc: Client
    js: JetStreamContext
    events: EventLog
    instances: BlobStore
    results: BlobStore
    timers: QuietTimers
    holds: Holds
    policy: RetryPolicy
    stop: asyncio.Event
    # The component this runtime was handed to (its liveness file is named after it).
    component: str = ""

    async def run_consumers(
        self, consumers: Sequence[tuple[ConsumerSpec[Any], Handler[Any]]], started: Started
    ) -> None:
        """Create every durable consumer, report started, then process until stopped."""
        for spec, _ in consumers:
            await ensure_consumer(self.js, spec)
        started({"consumers": [spec.durable for spec, _ in consumers]})
        heartbeat = Heartbeat(liveness_file(self.settings.data_dir, self.component), self.nc)
        async with asyncio.TaskGroup() as group:
            for spec, handler in consumers:
                group.create_task(
                    run_consumer(
                        self.js, self.events, spec, handler, self.stop, self.policy, heartbeat
                    )
                )


def _no_requirement(settings: Settings) -> None:
    return None


def _always(settings: Settings) -> bool:
    return True


@dataclass(frozen=True)
class Component:
    name: str
    # What it consumes and emits, one line (`pacsor run --help`).
    summary: str
    # Runs until runtime.stop is set; calls `started` once it serves.
    run: Callable[[Runtime, Started], Coroutine[Any, Any, None]]
    # Raises ConfigError naming the first setting the component cannot run without.
    check: Callable[[Settings], None] = _no_requirement
    # Whether `pacsor up` runs it (optional parts are switched by settings).
    in_up: Callable[[Settings], bool] = _always


async def run_per_core(
    rt: Runtime,
    started: Started,
    consumer: Callable[[str], ConsumerSpec[M]],
    handler: Callable[[CoreSettings, MilvueApi], Handler[M]],
) -> None:
    """Run one durable consumer per AI core, each with its own client: a core that is down
    or slow never delays the others."""
    async with core_clients(rt.settings) as clients:
        consumers = [(consumer(core.name), handler(core, api)) for core, api in clients]
        await rt.run_consumers(consumers, started)
