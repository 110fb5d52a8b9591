"""End to end: a DICOM sender, pacsor, the API simulator over HTTP, receiving PACS."""

from __future__ import annotations

import json
from collections import Counter
from io import BytesIO
from pathlib import Path

from nats.aio.client import Client
from pydicom import dcmread

from pacsor.devtools.simulator import SimulatorSettings, running_simulator
from pacsor.domain import events as ev
from pacsor.domain.completion import attempt_instances
from pacsor.jetstream.blobs import BlobStore, sha256_digest
from pacsor.jetstream.eventlog import EventLog
from pacsor.jetstream.subjects import RESULTS_BUCKET
from tests.harness import (
    TOKEN,
    ReceivingPacs,
    dispatched_uids,
    gateway_settings,
    of_type,
    running_gateway,
    send_study,
    wait_for_event,
)
from tests.nats_server import NatsServer, free_port


def is_dispatched_to(destination: str):  # type: ignore[no-untyped-def]
    return lambda e: (
        isinstance(e, (ev.Dispatched, ev.DispatchFailed)) and e.destination == destination
    )


async def test_study_goes_through_to_every_destination(
    nc: Client, nats_server: NatsServer, tmp_path: Path, pacs: ReceivingPacs, archive: ReceivingPacs
) -> None:
    with running_simulator(SimulatorSettings(token=TOKEN, running_polls=2)) as (api_url, sim):
        settings = gateway_settings(
            nats_server.url, api_url, pacs, DESTINATIONS=archive.destination
        )
        async with running_gateway(settings):
            study, sops = await send_study(settings, tmp_path)
            for receiver in (pacs, archive):
                done = await wait_for_event(
                    nc,
                    study,
                    is_dispatched_to(f"{receiver.ae_title}@127.0.0.1:{receiver.port}"),
                    60,
                )
                assert isinstance(done, ev.Dispatched)
        snapshot = sim.study(study)
        assert snapshot is not None and sorted(snapshot.instances) == sorted(sops)

    # Each destination got one result object per image per inference command, each once.
    for receiver in (pacs, archive):
        received = receiver.received
        assert len(received) == 2 * len(sops)
        assert Counter(sop for _, sop, _ in received).most_common(1)[0][1] == 1
        for study_uid, _, data in received:
            assert study_uid == study
            result = dcmread(BytesIO(data))
            assert result.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture
            assert result.SamplesPerPixel == 3

    events = EventLog(nc.jetstream())
    history = [r.event for r in await events.history(study)]
    kinds = [type(e).__name__ for e in history]
    assert kinds[:8] == ["InstanceReceived"] * 3 + [
        "StudyComplete",
        "InstancesUploaded",
        "Uploaded",
        "ResultObjectsListed",
        "ResultReady",
    ]
    assert sorted(kinds[8:]) == ["Dispatched", "Dispatched"]
    complete, batch, uploaded, page, ready = history[3:8]
    assert isinstance(complete, ev.StudyComplete) and complete.attempt == 1
    assert complete.instance_count == len(sops)
    attempt = attempt_instances(await events.history(study), complete.through_sequence)
    assert sorted(i.sop_instance_uid for i in attempt) == sorted(sops)
    assert isinstance(batch, ev.InstancesUploaded)
    assert sorted(i.sop_instance_uid for i in batch.instances) == sorted(sops)
    assert isinstance(uploaded, ev.Uploaded) and (uploaded.core, uploaded.attempt) == ("default", 1)
    assert uploaded.signed_url and uploaded.instance_count == 3  # SIGNED_URL is the default
    assert isinstance(ready, ev.ResultReady) and ready.result_count == 2 * len(sops)
    # The list is in its page, not in the event; the event names it by digest.
    assert isinstance(page, ev.ResultObjectsListed) and ready.results == ()
    listed = await events.result_objects(ready)
    assert listed == page.results and len(listed) == 2 * len(sops)
    assert {r.inference_command for r in listed} == {"smarturgences", "smartxpert"}
    # The JSON findings of both commands are in the results bucket, as the API sent them.
    assert [f.inference_command for f in ready.findings] == ["smarturgences", "smartxpert"]
    store = BlobStore(nc, nc.jetstream(), RESULTS_BUCKET)
    for findings in ready.findings:
        data = await store.get(findings.object_name)
        assert len(data) == findings.size and sha256_digest(data) == findings.digest
        body = json.loads(data)
        assert body["status"] == "done" and body["StudyInstanceUID"] == study
        assert sorted(i["SOPInstanceUID"] for i in body["instances"]) == sorted(sops)


