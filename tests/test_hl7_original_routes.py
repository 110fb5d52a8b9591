"""The original gateway's HL7 routes on the hl7 component's own port, over real HTTP; every key
of a loaded configuration takes effect (HL7_ENABLE and WEBPS_ENABLE without a restart) or the
load is refused naming it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client

from pacsor.config import load_settings
from pacsor.devtools.demo_ris import DemoRis
from pacsor.domain import events as ev
from pacsor.jetstream.eventlog import EventLog
from pacsor.jetstream.subjects import EVENTS_STREAM, HL7_DURABLE, site_events
from tests.harness import running_gateway
from tests.hl7_fixtures import external_report, outcome, record_results, sent_messages
from tests.nats_server import NatsServer, free_port


@pytest.fixture
async def ris() -> AsyncIterator[DemoRis]:
    async with DemoRis() as peer:
        yield peer


def write_config(tmp_path: Path, name: str, settings: dict[str, str]) -> None:
    folder = tmp_path / "hl7"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps({"settings": settings}))


class Running:
    def __init__(self, hl7: httpx.AsyncClient, admin: httpx.AsyncClient) -> None:
        self.hl7 = hl7
        self.admin = admin


@pytest.fixture
async def running(nats_server: NatsServer, tmp_path: Path, ris: DemoRis) -> AsyncIterator[Running]:
    settings = load_settings(
        {
            "NATS_URL": nats_server.url,
            "PACSOR_DATA_DIR": str(tmp_path / "data"),
            "HL7_ENABLE": "true",
            "HL7_RIS_IP": "127.0.0.1",
            "HL7_RIS_PORT": str(ris.port),
            "RIS_TIMEOUT": "2",
            "HL7_CUSTOM_DIR": str(tmp_path / "hl7"),
            "WEBPS_ENABLE": "true",
            "WEBPS_PROVIDERS": "radnet",
            "HL7_HTTP_PORT": str(free_port()),
        },
        dotenv=None,
    )
    async with (
        running_gateway(settings, ("admin", "hl7")) as ready,
        httpx.AsyncClient(base_url=ready["hl7_http_url"], timeout=30) as hl7,
        httpx.AsyncClient(base_url=ready["admin_url"], timeout=30) as admin,
    ):
        assert ready["hl7_http_url"].startswith("http://127.0.0.1:")  # loopback by default
        yield Running(hl7, admin)


async def test_get_config_and_load_a_named_one_as_the_original(
    running: Running, tmp_path: Path
) -> None:
    shown = await running.hl7.get("/config/")
    assert shown.status_code == 200
    assert shown.json()["HL7_LANGUAGE"] == "EN" and shown.json()["HL7_ENABLE"] == "true"

    write_config(tmp_path, "french", {"HL7_LANGUAGE": "FR"})
    loaded = await running.hl7.post("/config/load/french")
    assert loaded.status_code == 200, loaded.text
    assert loaded.json()["loaded"] == "french"
    assert (await running.hl7.get("/config/")).json()["HL7_LANGUAGE"] == "FR"
    # The same load, seen by the admin's own route.
    admin = (await running.admin.get("/hl7/config")).json()
    assert admin["loaded"]["name"] == "french" and admin["effective"]["HL7_LANGUAGE"] == "FR"
    assert admin["loaded"]["loaded_by"].startswith("hl7 HTTP (")


@pytest.mark.parametrize(
    ("settings", "status", "detail"),
    [
        ({"HL7_RIS_PROT": "2575"}, 422, "HL7_RIS_PROT: not an HL7 setting (closest known name: "),
        ({"HL7_CUSTOM_DIR": "/elsewhere"}, 422, "HL7_CUSTOM_DIR: read once at start"),
        ({"HL7_HTTP_PORT": "9000"}, 422, "HL7_HTTP_PORT: read once at start"),
        ({"HL7_ENABLE": "maybe"}, 422, "HL7_ENABLE: "),
    ],
)
async def test_a_key_that_cannot_take_effect_is_refused_naming_it(
    running: Running,
    nc: Client,
    tmp_path: Path,
    settings: dict[str, str],
    status: int,
    detail: str,
) -> None:
    write_config(tmp_path, "bad", settings)
    answer = await running.hl7.post("/config/load/bad")
    assert answer.status_code == status
    assert detail in answer.json()["detail"]
    assert await EventLog(nc.jetstream()).read(site_events(ev.Hl7ConfigLoaded)) == []


async def test_a_missing_configuration_is_404(running: Running) -> None:
    answer = await running.hl7.post("/config/load/nowhere")
    assert answer.status_code == 404 and "no configuration named 'nowhere'" in answer.text


async def _switched(nc: Client, sending: bool) -> ev.Hl7Switched:
    sub = await nc.jetstream().subscribe(
        site_events(ev.Hl7Switched), stream=EVENTS_STREAM, ordered_consumer=True
    )
    try:
        while True:
            event = ev.decode((await sub.next_msg(timeout=30)).data)
            if isinstance(event, ev.Hl7Switched) and event.sending == sending:
                return event
    finally:
        await sub.unsubscribe()


async def _handled(nc: Client, sequence: int) -> None:
    """Wait until the RIS consumer has acknowledged everything up to `sequence`."""
    js = nc.jetstream()
    while True:
        info = await js.consumer_info(EVENTS_STREAM, HL7_DURABLE)
        if info.ack_floor is not None and (info.ack_floor.stream_seq or 0) >= sequence:
            return
        await js.stream_info(EVENTS_STREAM)  # one round trip before asking again


async def test_hl7_enable_switches_sending_without_a_restart(
    running: Running, nc: Client, ris: DemoRis, tmp_path: Path
) -> None:
    write_config(tmp_path, "off", {"HL7_ENABLE": "false"})
    write_config(tmp_path, "on", {"HL7_ENABLE": "true"})
    assert (await running.hl7.post("/config/load/off")).status_code == 200
    off = await _switched(nc, sending=False)
    assert (off.config_name, off.external_reports) == ("off", True)

    quiet = await record_results(nc)
    last = await EventLog(nc.jetstream()).last_sequence()
    await _handled(nc, last)
    assert sent_messages(ris, quiet) == []  # acknowledged, not sent

    assert (await running.admin.post("/hl7/config/load/on")).status_code == 200
    on = await _switched(nc, sending=True)
    assert on.config_name == "on"
    ready = await record_results(nc)
    assert isinstance(await outcome(nc, ready), ev.Hl7Sent)
    assert len(sent_messages(ris, ready)) == 1


async def test_webps_enable_switches_external_reports_without_a_restart(
    running: Running, nc: Client, tmp_path: Path
) -> None:
    report: dict[str, Any] = external_report("1.2.826.0.1.3680043.8.498.1")
    assert (await running.admin.post("/webps/radnet/reports", json=report)).status_code == 202
    write_config(tmp_path, "no-webps", {"WEBPS_ENABLE": "false"})
    assert (await running.hl7.post("/config/load/no-webps")).status_code == 200
    switched = await _switched(nc, sending=True)
    assert switched.external_reports is False
    refused = await running.admin.post("/webps/radnet/reports", json=report)
    assert refused.status_code == 404
    assert "not enabled (WEBPS_ENABLE)" in refused.json()["detail"]


async def test_the_original_config_json_loads_as_it_is(running: Running, tmp_path: Path) -> None:
    # The original's files hold the variables at the top level, with JSON booleans.
    folder = tmp_path / "hl7"
    folder.mkdir(exist_ok=True)
    (folder / "site.json").write_text(json.dumps({"HL7_LANGUAGE": "FR", "HL7_INCLUDE_PV1": False}))
    assert (await running.hl7.post("/config/load/site")).status_code == 200
    shown = (await running.hl7.get("/config/")).json()
    assert (shown["HL7_LANGUAGE"], shown["HL7_INCLUDE_PV1"]) == ("FR", "false")
    (folder / "odd.json").write_text(json.dumps({"HL7_LANGUAGE": ["FR"]}))
    refused = await running.hl7.post("/config/load/odd")
    assert refused.status_code == 422 and "configuration 'odd'" in refused.json()["detail"]
