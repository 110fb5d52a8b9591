"""Faults with real parts: a nats-server restart during a send, a PACS refusing objects, an
instance resent with other bytes, rejected associations. Each failed before its fix."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from nats.aio.client import Client
from pacsor.consumers.study_completion import complete_study
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import ComputedRadiographyImageStorage, Verification

from pacsor.config import Settings
from pacsor.devtools.sample_study import make_image, make_study
from pacsor.devtools.simulator import SimulatorSettings, running_simulator
from pacsor.dicom.storage_scu import send_files
from pacsor.domain import events as ev
from pacsor.domain.completion import HOLD_LEASE, Hold
from pacsor.jetstream.blobs import BlobStore, digest_hex
from pacsor.jetstream.eventlog import EventLog
from pacsor.jetstream.handler_runner import Delivery, Emit
from pacsor.jetstream.holds import Holds
from pacsor.jetstream.quiet_timers import QuietElapsed, QuietTimers
from pacsor.jetstream.subjects import INSTANCES_BUCKET
from pacsor.process.counters import ASSOCIATIONS_REJECTED, CONTEXTS_REJECTED
from tests.harness import (
    TOKEN,
    ReceivingPacs,
    dispatched_uids,
    gateway_settings,
    of_type,
    running_gateway,
    wait_for_event,
    write_study,
)
from tests.nats_server import NatsServer

INGEST = ("scp", "quiet-timer", "completion")
UPLOAD = (*INGEST, "uploader")


async def count_events(nc: Client, study: str) -> Counter[str]:
    return Counter(type(r.event).__name__ for r in await EventLog(nc.jetstream()).history(study))


# --- A nats-server restart during a send does not split the study ---------------------------


class PatientModality:
    """Sends files over one association, resending each refused one after `backoff` seconds,
    as a modality's queue does; pauses after `pause_after` files until `resume` is set."""

    def __init__(self, settings: Settings, paths: list[Path], pause_after: int, backoff: float):
        self.settings, self.paths = settings, paths
        self.pause_after, self.backoff = pause_after, backoff
        self.paused, self.resume = threading.Event(), threading.Event()
        self.answers: list[tuple[int, float]] = []  # (status, seconds to answer)

    def run(self) -> None:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(ComputedRadiographyImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", self.settings.port, ae_title=self.settings.milvue_aet)
        assert assoc.is_established
        try:
            for n, path in enumerate(self.paths, start=1):
                while True:
                    started = time.monotonic()
                    status = int(assoc.send_c_store(path).Status)
                    self.answers.append((status, time.monotonic() - started))
                    if status == 0:
                        break
                    time.sleep(self.backoff)
                if n == self.pause_after:
                    self.paused.set()
                    self.resume.wait(30)
        finally:
            assoc.release()


async def test_a_nats_restart_during_a_send_does_not_split_the_study(
    nc: Client, nats_server: NatsServer, tmp_path: Path
) -> None:
    """The sender stays connected, waiting to resend what was refused while JetStream was away:
    the study's quiet period (2 s) runs out meanwhile, but the SCP holds the study."""
    settings = gateway_settings(
        nats_server.url,
        "http://127.0.0.1:9",
        ReceivingPacs(),
        STUDY_QUIET_SECONDS="2",
        SCP_STORE_TIMEOUT_SECONDS="1",
    )
    study = make_study(30, rows=32, columns=32)
    study_uid = str(study[0].StudyInstanceUID)
    modality = PatientModality(settings, write_study(tmp_path, study), pause_after=10, backoff=4)
    async with running_gateway(settings, INGEST):
        sending = asyncio.create_task(asyncio.to_thread(modality.run))
        assert await asyncio.to_thread(modality.paused.wait, 30)
        nats_server.stop()
        modality.resume.set()  # its next C-STORE is refused: it waits 4 s, then resends
        await asyncio.sleep(2.5)  # the study's timer falls due while the server is away
        nats_server.start()
        await sending
        complete = await wait_for_event(nc, study_uid, of_type(ev.StudyComplete), 30)
        await asyncio.sleep(3)  # a second completion would come within the quiet period
    refused = [seconds for status, seconds in modality.answers if status == 0xA700]
    assert refused, "the restart did not refuse any C-STORE"
    assert max(refused) < 1.5  # answered within SCP_STORE_TIMEOUT_SECONDS, not 15 s later
    assert isinstance(complete, ev.StudyComplete) and complete.instance_count == 30
    counts = await count_events(nc, study_uid)
    assert counts["StudyComplete"] == 1 and counts["InstanceReceived"] == 30


async def test_a_look_at_an_open_association_does_not_hold_the_study_past_its_close(
    nats_server: NatsServer, nc: Client
) -> None:
    """The completion reads a study's hold still open and arms its next look, a lease later,
    just after the SCP, closing the association, armed the quiet period from the close: the
    study completes a quiet period after the close, not a lease later (it did, before the
    look had a schedule of its own)."""
    settings = gateway_settings(
        nats_server.url, "http://127.0.0.1:9", ReceivingPacs(), STUDY_QUIET_SECONDS="2"
    )
    js = nc.jetstream()
    events, timers, holds = EventLog(js), QuietTimers(js), Holds(js)
    study = str(generate_uid())
    arrived = ev.utc_now() - timedelta(seconds=3)
    await events.publish(
        ev.InstanceReceived(
            study_uid=study,
            series_instance_uid=str(generate_uid()),
            sop_instance_uid=str(generate_uid()),
            sop_class_uid=str(ComputedRadiographyImageStorage),
            transfer_syntax_uid=str(ExplicitVRLittleEndian),
            object_name=f"{study}/1/00",
            size=10,
            digest="00",
            occurred_at=arrived,
        )
    )
    await holds.put(study, Hold(holder="scp-a", associations=1, heartbeat_at=ev.utc_now()))
    closed = ev.utc_now()
    await timers.arm(study, closed + settings.quiet_period)  # the SCP, as the association closes
    fired = QuietElapsed(study, arrived + settings.quiet_period)
    look = await complete_study(
        fired, Delivery("", 1, 1), events, timers, holds, settings.quiet_period
    )
    assert look == Emit()  # it saw the hold open, and armed its next look
    await holds.put(
        study, Hold(holder="scp-a", associations=0, heartbeat_at=closed, released_at=closed)
    )
    async with running_gateway(settings, ("completion",)):
        complete = await wait_for_event(
            nc, study, of_type(ev.StudyComplete), (HOLD_LEASE / 2).total_seconds()
        )
    assert complete.occurred_at - closed >= settings.quiet_period


# --- Dispatch remembers what each destination accepted -------------------------------------


async def test_a_pacs_that_refuses_objects_for_good(
    nc: Client, nats_server: NatsServer, tmp_path: Path
) -> None:
    """It accepts the first object, then answers 0xC000 to everything: one try, the accepted
    object is never sent again, and DispatchFailed lists each object with its status."""
    refusing = ReceivingPacs("REFUSING", answer=lambda n, sop: 0x0000 if n == 0 else 0xC000)
    refusing.start()
    try:
        with running_simulator(SimulatorSettings(token=TOKEN, running_polls=0)) as (api_url, _):
            settings = gateway_settings(nats_server.url, api_url, refusing, RETRY_MAX_ATTEMPTS="4")
            async with running_gateway(settings):
                study = make_study(2, rows=32, columns=32)
                study_uid = str(study[0].StudyInstanceUID)
                paths = write_study(tmp_path, study)
                await asyncio.to_thread(
                    send_files, "127.0.0.1", settings.port, settings.milvue_aet, paths
                )
                failed = await wait_for_event(nc, study_uid, of_type(ev.DispatchFailed), 60)
                await asyncio.sleep(1.5)  # longer than the retry delays: no other try comes
    finally:
        refusing.stop()
    assert isinstance(failed, ev.DispatchFailed)
    [accepted] = refusing.sop_uids()
    assert [sop for sop, _ in refusing.calls].count(accepted) == 1
    assert len(refusing.calls) == 4  # each of the 4 result objects sent once
    assert failed.tries == 1  # a refusal for good is not retried
    assert (failed.delivered_count, failed.refused_count, failed.undelivered_count) == (1, 3, 0)
    assert {o.status for o in failed.refused} == {0xC000} and len(failed.refused) == 3
    assert accepted not in {o.sop_instance_uid for o in failed.refused}
    assert failed.undelivered == ()
    assert "1 delivered, 3 refused (0xC000)" in failed.reason


async def test_a_retry_sends_only_what_the_pacs_has_not_accepted(
    nc: Client, nats_server: NatsServer, tmp_path: Path
) -> None:
    """Out of resources (0xA700) for the second object once: the retry sends that one only."""
    busy = ReceivingPacs("BUSY", answer=lambda n, sop: 0xA700 if n == 1 else 0x0000).start()
    try:
        with running_simulator(SimulatorSettings(token=TOKEN, running_polls=0)) as (api_url, _):
            settings = gateway_settings(nats_server.url, api_url, busy)
            async with running_gateway(settings):
                study = make_study(2, rows=32, columns=32)
                study_uid = str(study[0].StudyInstanceUID)
                await asyncio.to_thread(
                    send_files,
                    "127.0.0.1",
                    settings.port,
                    settings.milvue_aet,
                    write_study(tmp_path, study),
                )
                done = await wait_for_event(nc, study_uid, of_type(ev.Dispatched), 60)
    finally:
        busy.stop()
    assert isinstance(done, ev.Dispatched) and done.object_count == 4
    assert Counter(busy.sop_uids()) == Counter(await dispatched_uids(nc, done))  # each once
    sent = [sop for sop, _ in busy.calls]
    assert len(sent) == 5 and sent[4] == sent[1]  # the retry: the refused one alone


# --- What an event says is what is stored and uploaded -------------------------------------


def sha256_hex(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_an_instance_resent_as_a_then_a_prime_then_a(
    nc: Client, nats_server: NatsServer, tmp_path: Path, pacs: ReceivingPacs
) -> None:
    study_uid, series, sop = str(generate_uid()), str(generate_uid()), str(generate_uid())
    a = make_image(study_uid, series_uid=series, sop_uid=sop, rows=32, columns=32)
    a_prime = make_image(study_uid, series_uid=series, sop_uid=sop, rows=48, columns=48)
    [path_a] = write_study(tmp_path / "a", [a])
    [path_a_prime] = write_study(tmp_path / "a_prime", [a_prime])
    [path_other] = write_study(tmp_path / "other", [make_image(study_uid, series_uid=series)])
    js = nc.jetstream()
    store = BlobStore(nc, js, INSTANCES_BUCKET)

    async def latest_received() -> ev.InstanceReceived:
        history = await EventLog(js).history(study_uid)
        mine = [r.event for r in history if isinstance(r.event, ev.InstanceReceived)]
        return [e for e in mine if e.sop_instance_uid == sop][-1]

    with running_simulator(SimulatorSettings(token=TOKEN, running_polls=10_000)) as (api_url, sim):
        settings = gateway_settings(nats_server.url, api_url, pacs)

        async def send(path: Path) -> None:
            statuses = await asyncio.to_thread(
                send_files, "127.0.0.1", settings.port, settings.milvue_aet, [path]
            )
            assert [s for _, s in statuses] == [0]

        async def uploaded(attempt: int) -> str:
            """The SHA-256 of what the simulator received for `sop` in `attempt`."""
            await wait_for_event(
                nc, study_uid, lambda e: isinstance(e, ev.Uploaded) and e.attempt == attempt
            )
            [file] = [p for uid, p in sim.instance_paths(study_uid) if uid == sop]
            return sha256_hex(file)

        async with running_gateway(settings, UPLOAD):
            await send(path_a)
            first = await latest_received()
            assert await uploaded(1) == digest_hex(first.digest)
            await send(path_a_prime)
            second = await latest_received()
            assert second.digest != first.digest
            assert await uploaded(2) == digest_hex(second.digest)
            await send(path_a)  # A again: the sender's last word, after A'
            await send(path_a)  # and again: identical to the latest copy, recorded once
            await send(path_other)  # a new instance: attempt 3, with `sop` as recorded
            third_upload = await uploaded(3)

    latest = await latest_received()
    # A after A' is a new fact: the latest copy is A again, recorded as following A'.
    assert latest.digest == first.digest and latest.object_name == first.object_name
    history = await EventLog(js).history(study_uid)
    copies = [
        (r.sequence, r.event)
        for r in history
        if isinstance(r.event, ev.InstanceReceived) and r.event.sop_instance_uid == sop
    ]
    assert [e.digest for _, e in copies] == [first.digest, second.digest, first.digest]
    assert latest.follows == copies[1][0]
    # Both versions are kept, each under its digest; the event names the bytes it describes.
    assert digest_hex(first.digest) in first.object_name
    assert (await store.info(first.object_name)) is not None
    stored = await store.get(latest.object_name)
    assert hashlib.sha256(stored).hexdigest() == digest_hex(latest.digest)
    assert third_upload == digest_hex(first.digest)  # A's bytes, as the sender last sent


async def test_the_uploader_refuses_bytes_other_than_the_recorded_ones(nc: Client) -> None:
    store = BlobStore(nc, nc.jetstream(), INSTANCES_BUCKET)
    info = await store.put("1.2.3/1.2.3.4/x", b"A" * 100)
    assert await store.get("1.2.3/1.2.3.4/x") == b"A" * 100
    with pytest.raises(Exception, match="not the recorded"):
        async for _ in store.chunks("1.2.3/1.2.3.4/x", expected_digest="SHA-256=other"):
            pass
    assert [c async for c in store.chunks("1.2.3/1.2.3.4/x", info.digest)] == [b"A" * 100]


# --- Rejected associations leave a trace ---------------------------------------------------


def associate(port: int, called: str, *contexts: str) -> bool:
    ae = AE(ae_title="CALLER")
    for context in contexts or (Verification,):
        ae.add_requested_context(context)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    established = bool(assoc.is_established)
    if established:
        assoc.release()
    return established


async def test_rejected_associations_are_logged_once_and_counted(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    settings = gateway_settings(
        nats_server.url, "http://127.0.0.1:9", ReceivingPacs(), MAX_ASSOCIATIONS="2"
    )
    wrong_aet = ASSOCIATIONS_REJECTED.labels("called_ae_title")._value.get()
    over_limit = ASSOCIATIONS_REJECTED.labels("association_limit")._value.get()
    ct = CONTEXTS_REJECTED.labels("CT Image Storage")._value.get()
    caplog.set_level(logging.WARNING, logger="pacsor.scp")
    async with running_gateway(settings, ("scp",)):
        port = settings.port
        assert not await asyncio.to_thread(associate, port, "NOTME")
        # CT is not in the WithSC profile: the association is accepted, its context refused.
        assert await asyncio.to_thread(associate, port, "MILVUE", Verification, CTImageStorage)
        # Two held open, the third over MAX_ASSOCIATIONS.
        held = []
        for _ in range(2):
            ae = AE(ae_title="HOLDER")
            ae.add_requested_context(Verification)
            held.append(await asyncio.to_thread(ae.associate, "127.0.0.1", port, ae_title="MILVUE"))
        assert all(a.is_established for a in held)
        assert not await asyncio.to_thread(associate, port, "MILVUE")
        for assoc in held:
            assoc.release()

    records = [r for r in caplog.records if r.name == "pacsor.scp"]
    rejected = [r for r in records if r.getMessage() == "association rejected"]
    assert len(rejected) == 2
    by_reason = {r.reason.split(":")[0]: r for r in rejected}  # type: ignore[attr-defined]
    assert set(by_reason) == {"called AE title not recognised", "2 open"}
    for record in rejected:
        assert record.calling_ae_title == "CALLER"  # type: ignore[attr-defined]
        assert record.address.startswith("127.0.0.1:")  # type: ignore[attr-defined]
    assert by_reason["called AE title not recognised"].called_ae_title == "NOTME"  # type: ignore[attr-defined]
    [contexts] = [r for r in records if r.getMessage().startswith("presentation contexts refused")]
    assert contexts.sop_classes == ["CT Image Storage"]  # type: ignore[attr-defined]
    assert ASSOCIATIONS_REJECTED.labels("called_ae_title")._value.get() == wrong_aet + 1
    assert ASSOCIATIONS_REJECTED.labels("association_limit")._value.get() == over_limit + 1
    assert CONTEXTS_REJECTED.labels("CT Image Storage")._value.get() == ct + 1
