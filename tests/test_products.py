"""Every product the settings accept, end to end: C-STORE, the simulated AI running that one
command, its findings JSON, the ORU at a real MLLP listener; and the commands pacsor cannot
serve, refused at start."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client
from pacsor.consumers import hl7_sender, result_poller

from pacsor.ai.milvue_api import FINDINGS_KINDS, MilvueApi
from pacsor.config import ConfigError, load_settings
from pacsor.devtools.demo_ris import DemoRis
from pacsor.devtools.sample_study import make_study
from pacsor.devtools.simulator import SimulatorSettings, running_simulator
from pacsor.dicom.storage_scu import send_files
from pacsor.domain import events as ev
from tests.harness import (
    TOKEN,
    ReceivingPacs,
    gateway_settings,
    running_gateway,
    to_the_ris,
    wait_for_event,
    write_study,
)
from tests.hl7_parsers import assert_parsers_agree
from tests.hl7_reading import ParsedOru
from tests.nats_server import NatsServer


@pytest.fixture
async def ris() -> AsyncIterator[DemoRis]:
    async with DemoRis() as peer:
        yield peer


def _product_settings(command: str) -> dict[str, str]:
    if FINDINGS_KINDS[command] == "detections":
        return {"DETECTION_INFERENCE_COMMAND": command, "INCLUDE_MEASURES_FINDINGS": "false"}
    return {"MEASURE_INFERENCE_COMMAND": command, "INCLUDE_DETECTIONS_FINDINGS": "false"}


@pytest.mark.parametrize("command", list(FINDINGS_KINDS))
async def test_each_product_sends_its_findings_to_the_ris(
    nc: Client,
    nats_server: NatsServer,
    tmp_path: Path,
    pacs: ReceivingPacs,
    ris: DemoRis,
    command: str,
) -> None:
    with running_simulator(SimulatorSettings(token=TOKEN, running_polls=1)) as (url, _):
        settings = gateway_settings(
            nats_server.url,
            url,
            pacs,
            INFERENCE_COMMANDS=command,
            **to_the_ris(ris.port),
            **_product_settings(command),
        )
        async with running_gateway(settings):
            images = make_study(2, rows=64, columns=64)
            study = str(images[0].StudyInstanceUID)
            paths = write_study(tmp_path, images)
            await asyncio.to_thread(send_files, "127.0.0.1", settings.port, "MILVUE", paths)
            sent = await wait_for_event(
                nc, study, lambda e: isinstance(e, ev.Hl7Sent | ev.Hl7Failed), 90
            )
            ready = await wait_for_event(nc, study, lambda e: isinstance(e, ev.ResultReady), 5)
        # What the AI answers for this product, asked directly.
        async with MilvueApi(url, TOKEN) as api:
            served = ParsedFindings(await api.get_findings(study, command))
    assert isinstance(sent, ev.Hl7Sent), sent
    assert isinstance(ready, ev.ResultReady)
    assert [f.inference_command for f in ready.findings] == [command]
    assert sent.missing_findings == ()
    (message,) = [r.text for r in ris.received if r.control_id == sent.control_id]
    assert_parsers_agree(message)
    observations = ParsedOru(message).observations()
    expected = served.observation_keys()
    assert expected, f"{command}: the simulator served no findings"
    assert expected <= set(observations)
    assert set(observations) - expected == {"110180"}  # the study UID, and nothing else


class ParsedFindings:
    """The OBX keys (value, or value/rank for measures) a findings JSON should give."""

    def __init__(self, data: bytes) -> None:
        self.document = json.loads(data)

    def observation_keys(self) -> set[str]:
        keys = {f["value"] for f in self.document.get("findings", ())}
        for rank, instance in enumerate(self.document.get("instances", ()), start=1):
            keys |= {f"{m['value']}/{rank}" for m in instance.get("measures", ())}
        return keys


def test_a_command_pacsor_cannot_serve_is_refused_at_start() -> None:
    settings = load_settings(
        {"TOKEN": "t", "INFERENCE_COMMANDS": "smarturgences,smartfoo"}, dotenv=None
    )
    with pytest.raises(ConfigError) as refused:
        result_poller.check(settings)
    assert str(refused.value) == (
        "INFERENCE_COMMANDS: pacsor cannot serve 'smartfoo'; commands it serves: "
        "smarturgences, detection, smartchest, trauma, smartxpert, measures"
    )
    second = load_settings(
        {
            "TOKEN": "t",
            "TOKEN_1": "u",
            "API_URL_1": "http://ai2",
            "INFERENCE_COMMANDS_1": "x",
            "DESTINATIONS_1": "same-as-first",
        },
        dotenv=None,
    )
    with pytest.raises(ConfigError, match=r"^INFERENCE_COMMANDS_1: pacsor cannot serve 'x'"):
        result_poller.check(second)


def test_hl7_findings_of_a_command_no_core_runs_are_refused_at_start() -> None:
    settings = load_settings(
        {
            "TOKEN": "t",
            "HL7_RIS_IP": "127.0.0.1",
            "INFERENCE_COMMANDS": "smarturgences,smartxpert",
            "DETECTION_INFERENCE_COMMAND": "trauma",
        },
        dotenv=None,
    )
    with pytest.raises(ConfigError, match=r"^DETECTION_INFERENCE_COMMAND: no core runs 'trauma'"):
        hl7_sender.check(settings)


async def test_the_gateway_does_not_start_with_a_command_it_cannot_serve(
    nats_server: NatsServer, pacs: ReceivingPacs
) -> None:
    settings = gateway_settings(
        nats_server.url, "http://127.0.0.1:9", pacs, INFERENCE_COMMANDS="smartfoo"
    )
    with pytest.raises(ConfigError, match="INFERENCE_COMMANDS: pacsor cannot serve"):
        async with running_gateway(settings):
            pass


@pytest.mark.parametrize(
    ("commands", "detection", "measure"),
    [
        ("", "smarturgences", "smartxpert"),
        ("detection,measures", "detection", "measures"),  # SmartTrauma
        ("trauma", "trauma", None),  # TechCare Trauma: no measures
        ("smartchest", "smartchest", None),
        ("smartxpert", None, "smartxpert"),
    ],
)
def test_unset_the_findings_are_those_of_the_first_core_products(
    commands: str, detection: str | None, measure: str | None
) -> None:
    env = {"TOKEN": "t", "HL7_RIS_IP": "127.0.0.1"}
    settings = load_settings({**env, "INFERENCE_COMMANDS": commands} if commands else env, None)
    hl7 = settings.hl7
    assert (hl7.detection_command if hl7.include_detections else None) == detection
    assert (hl7.measure_command if hl7.include_measures else None) == measure
    hl7_sender.check(settings)  # consistent: starts
