"""Nothing is lost: pacsor killed (SIGKILL) or NATS restarted mid-study, results arrive once."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

from nats.aio.client import Client

from pacsor.devtools.sample_study import make_study
from pacsor.devtools.simulator import SimulatorSettings, running_simulator
from pacsor.dicom.storage_scu import send_files
from pacsor.domain import events as ev
from pacsor.jetstream.eventlog import EventLog
from tests.harness import (
    TOKEN,
    ReceivingPacs,
    cli_env,
    dispatched_uids,
    gateway_settings,
    of_type,
    running_gateway,
    wait_for_dicom,
    wait_for_event,
    write_study,
)
from tests.nats_server import NatsServer, free_port


class PacsorProcess:
    """`python -m pacsor up` as a child process, to be killed like a crashed server."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env = cli_env(**env)
        self.cwd = cwd
        self.port = int(env["PORT"])
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pacsor", "up"],
            env=self.env,
            cwd=self.cwd,
            stdout=subprocess.DEVNULL,
            stderr=open(self.cwd / "pacsor.log", "ab"),  # noqa: SIM115
        )
        try:
            await wait_for_dicom(self.port, "MILVUE", self.process, timeout=60)
        except RuntimeError:
            raise RuntimeError((self.cwd / "pacsor.log").read_text()[-3000:]) from None

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


async def count_events(nc: Client, study: str) -> Counter[str]:
    return Counter(type(r.event).__name__ for r in await EventLog(nc.jetstream()).history(study))


async def test_sigkill_during_quiet_period_and_after_upload(
    nc: Client, nats_server: NatsServer, tmp_path: Path, pacs: ReceivingPacs
) -> None:
    with running_simulator(SimulatorSettings(token=TOKEN, running_polls=8)) as (api_url, _):
        env = {
            "NATS_URL": nats_server.url,
            "PORT": str(free_port()),
            "API_URL": api_url,
            "TOKEN": TOKEN,
            "STUDY_QUIET_SECONDS": "3",
            "POLL_INTERVAL_SECONDS": "0.5",
            "PACS_IP": "127.0.0.1",
            "PACS_PORT": str(pacs.port),
            "PACS_AET": pacs.ae_title,
            "LOG_LEVEL": "INFO",
        }
        gateway = PacsorProcess(env, tmp_path)
        await gateway.start()
        try:
            # 1. Killed during the quiet period: the timer is on the server, not in the process.
            first = make_study(3, rows=64, columns=64)
            statuses = await asyncio.to_thread(
                send_files, "127.0.0.1", gateway.port, "MILVUE", write_study(tmp_path / "a", first)
            )
            assert [s for _, s in statuses] == [0, 0, 0]
            study_a = str(first[0].StudyInstanceUID)
            gateway.kill()
            assert (await count_events(nc, study_a))["StudyComplete"] == 0
            await gateway.start()
            await wait_for_event(nc, study_a, of_type(ev.Dispatched), 90)

            # 2. Killed after the upload, while the AI is still running.
            second = make_study(2, rows=64, columns=64)
            statuses = await asyncio.to_thread(
                send_files, "127.0.0.1", gateway.port, "MILVUE", write_study(tmp_path / "b", second)
            )
            assert [s for _, s in statuses] == [0, 0]
            study_b = str(second[0].StudyInstanceUID)
            await wait_for_event(nc, study_b, of_type(ev.Uploaded), 60)
            gateway.kill()
            assert (await count_events(nc, study_b))["ResultReady"] == 0
            await gateway.start()
            await wait_for_event(nc, study_b, of_type(ev.Dispatched), 90)
        finally:
            gateway.stop()

    for study in (study_a, study_b):
        counts = await count_events(nc, study)
        assert counts["StudyComplete"] == counts["Uploaded"] == counts["ResultReady"] == 1
        assert counts["Dispatched"] == 1
    # Every result object delivered exactly once.
    delivered = Counter(pacs.sop_uids())
    assert len(delivered) == 2 * (3 + 2)
    assert set(delivered.values()) == {1}


async def test_nats_restart_during_quiet_period_completes_once(
    nc: Client, nats_server: NatsServer, tmp_path: Path, pacs: ReceivingPacs
) -> None:
    with running_simulator(SimulatorSettings(token=TOKEN, running_polls=0)) as (api_url, _):
        settings = gateway_settings(nats_server.url, api_url, pacs, STUDY_QUIET_SECONDS="3")
        async with running_gateway(settings):
            study = make_study(2, rows=64, columns=64)
            statuses = await asyncio.to_thread(
                send_files, "127.0.0.1", settings.port, "MILVUE", write_study(tmp_path, study)
            )
            assert [s for _, s in statuses] == [0, 0]
            study_uid = str(study[0].StudyInstanceUID)
            await wait_for_event(nc, study_uid, of_type(ev.InstanceReceived))
            nats_server.stop()
            nats_server.start()
            done = await wait_for_event(nc, study_uid, of_type(ev.Dispatched), 90)
    assert isinstance(done, ev.Dispatched)
    counts = await count_events(nc, study_uid)
    assert counts["StudyComplete"] == 1 and counts["InstanceReceived"] == 2
    assert sorted(pacs.sop_uids()) == sorted(await dispatched_uids(nc, done))
