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
from collections import Counter
from pathlib import Path

import pytest
from nats.aio.client import Client

from pacsor.devtools.bulk_study import record_as_the_scp, tiny_study
from pacsor.devtools.simulator import SimulatorSettings, running_simulator
from pacsor.dicom.storage_scu import send_files
from pacsor.domain import events as ev
from pacsor.jetstream.blobs import BlobStore
from pacsor.jetstream.broker import apply_streams
from pacsor.jetstream.dispatch_progress import DispatchProgress
from pacsor.jetstream.eventlog import EventLog
from pacsor.jetstream.subjects import (
    DISPATCH_PROGRESS_BUCKET,
    INSTANCES_BUCKET,
    dispatch_progress_key,
)
from tests.harness import (
    TOKEN,
    ReceivingPacs,
    dispatched_uids,
    gateway_settings,
    of_type,
    running_gateway,
    site_settings,
    wait_for_event,
)
from tests.nats_server import NatsServer

STUDY_OF_PROGRESS = "1.2.826.0.1.3680043.10.1.20000"

UPLOAD_PATH = ("quiet-timer", "completion", "uploader")
RESULT_PATH = ("uploader", "poller", "dispatcher")


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


RESULT_STUDY = int(os.environ.get("PACSOR_LARGE_RESULTS", 4_000))


@pytest.mark.timeout(900)
async def test_a_study_with_a_result_per_instance_is_dispatched_whole(
    nc: Client, nats_server: NatsServer, pacs: ReceivingPacs
) -> None:
    """An API answering one result object per input image, 4,000 of them: the list is far
    over 1 MB as JSON. ResultReady and Dispatched stay small, the list is recorded in pages,
    and the PACS receives every result object once."""
    count = RESULT_STUDY
    study, images = tiny_study(count)
    with running_simulator(SimulatorSettings(token=TOKEN, running_polls=0)) as (api_url, _):
        settings = gateway_settings(
            nats_server.url,
            api_url,
            pacs,
            STUDY_QUIET_SECONDS="2",
            INFERENCE_COMMANDS="smarturgences",  # one result object per instance
            RETRY_INITIAL_SECONDS="0.2",
        )
        async with running_gateway(settings, ("quiet-timer", "completion", *RESULT_PATH)):
            js = nc.jetstream()
            await record_as_the_scp(
                BlobStore(nc, js, INSTANCES_BUCKET), EventLog(js), study, images
            )
            done = await wait_for_event(
                nc, study, lambda e: isinstance(e, ev.Dispatched | ev.DispatchFailed), 840
            )
    assert isinstance(done, ev.Dispatched), done
    assert done.object_count == count and len(ev.encode(done)) < 1024
    ready = await wait_for_event(nc, study, of_type(ev.ResultReady))
    assert isinstance(ready, ev.ResultReady) and ready.result_count == count
    assert len(ev.encode(ready)) < 2048 and ready.result_pages == -(-count // ev.RESULTS_PAGE_SIZE)
    received = pacs.sop_uids()
    listed = await dispatched_uids(nc, done)
    assert len(listed) == len(set(listed)) == count
    # Every result reached the PACS. Delivery is at least once: on a loaded machine a PACS
    # answer later than the DIMSE timeout makes a C-STORE go again (logged by pynetdicom);
    # that stays rare, never a second pass over the list.
    assert set(received) == set(listed)
    assert len(received) - count <= count // 100, f"{len(received) - count} sent twice"
    history = [r.event for r in await EventLog(nc.jetstream()).history(study)]
    kinds = Counter(type(e).__name__ for e in history)
    at = {type(e).__name__: e.occurred_at for e in history}
    print(
        f"{count} results: "
        + ", ".join(f"{k} +{(at[k] - at['StudyComplete']).total_seconds():.1f} s" for k in at)
    )
    assert kinds["ResultReady"] == 1 and kinds["Dispatched"] == 1
    assert "ResultFailed" not in kinds and "DispatchFailed" not in kinds


async def test_the_progress_of_20000_results_fits_a_message_and_an_older_value_still_reads(
    nc: Client,
) -> None:
    """A destination's progress for a study with 20,000 result objects, in the real bucket:
    kept by position, it is a few bytes; a value of the version keyed by SOP UID reads."""
    await apply_streams(nc)
    uids = [f"1.2.826.0.1.3680043.8.498.{n:038d}" for n in range(20_000)]
    store = DispatchProgress(nc.jetstream())
    key = dispatch_progress_key(STUDY_OF_PROGRESS, "default", 1, "PACS@127.0.0.1:104")
    await store.record(key, uids, [(sop, 0x0000) for sop in uids[:15_000]])
    progress = await store.record(key, uids, [(sop, 0x0000) for sop in uids[15_000:]])
    assert len(progress.delivered) == 20_000
    assert await store.get(key, uids) == progress
    kv = await nc.jetstream().key_value(DISPATCH_PROGRESS_BUCKET)
    assert len((await kv.get(key)).value or b"") < 200
    # Written by the version before: keyed by UID, it still says what was delivered.
    older = dispatch_progress_key(STUDY_OF_PROGRESS, "default", 2, "PACS@127.0.0.1:104")
    await kv.put(
        older, b'{"tries":1,"delivered":{"%s":0},"refused":{},"failing":{}}' % uids[1].encode()
    )
    assert (await store.get(older, uids)).delivered == {uids[1]: 0}
    assert set((await store.record(older, uids, [(uids[2], 0x0000)])).delivered) == set(uids[1:3])
