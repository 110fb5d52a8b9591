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

from nats.aio.client import Client
from pydicom.uid import ComputedRadiographyImageStorage as CR
from pydicom.uid import ExplicitVRLittleEndian as EXPLICIT_VR_LITTLE_ENDIAN
from pydicom.uid import generate_uid

from pacsor.config import Settings, load_settings
from pacsor.devtools.sample_study import make_image, to_bytes
from pacsor.devtools.simulator import SimulatorSettings, running_simulator
from pacsor.dicom.storage_scu import send_files
from pacsor.domain import events as ev
from pacsor.jetstream.blobs import BlobStore, digest_hex, sha256_digest
from pacsor.jetstream.eventlog import EventLog
from pacsor.jetstream.subjects import INSTANCES_BUCKET, instance_object_name
from tests.harness import of_type, running_gateway, wait_for_event
from tests.nats_server import NatsServer, free_port

TOKEN = "test-token"
UPLOAD_PATH = ("quiet-timer", "completion", "uploader")


def settings_for(nats_url: str, api_url: str, **extra: str) -> Settings:
    return load_settings(
        {
            "NATS_URL": nats_url,
            "PORT": str(free_port()),
            "API_URL": api_url,
            "TOKEN": TOKEN,
            "STUDY_QUIET_SECONDS": "2",
            "RETRY_INITIAL_SECONDS": "0.2",
            **extra,
        },
        dotenv=None,
    )


def tiny_study(count: int) -> tuple[str, list[tuple[str, bytes]]]:
    """A study of `count` 4x4 images: one encoded image, its SOP Instance UID replaced by
    others of the same length (pydicom takes milliseconds per file; this, microseconds)."""
    study, series, base = str(generate_uid()), str(generate_uid()), str(generate_uid())[:40]
    uids = [f"{base}.{1_000_000 + n}" for n in range(count)]
    template = to_bytes(make_image(study, series_uid=series, sop_uid=uids[0], rows=4, columns=4))
    return study, [(uid, template.replace(uids[0].encode(), uid.encode())) for uid in uids]


async def record_as_the_scp(nc: Client, study: str, images: list[tuple[str, bytes]]) -> None:
    """Store each image and publish its InstanceReceived, as the SCP does after a C-STORE."""
    js = nc.jetstream()
    store, log = BlobStore(nc, js, INSTANCES_BUCKET), EventLog(js)

    async def one(sop: str, data: bytes) -> None:
        digest = sha256_digest(data)
        name = instance_object_name(study, sop, digest_hex(digest))
        await store.put(name, data, digest)
        await log.publish(
            ev.InstanceReceived(
                study_instance_uid=study,
                series_instance_uid="1.2.3",
                sop_instance_uid=sop,
                sop_class_uid=str(CR),
                transfer_syntax_uid=str(EXPLICIT_VR_LITTLE_ENDIAN),
                modality="CR",
                calling_ae_title="BULK",
                object_name=name,
                size=len(data),
                digest=digest,
            )
        )

    for start in range(0, len(images), 500):
        await asyncio.gather(*(one(sop, data) for sop, data in images[start : start + 500]))


def instances_from_env(default: int) -> int:
    """PACSOR_LARGE_STUDY scales the study up (the README's 20,000-instance figure)."""
    return int(os.environ.get("PACSOR_LARGE_STUDY", default))


async def test_a_study_above_the_old_limit_is_uploaded_whole(
    nc: Client, nats_server: NatsServer
) -> None:
    count = instances_from_env(3_000)
    study, images = tiny_study(count)
    with running_simulator(SimulatorSettings(token=TOKEN, running_polls=10_000)) as (api_url, sim):
        settings = settings_for(nats_server.url, api_url)
        async with running_gateway(settings, UPLOAD_PATH):
            started = time.monotonic()
            await record_as_the_scp(nc, study, images)
            uploaded = await wait_for_event(nc, study, of_type(ev.Uploaded), 60 + count / 50)
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
    print(f"{count} instances recorded and uploaded in {elapsed:.1f} s")


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
        settings = settings_for(nats_server.url, api_url)
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