async def test_a_destination_down_never_blocks_the_others(
    nc: Client, nats_server: NatsServer, tmp_path: Path, pacs: ReceivingPacs
) -> None:
    down = f"NOBODY@127.0.0.1:{free_port()}"
    with running_simulator(SimulatorSettings(token=TOKEN, running_polls=0)) as (api_url, _):
        settings = gateway_settings(
            nats_server.url, api_url, pacs, DESTINATIONS=down, RETRY_MAX_ATTEMPTS="3"
        )
        async with running_gateway(settings):
            study, _ = await send_study(settings, tmp_path, images=2)
            ok = await wait_for_event(
                nc, study, is_dispatched_to(settings.all_destinations()[0].__str__())
            )
            failed = await wait_for_event(nc, study, is_dispatched_to(down), 60)
    assert isinstance(ok, ev.Dispatched) and ok.object_count == 4
    assert isinstance(failed, ev.DispatchFailed)
    assert failed.tries == 3 and "NOBODY" in failed.reason
    # The results stay available for a later relaunch.
    ready = await wait_for_event(nc, study, of_type(ev.ResultReady))
    assert isinstance(ready, ev.ResultReady)
    store = BlobStore(nc, nc.jetstream(), RESULTS_BUCKET)
    for result in await EventLog(nc.jetstream()).result_objects(ready):
        assert await store.info(result.object_name) is not None


async def test_a_destination_that_comes_back_gets_the_results(
    nc: Client, nats_server: NatsServer, tmp_path: Path
) -> None:
    late = ReceivingPacs("LATEPACS")
    with running_simulator(SimulatorSettings(token=TOKEN, running_polls=0)) as (api_url, _):
        settings = gateway_settings(nats_server.url, api_url, late, RETRY_MAX_ATTEMPTS="50")
        async with running_gateway(settings):
            study, _ = await send_study(settings, tmp_path, images=1)
            await wait_for_event(nc, study, of_type(ev.ResultReady))
            late.start()  # the PACS comes up after the results are ready
            try:
                done = await wait_for_event(nc, study, of_type(ev.Dispatched), 60)
            finally:
                late.stop()
    assert isinstance(done, ev.Dispatched)
    assert sorted(late.sop_uids()) == sorted(await dispatched_uids(nc, done))


async def test_api_429_and_500_are_retried_until_uploaded(
    nc: Client, nats_server: NatsServer, tmp_path: Path, pacs: ReceivingPacs
) -> None:
    sim_settings = SimulatorSettings(
        token=TOKEN,
        running_polls=1,
        upload_faults=(429, 500),
        result_faults=(503,),
        not_ready_results=1,
    )
    with running_simulator(sim_settings) as (api_url, sim):
        settings = gateway_settings(nats_server.url, api_url, pacs)
        async with running_gateway(settings):
            study, _ = await send_study(settings, tmp_path, images=1)
            done = await wait_for_event(nc, study, of_type(ev.Dispatched), 60)
        assert sim.upload_requests == 3
    assert isinstance(done, ev.Dispatched) and done.object_count == 2
    kinds = [type(r.event).__name__ for r in await EventLog(nc.jetstream()).history(study)]
    assert kinds.count("Uploaded") == 1 and "UploadFailed" not in kinds


