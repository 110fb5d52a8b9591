"""The whole Milvue contract end to end: pacsor against the simulator over real HTTP, in each
mode (multipart STOW, signed URLs) and under each fault and answer the simulator can give."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import pytest
from nats.aio.client import Client

from pacsor.devtools.simulator import SimulatorSettings, SimulatorState, running_simulator
from pacsor.domain import events as ev
from pacsor.jetstream.eventlog import EventLog
from tests.dicom_factory import make_image, new_uid
from tests.harness import (
    TOKEN,
    ReceivingPacs,
    gateway_settings,
    images,
    of_type,
    running_gateway,
    send_datasets,
    wait_for_event,
)
from tests.nats_server import NatsServer

FINAL = (ev.Dispatched, ev.ResultFailed, ev.UploadFailed, ev.NothingToUpload)


async def history(nc: Client, study: str) -> list[ev.AnyEvent]:
    return [r.event for r in await EventLog(nc.jetstream()).history(study)]


async def final_event(nc: Client, study: str, timeout: float = 60) -> ev.AnyEvent:
    return await wait_for_event(nc, study, lambda e: isinstance(e, FINAL), timeout)


def received_once(sim: SimulatorState, study: str, count: int) -> None:
    snapshot = sim.study(study)
    assert snapshot is not None
    assert len(snapshot.instances) == count and set(snapshot.instances.values()) == {1}


async def send_through(
    nc: Client,
    nats_server: NatsServer,
    folder: Path,
    pacs: ReceivingPacs,
    sim_settings: SimulatorSettings,
    count: int,
    **extra: str,
) -> tuple[str, ev.AnyEvent, int]:
    """Send `count` images through the whole pipeline, checking that the simulator received
    each once: (study, final event, the most PUTs the simulator was answering at once)."""
    with running_simulator(sim_settings) as (api_url, sim):
        settings = gateway_settings(nats_server.url, api_url, pacs, **extra)
        async with running_gateway(settings):
            study = await send_datasets(settings, folder, images(count))
            done = await final_event(nc, study, 90)
        received_once(sim, study, count)
        return study, done, sim.max_puts_in_flight


@pytest.mark.parametrize("signed", ["true", "false"])
async def test_each_mode_in_batches_with_transient_faults(
    nc: Client, nats_server: NatsServer, tmp_path: Path, pacs: ReceivingPacs, signed: str
) -> None:
    """429 (Retry-After), 5xx and a dropped connection at upload, not-ready results after
    done: every one retried, each instance uploaded once, every result delivered once."""
    sim_settings = SimulatorSettings(
        token=TOKEN,
        running_polls=1,
        upload_faults=(429, 502),
        put_faults=(503,),
        status_faults=(500,),
        result_faults=(503,),
        not_ready_results=2,
        drop_connections=1,
        signed_url="require" if signed == "true" else "refuse",
    )
    # One PUT at a time, so that the batches below are exact (see the next test).
    study, done, _ = await send_through(
        nc,
        nats_server,
        tmp_path,
        pacs,
        sim_settings,
        5,
        SIGNED_URL=signed,
        UPLOAD_BATCH_SIZE="2",
        UPLOAD_CONCURRENCY="1",
    )
    assert isinstance(done, ev.Dispatched) and len(done.sop_instance_uids) == 10
    assert Counter(pacs.sop_uids()).most_common(1)[0][1] == 1
    events = await history(nc, study)
    batches = [e for e in events if isinstance(e, ev.InstancesUploaded)]
    assert [(b.batch, len(b.instances)) for b in batches] == [(1, 2), (2, 2), (3, 1)]
    [uploaded] = [e for e in events if isinstance(e, ev.Uploaded)]
    assert uploaded.instance_count == 5 and uploaded.signed_url == (signed == "true")


async def test_signed_url_puts_go_several_at_a_time_and_a_failure_loses_none(
    nc: Client, nats_server: NatsServer, tmp_path: Path, pacs: ReceivingPacs
) -> None:
    """UPLOAD_CONCURRENCY PUTs in flight at once. The first PUT fails: no other starts, those
    in flight finish and are recorded, and the retry PUTs only the rest."""
    sim_settings = SimulatorSettings(
        token=TOKEN, running_polls=1, put_faults=(503,), latency_seconds=0.2
    )
    study, done, most_puts_at_once = await send_through(
        nc,
        nats_server,
        tmp_path,
        pacs,
        sim_settings,
        12,
        SIGNED_URL="true",
        UPLOAD_BATCH_SIZE="8",
        UPLOAD_CONCURRENCY="4",
    )
    assert most_puts_at_once == 4
    assert isinstance(done, ev.Dispatched)
    events = await history(nc, study)
    batches = [e for e in events if isinstance(e, ev.InstancesUploaded)]
    # The three PUTs beside the failed one, then the other nine in batches of eight.
    assert [len(b.instances) for b in batches] == [3, 8, 1]
    uploaded = Counter(i.sop_instance_uid for b in batches for i in b.instances)
    assert len(uploaded) == 12 and set(uploaded.values()) == {1}
    [upload] = [e for e in events if isinstance(e, ev.Uploaded)]
    assert upload.instance_count == 12


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [("error", "Simulated inference error"), ("forbidden", "licence does not cover")],
)
async def test_error_and_forbidden_fail_with_the_api_message_and_no_retry(
    nc: Client,
    nats_server: NatsServer,
    tmp_path: Path,
    pacs: ReceivingPacs,
    outcome: str,
    expected: str,
) -> None:
    sim_settings = SimulatorSettings(token=TOKEN, running_polls=0, outcome=outcome)  # type: ignore[arg-type]
    with running_simulator(sim_settings) as (api_url, sim):
        settings = gateway_settings(nats_server.url, api_url, pacs)
        async with running_gateway(settings):
            study = await send_datasets(settings, tmp_path, images(1))
            failed = await final_event(nc, study)
            await asyncio.sleep(1.0)  # time for a retry, were there one
        snapshot = sim.study(study)
    assert isinstance(failed, ev.ResultFailed) and expected in failed.reason
    assert snapshot is not None and snapshot.status_polls == 1
    assert snapshot.result_requests == (1 if outcome == "forbidden" else 0)
    assert pacs.received == []


async def test_empty_results_are_ready_with_nothing_to_dispatch(
    nc: Client, nats_server: NatsServer, tmp_path: Path, pacs: ReceivingPacs
) -> None:
    sim_settings = SimulatorSettings(token=TOKEN, running_polls=0, outcome="empty")
    with running_simulator(sim_settings) as (api_url, _):
        settings = gateway_settings(nats_server.url, api_url, pacs)
        async with running_gateway(settings):
            study = await send_datasets(settings, tmp_path, images(2))
            ready = await wait_for_event(nc, study, of_type(ev.ResultReady))
            await asyncio.sleep(1.5)  # the dispatcher had its chance
    assert isinstance(ready, ev.ResultReady) and ready.results == ()
    assert [f.inference_command for f in ready.findings] == ["smarturgences", "smartxpert"]
    kinds = [type(e).__name__ for e in await history(nc, study)]
    assert "Dispatched" not in kinds and "DispatchFailed" not in kinds
    assert pacs.received == []


@pytest.mark.parametrize("status", [400, 403, 404, 422])
async def test_a_refused_upload_fails_at_once_with_the_api_message(
    nc: Client, nats_server: NatsServer, tmp_path: Path, pacs: ReceivingPacs, status: int
) -> None:
    with running_simulator(SimulatorSettings(token=TOKEN, upload_faults=(status,))) as (url, sim):
        settings = gateway_settings(nats_server.url, url, pacs)
        async with running_gateway(settings):
            study = await send_datasets(settings, tmp_path, images(1))
            failed = await final_event(nc, study)
        assert sim.upload_requests == 1
    assert isinstance(failed, ev.UploadFailed)
    assert (failed.http_status, failed.tries) == (status, 1)
    message = (
        "simulated validation error" if status == 422 else f"Simulated failure (HTTP {status})"
    )
    assert message in failed.reason


async def test_retry_after_is_honoured(
    nc: Client, nats_server: NatsServer, tmp_path: Path, pacs: ReceivingPacs
) -> None:
    # RETRY_INITIAL_SECONDS is 0.2 here; the simulator's 429 says Retry-After: 1.
    with running_simulator(SimulatorSettings(token=TOKEN, upload_faults=(429,))) as (url, sim):
        settings = gateway_settings(nats_server.url, url, pacs, SIGNED_URL="false")
        async with running_gateway(settings):
            study = await send_datasets(settings, tmp_path, images(1))
            complete = await wait_for_event(nc, study, of_type(ev.StudyComplete))
            uploaded = await wait_for_event(nc, study, of_type(ev.Uploaded), 30)
        assert sim.upload_requests == 2
    assert (uploaded.occurred_at - complete.occurred_at).total_seconds() >= 1.0


FILTERS = json.dumps(
    [
        {"tag": {"group": "0010", "element": "0010"}, "pattern": "^TEST.*", "should_match": False},
        {"tag": {"group": "0008", "element": "0060"}, "pattern": "^SR$", "should_match": True},
    ]
)


@pytest.mark.parametrize("signed", ["true", "false"])
async def test_filters_end_to_end(
    nc: Client, nats_server: NatsServer, tmp_path: Path, pacs: ReceivingPacs, signed: str
) -> None:
    study = new_uid()
    cases = {
        "TEST SR": make_image(study, PatientName="TEST", modality="SR"),
        "NOT_A_TEST SR": make_image(study, PatientName="NOT_A_TEST", modality="SR"),
        "NOT_A_TEST DX": make_image(study, PatientName="NOT_A_TEST", modality="DX"),
        "NOT_A_TEST none": make_image(study, PatientName="NOT_A_TEST"),
    }
    del cases["NOT_A_TEST none"].Modality
    sop = {name: str(ds.SOPInstanceUID) for name, ds in cases.items()}
    everything_filtered = images(2, PatientName="TEST^ALL")
    with running_simulator(SimulatorSettings(token=TOKEN, running_polls=0)) as (url, sim):
        settings = gateway_settings(
            nats_server.url, url, pacs, DICOM_FILTERS=FILTERS, SIGNED_URL=signed
        )
        async with running_gateway(settings):
            await send_datasets(settings, tmp_path / "mixed", list(cases.values()))
            other = await send_datasets(settings, tmp_path / "filtered", everything_filtered)
            done = await final_event(nc, study)
            nothing = await final_event(nc, other)
        snapshot = sim.study(study)
        assert sim.study(other) is None  # nothing left: not uploaded
    assert snapshot is not None
    assert sorted(snapshot.instances) == sorted([sop["NOT_A_TEST SR"], sop["NOT_A_TEST none"]])
    assert isinstance(done, ev.Dispatched) and len(done.sop_instance_uids) == 4
    [skipped] = [e for e in await history(nc, study) if isinstance(e, ev.InstancesSkipped)]
    assert {s.sop_instance_uid: (s.reason, s.rule) for s in skipped.skipped} == {
        sop["TEST SR"]: ("filtered", "rule 1: (0010,0010) must not match ^TEST.*"),
        sop["NOT_A_TEST DX"]: ("filtered", "rule 2: (0008,0060) must match ^SR$"),
    }
    assert isinstance(nothing, ev.NothingToUpload) and nothing.skipped_count == 2
    assert nothing.reason.startswith("all 2 instances filtered out: 2 filtered (rule 1")


async def test_no_duplicate_upload_unless_a_person_relaunches(
    nc: Client, nats_server: NatsServer, tmp_path: Path, pacs: ReceivingPacs
) -> None:
    study = new_uid()
    first, later = images(2, study), images(1, study)
    with running_simulator(SimulatorSettings(token=TOKEN, running_polls=0)) as (url, sim):
        settings = gateway_settings(nats_server.url, url, pacs)
        async with running_gateway(settings):
            await send_datasets(settings, tmp_path / "first", first)
            await wait_for_event(nc, study, lambda e: isinstance(e, ev.Dispatched))
            # The modality sends the study again later, with one new image.
            await send_datasets(settings, tmp_path / "again", [*first, *later])
            second = await wait_for_event(
                nc, study, lambda e: isinstance(e, ev.Dispatched) and e.attempt == 2
            )
            received_once(sim, study, 3)
            # A person relaunches: everything is uploaded again.
            [*_, complete] = [
                e for e in await history(nc, study) if isinstance(e, ev.StudyComplete)
            ]
            assert isinstance(complete, ev.StudyComplete)
            relaunch = ev.StudyComplete(
                study_uid=study,
                attempt=3,
                instance_count=complete.instance_count,
                through_sequence=complete.through_sequence,
                reason="relaunch",
                relaunch=True,
                requested_by="alice",
            )
            await EventLog(nc.jetstream()).publish(relaunch)
            third = await wait_for_event(
                nc, study, lambda e: isinstance(e, ev.Dispatched) and e.attempt == 3
            )
        snapshot = sim.study(study)
    assert isinstance(second, ev.Dispatched) and isinstance(third, ev.Dispatched)
    assert snapshot is not None and set(snapshot.instances.values()) == {2}
    uploads = {e.attempt: e for e in await history(nc, study) if isinstance(e, ev.Uploaded)}
    assert [(u.instance_count, u.skipped_count) for u in uploads.values()] == [
        (2, 0),
        (1, 2),
        (3, 0),
    ]
    [skipped] = [e for e in await history(nc, study) if isinstance(e, ev.InstancesSkipped)]
    assert {s.reason for s in skipped.skipped} == {"already uploaded"}
    assert sorted(s.sop_instance_uid for s in skipped.skipped) == sorted(
        str(ds.SOPInstanceUID) for ds in first
    )


async def test_an_interrupted_upload_resumes_after_the_last_recorded_batch(
    nc: Client, nats_server: NatsServer, tmp_path: Path, pacs: ReceivingPacs
) -> None:
    # As if an uploader had sent batch 1 of attempt 1, recorded it, and crashed.
    study = new_uid()
    datasets = images(4, study)
    done_before = ev.InstancesUploaded(
        study_uid=study,
        core="default",
        attempt=1,
        batch=1,
        instances=tuple(
            ev.UploadedInstance(sop_instance_uid=str(ds.SOPInstanceUID), digest="x")
            for ds in datasets[:2]
        ),
    )
    await EventLog(nc.jetstream()).publish(done_before)
    with running_simulator(SimulatorSettings(token=TOKEN, running_polls=0)) as (url, sim):
        settings = gateway_settings(nats_server.url, url, pacs, UPLOAD_BATCH_SIZE="2")
        async with running_gateway(settings):
            await send_datasets(settings, tmp_path, datasets)
            await final_event(nc, study)
        snapshot = sim.study(study)
    assert snapshot is not None
    assert sorted(snapshot.instances) == sorted(str(ds.SOPInstanceUID) for ds in datasets[2:])
    events = await history(nc, study)
    [uploaded] = [e for e in events if isinstance(e, ev.Uploaded)]
    assert uploaded.instance_count == 4
    assert [e.batch for e in events if isinstance(e, ev.InstancesUploaded)] == [1, 2]


async def test_two_cores_one_always_failing(
    nc: Client, nats_server: NatsServer, tmp_path: Path, pacs: ReceivingPacs
) -> None:
    """Every study goes to every core; the healthy core delivers to its own destinations on
    time while the other core is down, and the failing core ends in a recorded failure."""
    precert_pacs = ReceivingPacs("PRECERT").start()
    try:
        with (
            running_simulator(SimulatorSettings(token=TOKEN, running_polls=1)) as (url, sim),
            running_simulator(
                SimulatorSettings(token=TOKEN, always_fail=503, latency_seconds=0.5)
            ) as (down_url, down),
        ):
            settings = gateway_settings(
                nats_server.url,
                url,
                pacs,
                API_URL_1=down_url,
                TOKEN_1=TOKEN,
                CORE_NAME_1="precert",
                SIGNED_URL_1="false",
                INFERENCE_COMMANDS_1="detection",
                DESTINATIONS_1=precert_pacs.destination,
                RETRY_MAX_ATTEMPTS="4",
            )
            async with running_gateway(settings):
                study = await send_datasets(settings, tmp_path, images(2))
                complete = await wait_for_event(nc, study, of_type(ev.StudyComplete))
                healthy = await wait_for_event(
                    nc, study, lambda e: isinstance(e, ev.Dispatched) and e.core == "default"
                )
                failing = await wait_for_event(
                    nc, study, lambda e: isinstance(e, ev.UploadFailed) and e.core == "precert"
                )
            received_once(sim, study, 2)
            assert down.study(study) is None
    finally:
        precert_pacs.stop()
    # On time: the healthy core did not wait for the other core's retries.
    assert isinstance(healthy, ev.Dispatched) and healthy.destination == pacs.destination
    assert (healthy.occurred_at - complete.occurred_at).total_seconds() < 5
    assert healthy.occurred_at < failing.occurred_at
    assert isinstance(failing, ev.UploadFailed)
    assert (failing.http_status, failing.tries) == (503, 4) and "HTTP 503" in failing.reason
    assert len(pacs.received) == 4 and precert_pacs.received == []
    cores = {(type(e).__name__, getattr(e, "core", "")) for e in await history(nc, study)}
    assert ("Uploaded", "precert") not in cores and ("ResultReady", "default") in cores
