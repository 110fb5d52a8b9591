"""Studies of any size: StudyComplete stays small, and the uploader reads the attempt back.

A StudyComplete of schema 1 listed every instance and broke the 1 MB message limit near 2,350
instances; these studies are above that. One goes through the real SCP; the largest has its
InstanceReceived events and objects written straight into JetStream, as the SCP writes them,
to keep the test fast.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
from nats.aio.client import Client

from pacsor.devtools.bulk_study import record_as_the_scp, tiny_study
from pacsor.devtools.simulator import SimulatorSettings, running_simulator
from pacsor.dicom.storage_scu import send_files
from pacsor.domain import events as ev
from pacsor.jetstream.blobs import BlobStore
from pacsor.jetstream.eventlog import EventLog
from pacsor.jetstream.subjects import INSTANCES_BUCKET
from tests.harness import TOKEN, of_type, running_gateway, site_settings, wait_for_event
from tests.nats_server import NatsServer

UPLOAD_PATH = ("quiet-timer", "completion", "uploader")


def instances_from_env(default: int) -> int:
    """PACSOR_LARGE_STUDY scales the study up (the README's 20,000-instance figure)."""
    return int(os.environ.get("PACSOR_LARGE_STUDY", default))


LARGE_STUDY = instances_from_env(3_000)
# The wait for Uploaded: a minute, and 50 instances a second.
UPLOAD_WAIT = 60 + LARGE_STUDY / 50


@pytest.mark.timeout(UPLOAD_WAIT + 120)  # the suite's 300 s would stop a study of 20,000
async def test_a_study_above_the_old_limit_is_uploaded_whole(
    nc: Client, nats_server: NatsServer
) -> None:
    count = LARGE_STUDY
    study, images = tiny_study(count)
    with running_simulator(SimulatorSettings(token=TOKEN, running_polls=10_000)) as (api_url, sim):
        settings = site_settings(nats_server.url, API_URL=api_url, STUDY_QUIET_SECONDS="2")
        async with running_gateway(settings, UPLOAD_PATH):
            started = time.monotonic()
            js = nc.jetstream()
            await record_as_the_scp(
                BlobStore(nc, js, INSTANCES_BUCKET), EventLog(js), study, images
            )
            recorded = time.monotonic() - started
            uploaded = await wait_for_event(nc, study, of_type(ev.Uploaded), UPLOAD_WAIT)
            elapsed = time.monotonic() - started
        snapshot = sim.study(study)
    assert isinstance(uploaded, ev.Uploaded) and uploaded.instance_count == count
    # One attempt, in batches of UPLOAD_BATCH_SIZE, each instance once.
    assert snapshot is not None and snapshot.uploads == -(-count // settings.upload_batch_size)
    assert set(snapshot.instances.values()) == {1}
    assert sorted(snapshot.instances) == sorted(sop for sop, _ in images)
    complete = await wait_for_event(nc, study, of_type(ev.StudyComplete))
    assert isinstance(complete, ev.StudyComplete) and complete.instance_count == count
    assert len(ev.encode(complete)) < 1024  # whatever the study's size
    print(
        f"{count} instances recorded in {recorded:.1f} s; "
        f"uploaded {elapsed:.1f} s after the first was recorded"
    )


async def test_a_study_above_the_old_limit_through_the_scp(
    nc: Client, nats_server: NatsServer, tmp_path: Path
) -> None:
    count = 2_400  # the schema 1 StudyComplete of these broke the 1 MB limit
    study, images = tiny_study(count)
    folder = tmp_path / "study"
    folder.mkdir()
    paths = []
    for n, (_, data) in enumerate(images):
        paths.append(folder / f"{n:05d}.dcm")
        paths[-1].write_bytes(data)
    with running_simulator(SimulatorSettings(token=TOKEN, running_polls=10_000)) as (api_url, sim):
        settings = site_settings(nats_server.url, API_URL=api_url, STUDY_QUIET_SECONDS="2")
        async with running_gateway(settings, ("scp", *UPLOAD_PATH)):
            # Four associations, as a modality's queue would: pynetdicom's sender waits ~40 ms
            # for a delayed ACK per instance, whatever the instance's size.
            batches = await asyncio.gather(
                *(
                    asyncio.to_thread(
                        send_files, "127.0.0.1", settings.port, settings.milvue_aet, paths[n::4]
                    )
                    for n in range(4)
                )
            )
            assert [status for batch in batches for _, status in batch] == [0] * count
            uploaded = await wait_for_event(nc, study, of_type(ev.Uploaded), 120)
        snapshot = sim.study(study)
    assert isinstance(uploaded, ev.Uploaded) and uploaded.instance_count == count
    assert snapshot is not None and len(snapshot.instances) == count