async def test_a_refused_token_fails_the_upload_at_once(
    nc: Client, nats_server: NatsServer, tmp_path: Path, pacs: ReceivingPacs
) -> None:
    with running_simulator(SimulatorSettings(token="the-real-token")) as (api_url, sim):
        settings = gateway_settings(nats_server.url, api_url, pacs)
        async with running_gateway(settings):
            study, _ = await send_study(settings, tmp_path, images=1)
            failed = await wait_for_event(nc, study, of_type(ev.UploadFailed), 30)
    assert isinstance(failed, ev.UploadFailed)
    assert failed.http_status == 403 and failed.tries == 1
    assert sim.study(study) is None


async def test_a_destination_added_later_gets_only_new_studies(
    nc: Client, nats_server: NatsServer, tmp_path: Path, pacs: ReceivingPacs, archive: ReceivingPacs
) -> None:
    with running_simulator(SimulatorSettings(token=TOKEN, running_polls=0)) as (api_url, _):
        before = gateway_settings(nats_server.url, api_url, pacs)
        async with running_gateway(before):
            old, _ = await send_study(before, tmp_path / "old", images=1)
            await wait_for_event(nc, old, of_type(ev.Dispatched))
        # The site adds an archive; the PACS's consumer resumes where it was.
        after = gateway_settings(nats_server.url, api_url, pacs, DESTINATIONS=archive.destination)
        async with running_gateway(after):
            new, _ = await send_study(after, tmp_path / "new", images=1)
            await wait_for_event(nc, new, is_dispatched_to(archive.destination))
            await wait_for_event(nc, new, is_dispatched_to(pacs.destination))
    assert {study for study, _, _ in archive.received} == {new}
    assert [study for study, _, _ in pacs.received].count(old) == 2  # sent once, not again


async def test_two_replicas_share_the_work_and_complete_each_study_once(
    nc: Client, nats_server: NatsServer, tmp_path: Path, pacs: ReceivingPacs
) -> None:
    with running_simulator(SimulatorSettings(token=TOKEN, running_polls=1)) as (api_url, sim):
        first = gateway_settings(nats_server.url, api_url, pacs)
        second = gateway_settings(nats_server.url, api_url, pacs)
        handlers = ("quiet-timer", "completion", "uploader", "poller", "dispatcher")
        async with running_gateway(first), running_gateway(second, handlers):
            studies = [await send_study(first, tmp_path / str(n), images=2) for n in range(4)]
            for study, _ in studies:
                await wait_for_event(nc, study, of_type(ev.Dispatched), 60)
        for study, _ in studies:
            snapshot = sim.study(study)
            assert snapshot is not None and snapshot.uploads == 1
    for study, _ in studies:
        kinds = Counter(
            type(r.event).__name__ for r in await EventLog(nc.jetstream()).history(study)
        )
        assert kinds["StudyComplete"] == kinds["Uploaded"] == kinds["ResultReady"] == 1
        assert kinds["Dispatched"] == 1
    delivered = Counter(pacs.sop_uids())
    assert len(delivered) == 4 * 2 * 2 and set(delivered.values()) == {1}
    # Both replicas' durable consumers are the same ones: the work was shared, not doubled.
    info = await nc.jetstream().consumer_info("PACSOR", "upload-default")
    assert info.num_pending == 0 and info.num_ack_pending == 0


async def test_no_result_in_time_is_a_result_failed(
    nc: Client, nats_server: NatsServer, tmp_path: Path, pacs: ReceivingPacs
) -> None:
    with running_simulator(SimulatorSettings(token=TOKEN, running_polls=10_000)) as (api_url, sim):
        settings = gateway_settings(nats_server.url, api_url, pacs, RESULT_TIMEOUT_SECONDS="1.5")
        async with running_gateway(settings):
            study, _ = await send_study(settings, tmp_path, images=1)
            failed = await wait_for_event(nc, study, of_type(ev.ResultFailed), 30)
        snapshot = sim.study(study)
        assert snapshot is not None and snapshot.status_polls >= 2  # it did poll, then gave up
    assert isinstance(failed, ev.ResultFailed)
    assert failed.reason.startswith("no result 1.5 s after upload")
    assert pacs.received == []
