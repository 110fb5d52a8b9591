"""Interoperability with DCMTK: storescu as the modality, storescp as the PACS."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest
from nats.aio.client import Client
from pydicom import dcmread

from pacsor.config import load_settings
from pacsor.devtools.sample_study import make_study
from pacsor.devtools.simulator import SimulatorSettings, running_simulator
from pacsor.domain import events as ev
from tests.harness import (
    TOKEN,
    dispatched_uids,
    of_type,
    running_gateway,
    wait_for_dicom,
    wait_for_event,
    write_study,
)
from tests.nats_server import NatsServer, free_port

# pynetdicom installs its own `storescu`/`storescp` scripts in the virtualenv: use DCMTK's.
DCMTK = next(
    (
        d
        for d in ("/usr/bin", "/usr/local/bin")
        if Path(d, "storescp").exists() and Path(d, "dcmdump").exists()
    ),
    None,
)
pytestmark = [
    pytest.mark.dcmtk,
    pytest.mark.skipif(DCMTK is None, reason="DCMTK is not installed (apt-get install dcmtk)"),
]


def tool(name: str) -> str:
    assert DCMTK is not None
    return str(Path(DCMTK, name))


async def test_storescu_to_pacsor_to_storescp(
    nc: Client, nats_server: NatsServer, tmp_path: Path
) -> None:
    received = tmp_path / "storescp"
    received.mkdir()
    pacs_port = free_port()
    storescp = subprocess.Popen(
        [
            tool("storescp"),
            "--aetitle",
            "DCMTKPACS",
            "--output-directory",
            str(received),
            str(pacs_port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await wait_for_dicom(pacs_port, "DCMTKPACS", storescp)
        with running_simulator(SimulatorSettings(token=TOKEN, running_polls=1)) as (api_url, _):
            settings = load_settings(
                {
                    "NATS_URL": nats_server.url,
                    "PORT": str(free_port()),
                    "API_URL": api_url,
                    "TOKEN": TOKEN,
                    "STUDY_QUIET_SECONDS": "1",
                    "POLL_INTERVAL_SECONDS": "0.2",
                    "PACS_IP": "127.0.0.1",
                    "PACS_PORT": str(pacs_port),
                    "PACS_AET": "DCMTKPACS",
                },
                dotenv=None,
            )
            async with running_gateway(settings):
                study = make_study(3, rows=96, columns=96)
                paths = write_study(tmp_path / "study", study)
                sent = await asyncio.to_thread(
                    subprocess.run,
                    [
                        tool("storescu"),
                        "--aetitle",
                        "MODALITY",
                        "--call",
                        "MILVUE",
                        "127.0.0.1",
                        str(settings.port),
                        *map(str, paths),
                    ],
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                assert sent.returncode == 0, sent.stderr
                study_uid = str(study[0].StudyInstanceUID)
                done = await wait_for_event(nc, study_uid, of_type(ev.Dispatched), 60)
    finally:
        storescp.terminate()
        storescp.wait(timeout=10)

    assert isinstance(done, ev.Dispatched)
    files = sorted(received.iterdir())
    assert len(files) == done.object_count == 6
    assert {str(dcmread(f).SOPInstanceUID) for f in files} == set(await dispatched_uids(nc, done))
    # DCMTK itself reads every result object as valid DICOM.
    for f in files:
        dump = subprocess.run([tool("dcmdump"), str(f)], capture_output=True, text=True, timeout=30)
        assert dump.returncode == 0 and "SecondaryCaptureImageStorage" in dump.stdout
