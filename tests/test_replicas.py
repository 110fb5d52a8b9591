"""Three uploader replicas, each its own `pacsor run uploader` process, sharing a burst.

The spread of 30 studies across the replicas is measured from each replica's own log (the
`Uploaded` events it published) and printed; a replica killed with SIGKILL while its uploads
are in flight has them finished by the others.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from pacsor.devtools.sample_study import make_study
from pacsor.dicom.storage_scu import send_files
from pacsor.domain import events as ev
from pacsor.jetstream.eventlog import EventLog
from pacsor.jetstream.subjects import EVENTS_STREAM
from tests.harness import (
    TOKEN,
    ReceivingPacs,
    Simulator,
    cli_env,
    gateway_settings,
    running_gateway,
    write_study,
)
from tests.nats_server import NatsServer

REPLICAS = 3
UPLOAD_SECONDS = 3.0  # each upload is in flight this long at the (simulated) API

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.simulator(running_polls=0, upload_seconds=UPLOAD_SECONDS),
]


class Replica:
    """`pacsor run uploader` as a process of its own; notes what its log says it did."""

    def __init__(self, name: str, env: dict[str, str]) -> None:
        self.name = name
        self.env = env
        self.uploaded: list[str] = []  # studies whose Uploaded this replica published
        self.ready = asyncio.Event()
        self.process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "pacsor",
            "run",
            "uploader",
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read())
        async with asyncio.timeout(60):
            await self.ready.wait()

    async def _read(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        async for raw in self.process.stderr:
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if line.get("msg") == "consumer started":
                self.ready.set()
            if line.get("msg") == "Uploaded" and not line.get("duplicate"):
                self.uploaded.append(line["study"])

    async def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(sig)
            await asyncio.wait_for(self.process.wait(), 30)
        if self._reader is not None:
            await asyncio.wait_for(self._reader, 10)


@pytest.fixture
async def replicas(
    nats_server: NatsServer, simulator: Simulator, tmp_path: Path
) -> AsyncIterator[list[Replica]]:
    started: list[Replica] = []
    try:
        for n in range(REPLICAS):
            env = cli_env(
                NATS_URL=nats_server.url,
                API_URL=simulator[0],
                TOKEN=TOKEN,
                LOG_LEVEL="INFO",
                PACSOR_DATA_DIR=str(tmp_path / f"replica-{n}"),
            )
            replica = Replica(f"uploader-{n + 1}", env)
            await replica.start()
            started.append(replica)
        yield started
    finally:
        for replica in started:
            await replica.stop()


async def send_studies(port: int, ae_title: str, folder: Path, count: int) -> list[str]:
    """`count` one-image studies over one association each, as fast as they go."""
    studies = []
    for n in range(count):
        study = make_study(1, rows=64, columns=64)
        paths = write_study(folder / str(n), study)
        results = await asyncio.to_thread(send_files, "127.0.0.1", port, ae_title, paths)
        assert [status for _, status in results] == [0]
        studies.append(str(study[0].StudyInstanceUID))
    return studies


async def uploaded_once(nc: Client, studies: list[str], timeout: float = 120) -> None:
    """Until every study has its Uploaded event (a live subscription, not polling)."""
    waiting = set(studies)
    sub = await nc.jetstream().subscribe(
        "pacsor.study.*.*.uploaded", stream=EVENTS_STREAM, ordered_consumer=True
    )
    try:
        async with asyncio.timeout(timeout):
            while waiting:
                event = ev.decode((await sub.next_msg(timeout=timeout)).data)
                waiting.discard(event.study_uid)
    finally:
        await sub.unsubscribe()


async def test_a_burst_of_30_studies_spreads_over_three_replicas(
    nc: Client,
    nats_server: NatsServer,
    simulator: Simulator,
    replicas: list[Replica],
    pacs: ReceivingPacs,
    tmp_path: Path,
) -> None:
    api_url, sim = simulator
    settings = gateway_settings(nats_server.url, api_url, pacs, STUDY_QUIET_SECONDS="2")
    rest = ("scp", "quiet-timer", "completion")
    async with running_gateway(settings, rest):
        studies = await send_studies(settings.port, settings.milvue_aet, tmp_path, 30)
        await uploaded_once(nc, studies)
    spread = {r.name: len(r.uploaded) for r in replicas}
    print(f"\nspread of 30 uploads over {REPLICAS} replicas: {spread}")
    assert sorted(s for r in replicas for s in r.uploaded) == sorted(studies)
    # Fair would be 10 each; every replica takes at least half of that (measured: 7 to 14).
    assert min(spread.values()) >= 5, spread
    for study in studies:
        snapshot = sim.study(study)
        assert snapshot is not None and snapshot.uploads == 1


async def test_a_replica_killed_with_uploads_in_flight_leaves_them_to_the_others(
    nc: Client,
    nats_server: NatsServer,
    simulator: Simulator,
    replicas: list[Replica],
    pacs: ReceivingPacs,
    tmp_path: Path,
) -> None:
    api_url, sim = simulator
    settings = gateway_settings(nats_server.url, api_url, pacs, STUDY_QUIET_SECONDS="2")
    victim, survivors = replicas[0], replicas[1:]
    js = nc.jetstream()
    async with running_gateway(settings, ("scp", "quiet-timer", "completion")):
        studies = await send_studies(settings.port, settings.milvue_aet, tmp_path, 9)
        # Every study reached the API once: the uploads are in flight, their messages held.
        async with asyncio.timeout(60):
            while sum(s.uploads for u in studies if (s := sim.study(u))) < len(studies):
                await asyncio.sleep(0.05)
        held = (await js.consumer_info(EVENTS_STREAM, "upload-default")).num_ack_pending
        killed_at = asyncio.get_running_loop().time()
        await victim.stop(signal.SIGKILL)
        await uploaded_once(nc, studies)
        taken_over_in = asyncio.get_running_loop().time() - killed_at
    # Uploaded by the survivors, each study once in the history.
    uploads_after_kill = Counter(sim.study(u).uploads for u in studies)  # type: ignore[union-attr]
    print(
        f"\nheld at the kill: {held}; uploads per study (2: the victim's, redone): "
        f"{dict(uploads_after_kill)}; survivors: "
        f"{ {r.name: len(r.uploaded) for r in survivors} }; all uploaded "
        f"{taken_over_in:.1f} s after the kill (the uploader's ack wait is 15 s)"
    )
    assert held > 0
    assert victim.uploaded == []
    assert sorted(s for r in survivors for s in r.uploaded) == sorted(studies)
    redone = [u for u in studies if sim.study(u).uploads == 2]  # type: ignore[union-attr]
    assert redone, "the victim held none of the uploads"
    for study in studies:
        kinds = Counter(type(r.event).__name__ for r in await EventLog(js).history(study))
        assert kinds["Uploaded"] == 1
