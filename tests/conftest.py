from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from pacsor.devtools.simulator import SimulatorSettings, running_simulator
from pacsor.jetstream.broker import apply_streams, connect
from tests.harness import TOKEN, ReceivingPacs, Simulator
from tests.nats_server import NatsServer


def pytest_configure(config: pytest.Config) -> None:
    # DCMTK's tools: CI installs them, so there they must run, not skip.
    import os

    if os.environ.get("CI") and shutil.which("storescu", path="/usr/bin:/usr/local/bin") is None:
        raise pytest.UsageError("CI is set but DCMTK (storescu/storescp) is not installed")


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A fresh nats-server with JetStream for one test."""
    server = NatsServer(tmp_path / "nats")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    client = await connect(nats_server.url, "pacsor tests")
    await apply_streams(client)
    yield client
    await client.close()


@pytest.fixture
def pacs() -> Iterator[ReceivingPacs]:
    """The site's PACS: a real Storage SCP that records what it receives."""
    receiver = ReceivingPacs("MAINPACS").start()
    yield receiver
    receiver.stop()


@pytest.fixture
def archive() -> Iterator[ReceivingPacs]:
    """A second destination."""
    receiver = ReceivingPacs("ARCHIVE").start()
    yield receiver
    receiver.stop()


@pytest.fixture
def simulator(request: pytest.FixtureRequest) -> Iterator[Simulator]:
    """The API simulator on a free port, taking TOKEN; a test or module changes its settings
    with @pytest.mark.simulator(running_polls=..., ...)."""
    marker = request.node.get_closest_marker("simulator")
    options = marker.kwargs if marker is not None else {}
    with running_simulator(SimulatorSettings(token=TOKEN, **options)) as (url, state):
        yield Simulator(url, state)
