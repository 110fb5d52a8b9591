"""What a component and a step are, and what they are given to run: one process's connections.

A step is one handler of the pipeline, declared once (`STEP = Step(...)` in its module in
consumers/): the event type it consumes, its fan-out (once, per AI core, per core and
destination), its durable consumer and its failure event. The runtime builds one durable
consumer per target of the fan-out, and hands each the handler bound to that target.

A component is what `pacsor run NAME` runs: its steps, or a server (the SCP, the admin). It
declares itself next to its code (`COMPONENT = Component(...)`) and is listed once in
pacsor.components; adding one touches only its module and that list.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from nats.aio.client import Client
from nats.js import JetStreamContext

from pacsor.ai.milvue_api import MilvueApi, core_clients
from pacsor.config import CoreSettings, Destination, Settings
from pacsor.domain import events as ev
from pacsor.domain.retry import RetryPolicy
from pacsor.jetstream.blobs import BlobStore
from pacsor.jetstream.eventlog import EventLog
from pacsor.jetstream.handler_runner import ConsumerSpec, Handler, ensure_consumer, run_consumer
from pacsor.jetstream.holds import Holds
from pacsor.jetstream.liveness import Heartbeat, liveness_file
from pacsor.jetstream.nats_auth import Publishes
from pacsor.jetstream.quiet_timers import QuietTimers
from pacsor.jetstream.subjects import EVENTS_STREAM

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
    # What it writes to NATS: the grants of its own role in a split deployment.
    publishes: Publishes = field(kw_only=True)


class FanOut(enum.Enum):
    """For whom a step runs: one consumer, or one per AI core, or per core and destination.

    Per core, each consumer has its own API client: a core that is down or slow never delays
    the others; per destination, a PACS that is down delays no other."""

    ONCE = "once"
    PER_CORE = "per AI core"
    PER_DESTINATION = "per AI core and destination"


@dataclass(frozen=True)
class Target:
    """What one consumer of a step serves: nothing in particular (once), an AI core with its
    API client, or a core and one of its destinations."""

    core: CoreSettings | None = None
    api: MilvueApi | None = None
    destination: Destination | None = None

    @property
    def core_settings(self) -> CoreSettings:
        if self.core is None:
            raise TypeError("a step run once has no AI core")
        return self.core

    @property
    def client(self) -> MilvueApi:
        if self.api is None:
            raise TypeError("a step run once has no API client")
        return self.api

    @property
    def peer(self) -> Destination:
        if self.destination is None:
            raise TypeError("only a step run per destination has a destination")
        return self.destination


# A name, subject or text that may depend on the target.
PerTarget = str | Callable[[Target], str]


def _for(value: PerTarget, target: Target) -> str:
    return value if isinstance(value, str) else value(target)


@dataclass(frozen=True)
class Step(Generic[M]):
    """One handler of the pipeline, declared once in its module in consumers/."""

    consumes: type[M]
    fan_out: FanOut
    durable: PerTarget
    filter_subject: PerTarget
    description: PerTarget
    # Every event type the handler returns, its failure event included: what its component's
    # NATS role may publish (pacsor.jetstream.nats_auth), checked as it returns them.
    emits: tuple[type[ev.Event], ...]
    # The step's own failure event from (message, target, reason, tries), recorded when its
    # handler keeps failing or fails for good; None: StepFailed, which names the step.
    failed: Callable[[M, Target, str, int], ev.Event] | None = None
    stream: str = EVENTS_STREAM
    # How a message becomes `consumes`; None: the event decoder of that type.
    decode: Callable[[bytes, str], M] | None = None
    ack_wait: float = 15.0
    max_ack_pending: int = 64
    concurrency: int = 4
    # "all": from the first event still in the stream; "new": from when it is first created
    # (a destination or a RIS added later must not receive every past study's results).
    start: Literal["all", "new"] = "all"

    def spec(self, target: Target) -> ConsumerSpec[M]:
        """The durable consumer serving `target`."""
        failed = self.failed
        return ConsumerSpec(
            durable=_for(self.durable, target),
            stream=self.stream,
            filter_subject=_for(self.filter_subject, target),
            decode=self.decode or _event_decoder(self.consumes),
            ack_wait=self.ack_wait,
            max_ack_pending=self.max_ack_pending,
            concurrency=self.concurrency,
            description=_for(self.description, target),
            start=self.start,
            failed=None
            if failed is None
            else lambda message, reason, tries: failed(message, target, reason, tries),
            emits=frozenset(self.emits),
        )

    def __post_init__(self) -> None:
        if self.failed is None and ev.StepFailed not in self.emits:
            raise TypeError("a step without its own failure event records StepFailed: declare it")

    def targets(self, clients: Sequence[tuple[CoreSettings, MilvueApi]]) -> list[Target]:
        if self.fan_out is FanOut.ONCE:
            return [Target()]
        if self.fan_out is FanOut.PER_CORE:
            return [Target(core, api) for core, api in clients]
        return [
            Target(core, api, destination)
            for core, api in clients
            for destination in core.destinations
        ]


def _event_decoder(kind: type[M]) -> Callable[[bytes, str], M]:
    if not issubclass(kind, ev.Event):
        raise TypeError(f"{kind.__name__} is not an event: the step must say how to decode it")
    decode: Callable[[bytes, str], M] = ev.decoder(kind)
    return decode


# A step and how to build its handler for one target.
Bound = tuple[Step[Any], Callable[[Target], Handler[Any]]]


def emitted(*steps: Step[Any]) -> tuple[type[ev.Event], ...]:
    """Every event type the steps declare, once each, in order: a component's `Publishes`."""
    return tuple(dict.fromkeys(kind for step in steps for kind in step.emits))


async def run_steps(rt: Runtime, started: Started, steps: Sequence[Bound]) -> None:
    """Run every step's consumers, one per target of its fan-out, until stopped."""
    async with core_clients(rt.settings) as clients:
        await rt.run_consumers(
            [(step.spec(t), bind(t)) for step, bind in steps for t in step.targets(clients)],
            started,
        )
