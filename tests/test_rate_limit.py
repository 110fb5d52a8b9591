"""UPLOAD_RATE_LIMIT: one budget per core, shared by every uploader replica through JetStream."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from nats.aio.client import Client

from pacsor.devtools.simulator import SimulatorSettings, running_simulator
from pacsor.domain import events as ev
from pacsor.jetstream.broker import connect
from pacsor.jetstream.rate_limit import RateLimiter
from tests.harness import (
    TOKEN,
    ReceivingPacs,
    gateway_settings,
    images,
    running_gateway,
    send_datasets,
    wait_for_event,
)
from tests.nats_server import NatsServer


def rate(times: list[float]) -> float:
    """Instances per second between the first and the last."""
    times = sorted(times)
    return (len(times) - 1) / (times[-1] - times[0])


async def test_two_limiters_on_two_connections_share_one_budget(
    nc: Client, nats_server: NatsServer
) -> None:
    other = await connect(nats_server.url, "second replica")
    try:
        limiters = [
            RateLimiter(nc.jetstream(), "core-a", 20),
            RateLimiter(other.jetstream(), "core-a", 20),
        ]
        elsewhere = RateLimiter(nc.jetstream(), "core-b", 20)
        granted: list[float] = []
        other_core: list[float] = []

        async def take(limiter: RateLimiter, into: list[float]) -> None:
            await limiter.acquire()
            into.append(time.monotonic())

        started = time.monotonic()
        await asyncio.gather(
            *(take(limiters[n % 2], granted) for n in range(40)),
            *(take(elsewhere, other_core) for _ in range(10)),
        )
    finally:
        await other.close()
    # 40 slots at 20/s from two replicas: 2 s, whoever asks; core-b has its own budget.
    assert rate(granted) <= 20 * 1.05
    assert granted[-1] - started >= 39 / 20 * 0.95
    assert other_core[-1] - started < 1.0


async def test_two_uploader_replicas_keep_the_rate(
    nc: Client, nats_server: NatsServer, tmp_path: Path
) -> None:
    limit = 5.0
    pacs = ReceivingPacs("RATEPACS").start()
    try:
        with running_simulator(SimulatorSettings(token=TOKEN, running_polls=0)) as (url, sim):
            extra = {"UPLOAD_RATE_LIMIT": str(limit), "STUDY_QUIET_SECONDS": "0.5"}
            first = gateway_settings(nats_server.url, url, pacs, **extra)
            second = gateway_settings(nats_server.url, url, pacs, **extra)
            async with running_gateway(first), running_gateway(second, ("uploader",)):
                studies = await asyncio.gather(
                    *(send_datasets(first, tmp_path / str(n), images(6)) for n in range(4))
                )
                for study in studies:
                    await wait_for_event(nc, study, lambda e: isinstance(e, ev.Uploaded), 60)
            arrivals = sim.arrivals()
    finally:
        pacs.stop()
    measured = rate(arrivals)
    print(
        f"\n{len(arrivals)} instances, 2 uploader replicas, UPLOAD_RATE_LIMIT={limit:g}: "
        f"{measured:.2f} instances/s at the simulator"
    )
    assert len(arrivals) == 24
    assert limit * 0.8 <= measured <= limit * 1.05
