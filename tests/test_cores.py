"""Each core's results go only where that core says, and the RIS gets one ORU per study:
two simulators as two cores, two real destination SCPs, a real MLLP listener."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from pacsor.devtools.demo_ris import DemoRis
from pacsor.devtools.simulator import SimulatorSettings, running_simulator
from pacsor.domain import events as ev
from pacsor.hl7.oru import control_id
from pacsor.jetstream.eventlog import EventLog
from pacsor.jetstream.subjects import EVENTS_STREAM, HL7_DURABLE
from tests.harness import (
    TOKEN,
    ReceivingPacs,
    gateway_settings,
    images,
    running_gateway,
    send_datasets,
    wait_for_event,
)
from tests.nats_server import NatsServer


@pytest.fixture
async def ris() -> AsyncIterator[DemoRis]:
    async with DemoRis() as peer:
        yield peer


async def hl7_caught_up(nc: Client, sequence: int, timeout: float = 30.0) -> None:
    """Until the hl7 consumer has acknowledged every ResultReady up to stream sequence
    `sequence`: what it was to send for them, it has sent."""
    js = nc.jetstream()
    async with asyncio.timeout(timeout):
        while True:
            info = await js.consumer_info(EVENTS_STREAM, HL7_DURABLE)
            if info.ack_floor is not None and (info.ack_floor.stream_seq or 0) >= sequence:
                return
            await asyncio.sleep(0.1)  # the consumer's progress is a state, not an event


async def test_each_core_delivers_only_to_its_own_destinations_and_one_oru_per_study(
    nc: Client,
    nats_server: NatsServer,
    tmp_path: Path,
    pacs: ReceivingPacs,
    ris: DemoRis,
) -> None:
    precert_pacs = ReceivingPacs("PRECERT").start()
    try:
        with (
            running_simulator(SimulatorSettings(token=TOKEN, running_polls=0)) as (prod_url, _),
            running_simulator(SimulatorSettings(token=TOKEN, running_polls=0)) as (test_url, _),
        ):
            settings = gateway_settings(
                nats_server.url,
                prod_url,
                pacs,
                INFERENCE_COMMANDS="smarturgences,smartxpert",
                API_URL_1=test_url,
                TOKEN_1=TOKEN,
                CORE_NAME_1="precert",
                INFERENCE_COMMANDS_1="smartchest",
                DESTINATIONS_1=precert_pacs.destination,
                HL7_ENABLE="true",
                HL7_RIS_IP="127.0.0.1",
                HL7_RIS_PORT=str(ris.port),
                INCLUDE_DETECTIONS_FINDINGS="false",
                INCLUDE_MEASURES_FINDINGS="false",
            )
            assert settings.ris_cores == {"default"}  # HL7_CORES unset: the first core only
            async with running_gateway(settings):
                studies = [
                    await send_datasets(settings, tmp_path / f"s{n}", images(2)) for n in (1, 2)
                ]
                for study in studies:
                    for core in ("default", "precert"):
                        await wait_for_event(
                            nc,
                            study,
                            lambda e, c=core: isinstance(e, ev.Dispatched) and e.core == c,
                        )
                    await wait_for_event(nc, study, lambda e: isinstance(e, ev.Hl7Sent))
                records = {s: await EventLog(nc.jetstream()).history(s) for s in studies}
                last = max(
                    r.sequence
                    for history in records.values()
                    for r in history
                    if isinstance(r.event, ev.ResultReady)
                )
                await hl7_caught_up(nc, last)
    finally:
        precert_pacs.stop()

    for study, history in records.items():
        events = [r.event for r in history]
        dispatched = {
            (e.core, e.destination): set(e.sop_instance_uids)
            for e in events
            if isinstance(e, ev.Dispatched)
        }
        assert set(dispatched) == {
            ("default", pacs.destination),
            ("precert", precert_pacs.destination),
        }
        assert not any(isinstance(e, ev.DispatchFailed) for e in events)
        ready = {e.core: e for e in events if isinstance(e, ev.ResultReady)}
        assert set(ready) == {"default", "precert"}
        # One ORU per study: the first core's; none for the test environment.
        sent = [r for r in ris.received if study in r.text]
        assert [r.control_id for r in sent] == [control_id(study, "default", 1)]
        assert [e.core for e in events if isinstance(e, ev.Hl7Sent | ev.Hl7Failed)] == ["default"]
    default_sops = set().union(
        *(
            {sop for sop in (r.sop_instance_uid for r in e.results)}
            for history in records.values()
            for e in (r.event for r in history)
            if isinstance(e, ev.ResultReady) and e.core == "default"
        )
    )
    precert_sops = set().union(
        *(
            {r.sop_instance_uid for r in e.results}
            for history in records.values()
            for e in (r.event for r in history)
            if isinstance(e, ev.ResultReady) and e.core == "precert"
        )
    )
    assert len(default_sops) == 8 and len(precert_sops) == 4 and not default_sops & precert_sops
    # Each PACS holds its own core's results, each once, and nothing of the other core's.
    assert sorted(pacs.sop_uids()) == sorted(default_sops)
    assert sorted(precert_pacs.sop_uids()) == sorted(precert_sops)
    assert len(ris.received) == 2


async def test_hl7_cores_can_name_another_core(
    nc: Client, nats_server: NatsServer, tmp_path: Path, pacs: ReceivingPacs, ris: DemoRis
) -> None:
    """HL7_CORES=precert: the RIS hears from that core only, whatever the first one does."""
    with (
        running_simulator(SimulatorSettings(token=TOKEN, running_polls=0)) as (prod_url, _),
        running_simulator(SimulatorSettings(token=TOKEN, running_polls=0)) as (test_url, _),
    ):
        settings = gateway_settings(
            nats_server.url,
            prod_url,
            pacs,
            API_URL_1=test_url,
            TOKEN_1=TOKEN,
            CORE_NAME_1="precert",
            INFERENCE_COMMANDS_1="smartchest",
            DESTINATIONS_1="same-as-first",
            HL7_ENABLE="true",
            HL7_RIS_IP="127.0.0.1",
            HL7_RIS_PORT=str(ris.port),
            HL7_CORES="precert",
            INCLUDE_DETECTIONS_FINDINGS="false",
            INCLUDE_MEASURES_FINDINGS="false",
        )
        async with running_gateway(settings):
            study = await send_datasets(settings, tmp_path, images(1))
            sent = await wait_for_event(nc, study, lambda e: isinstance(e, ev.Hl7Sent))
            for core in ("default", "precert"):
                await wait_for_event(
                    nc, study, lambda e, c=core: isinstance(e, ev.Dispatched) and e.core == c
                )
            history = await EventLog(nc.jetstream()).history(study)
            await hl7_caught_up(
                nc, max(r.sequence for r in history if isinstance(r.event, ev.ResultReady))
            )
    assert isinstance(sent, ev.Hl7Sent) and sent.core == "precert"
    assert [r.control_id for r in ris.received] == [control_id(study, "precert", 1)]
    # Shared destinations: the first core's PACS has both cores' results.
    assert len(pacs.sop_uids()) == 2 + 1
