"""The admin's HL7 routes over real HTTP, with the hl7 component sending to a real RIS:
external reports pushed over HTTP, the configuration in force, loading a named one."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client

from pacsor.config import ConfigError, Settings
from pacsor.devtools.demo_ris import DemoRis
from pacsor.domain import events as ev
from pacsor.jetstream.eventlog import EventLog
from pacsor.jetstream.subjects import (
    LEGACY_HL7_CONFIG_SUBJECT,
    event_subject,
    events_filter,
    site_events,
)
from tests.admin_data import admin_settings
from tests.harness import pacsor_cli, running_gateway, wait_for_event
from tests.hl7_fixtures import external_report, outcome, record_results, sent_messages
from tests.hl7_reading import ParsedOru
from tests.nats_server import NatsServer

FRENCH = {
    "settings": {"HL7_LANGUAGE": "FR", "HL7_RECEIVING_APPLICATION": "RIS_FR"},
    "template": {"omit": ["PV1"], "fields": {"OBR-13": "$study_description"}},
}


@pytest.fixture
async def ris() -> AsyncIterator[DemoRis]:
    async with DemoRis() as peer:
        yield peer


def settings_for(nats_url: str, tmp_path: Path, ris: DemoRis, **extra: str) -> Settings:
    return admin_settings(
        nats_url,
        tmp_path,
        HL7_ENABLE="true",
        HL7_RIS_IP="127.0.0.1",
        HL7_RIS_PORT=str(ris.port),
        RIS_TIMEOUT="2",
        HL7_CUSTOM_DIR=str(tmp_path / "hl7"),
        WEBPS_ENABLE="true",
        WEBPS_PROVIDERS="radnet,teleradio",
        **extra,
    )


def write_config(tmp_path: Path, name: str, body: object) -> None:
    folder = tmp_path / "hl7"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.json").write_text(body if isinstance(body, str) else json.dumps(body))


@pytest.fixture
async def admin(
    nc: Client, nats_server: NatsServer, tmp_path: Path, ris: DemoRis
) -> AsyncIterator[httpx.AsyncClient]:
    settings = settings_for(nats_server.url, tmp_path, ris)
    async with (
        running_gateway(settings, ("admin", "hl7")) as ready,
        httpx.AsyncClient(base_url=ready["admin_url"], timeout=30) as client,
    ):
        yield client


async def test_a_report_pushed_over_http_reaches_the_ris(
    nc: Client, admin: httpx.AsyncClient, ris: DemoRis
) -> None:
    ready = await record_results(nc, PatientName="Blanc^Zoé")
    assert isinstance(await outcome(nc, ready), ev.Hl7Sent)
    answer = await admin.post("/webps/teleradio/reports", json=external_report(ready.study_uid))
    assert answer.status_code == 202, answer.text
    assert answer.json()["report_id"] == "R-1"
    sent = await wait_for_event(
        nc,
        ready.study_uid,
        lambda e: isinstance(e, ev.Hl7Sent) and e.report_id == "R-1",
    )
    assert isinstance(sent, ev.Hl7Sent) and sent.core == "webps-teleradio"
    (oru,) = [ParsedOru(r.text) for r in ris.received if r.control_id == sent.control_id]
    assert oru.text(oru.segments("PID")[0], 5, 2) == "Zoé"


@pytest.mark.parametrize(
    ("provider", "body", "status", "reason"),
    [
        ("nobody", {}, 404, "unknown report provider"),
        ("radnet", b"<xml/>", 400, "not JSON"),
        ("radnet", {"title": ""}, 422, "title"),
        ("radnet", {"findings": "", "conclusion": ""}, 422, "neither findings nor"),
    ],
)
async def test_bad_pushed_reports_are_4xx_with_the_reason_and_record_nothing(
    nc: Client, admin: httpx.AsyncClient, provider: str, body: Any, status: int, reason: str
) -> None:
    content = (
        body
        if isinstance(body, bytes)
        else json.dumps({**external_report("1.2.3.4"), **body}).encode()
    )
    answer = await admin.post(f"/webps/{provider}/reports", content=content)
    assert answer.status_code == status
    assert reason in answer.json()["detail"]
    assert await EventLog(nc.jetstream()).read(events_filter(ev.ExternalReportReceived)) == []


async def test_a_loaded_configuration_wins_over_the_environment(
    nc: Client, admin: httpx.AsyncClient, ris: DemoRis, tmp_path: Path
) -> None:
    shown = (await admin.get("/hl7/config")).json()
    assert shown["loaded"] is None and shown["effective"]["HL7_LANGUAGE"] == "EN"

    write_config(tmp_path, "french", FRENCH)
    loaded = await admin.post("/hl7/config/load/french")
    assert loaded.status_code == 200, loaded.text

    shown = (await admin.get("/hl7/config")).json()
    assert shown["environment"]["HL7_LANGUAGE"] == "EN"
    assert shown["effective"]["HL7_LANGUAGE"] == "FR"
    assert shown["loaded"]["name"] == "french"
    assert shown["template"] == FRENCH["template"]
    (recorded,) = await EventLog(nc.jetstream()).read(site_events(ev.Hl7ConfigLoaded))
    assert isinstance(recorded.event, ev.Hl7ConfigLoaded)
    assert recorded.subject == event_subject(recorded.event)

    ready = await record_results(nc, StudyDescription="Thorax face")
    assert isinstance(await outcome(nc, ready), ev.Hl7Sent)
    (oru,) = sent_messages(ris, ready)
    assert oru.names()[:3] == ["MSH", "PID", "ORC"]  # no PV1
    assert oru.text(oru.segments("MSH")[0], 5) == "RIS_FR"
    assert oru.text(oru.segments("OBR")[0], 13) == "Thorax face"
    assert oru.text(oru.observations()["cobb_angle/1"], 3, 2) == "Angle de Cobb"


async def test_a_load_recorded_before_the_site_subjects_is_still_in_force(
    nc: Client, admin: httpx.AsyncClient, tmp_path: Path
) -> None:
    """Earlier versions recorded loads under pacsor.study.unknown: the latest there is in
    force until a new load, which goes to the site subject."""
    legacy = ev.Hl7ConfigLoaded(
        load_id="old-1",
        name="legacy",
        kind="config",
        loaded_by="0.1",
        settings={"HL7_LANGUAGE": "FR"},
    )
    await nc.jetstream().publish(LEGACY_HL7_CONFIG_SUBJECT, ev.encode(legacy))
    shown = (await admin.get("/hl7/config")).json()
    assert shown["loaded"]["name"] == "legacy" and shown["effective"]["HL7_LANGUAGE"] == "FR"

    write_config(tmp_path, "french", FRENCH)
    assert (await admin.post("/hl7/config/load/french")).status_code == 200
    assert (await admin.get("/hl7/config")).json()["loaded"]["name"] == "french"
    (recorded,) = await EventLog(nc.jetstream()).read(site_events(ev.Hl7ConfigLoaded))
    assert recorded.subject == "pacsor.site.hl7_config_loaded"


@pytest.mark.parametrize(
    ("name", "body", "status", "reason"),
    [
        ("missing", None, 404, "no configuration named"),
        ("bad-value", {"settings": {"HL7_LANGUAGE": "DE"}}, 422, "HL7_LANGUAGE"),
        ("not-hl7", {"settings": {"ADMIN_TOKEN": "x"}}, 422, "not an HL7 setting"),
        ("breaks", {"template": {"fields": {"MSH-9": "ADT^A01^ADT_A01"}}}, 422, "ORU_R01"),
        ("code", {"template": {"fields": {"OBR-4": "${__import__}"}}}, 422, "placeholder"),
        ("dotted.name", {}, 422, "letters, digits"),
    ],
)
async def test_a_bad_configuration_is_refused_and_the_previous_stays(
    nc: Client,
    admin: httpx.AsyncClient,
    tmp_path: Path,
    name: str,
    body: object,
    status: int,
    reason: str,
) -> None:
    write_config(tmp_path, "french", FRENCH)
    assert (await admin.post("/hl7/config/load/french")).status_code == 200
    if body is not None:
        write_config(tmp_path, name, body)
    refused = await admin.post(f"/hl7/config/load/{name}")
    assert refused.status_code == status
    assert reason in refused.json()["detail"]
    shown = (await admin.get("/hl7/config")).json()
    assert shown["loaded"]["name"] == "french"
    assert len(await EventLog(nc.jetstream()).read(site_events(ev.Hl7ConfigLoaded))) == 1


async def test_configuration_and_template_loaded_at_start(
    nc: Client, nats_server: NatsServer, tmp_path: Path, ris: DemoRis
) -> None:
    write_config(tmp_path, "french", {"settings": {"HL7_LANGUAGE": "FR"}})
    templates = tmp_path / "hl7" / "templates"
    templates.mkdir()
    (templates / "no-orc.json").write_text(json.dumps({"omit": ["ORC"]}))
    settings = settings_for(
        nats_server.url,
        tmp_path,
        ris,
        LOAD_CONFIG_AT_INIT="french",
        LOAD_TEMPLATE_AT_INIT="no-orc",
    )
    async with running_gateway(settings, ("hl7",)):
        ready = await record_results(nc)
        assert isinstance(await outcome(nc, ready), ev.Hl7Sent)
    (oru,) = sent_messages(ris, ready)
    assert oru.names()[:4] == ["MSH", "PID", "PV1", "OBR"]  # the template: no ORC
    assert oru.text(oru.segments("MSH")[0], 19) == "fr"  # the configuration: French
    loads = [r.event for r in await EventLog(nc.jetstream()).read(site_events(ev.Hl7ConfigLoaded))]
    assert [(e.name, e.loaded_by) for e in loads if isinstance(e, ev.Hl7ConfigLoaded)] == [
        ("french", "LOAD_CONFIG_AT_INIT"),
        ("no-orc", "LOAD_TEMPLATE_AT_INIT"),
    ]


async def test_a_bad_configuration_at_start_stops_start_up(
    nats_server: NatsServer, tmp_path: Path, ris: DemoRis
) -> None:
    write_config(tmp_path, "broken", {"settings": {"HL7_TCR_OUT_FORMAT": "PDF"}})
    settings = settings_for(nats_server.url, tmp_path, ris, LOAD_CONFIG_AT_INIT="broken")
    with pytest.raises(ConfigError, match=r"^LOAD_CONFIG_AT_INIT: .*HL7_TCR_OUT_FORMAT"):
        async with running_gateway(settings, ("hl7",)):
            pass


async def test_a_loaded_configuration_can_move_the_ris(
    nc: Client, admin: httpx.AsyncClient, ris: DemoRis, tmp_path: Path
) -> None:
    async with DemoRis() as new_ris:
        write_config(tmp_path, "moved", {"settings": {"HL7_RIS_PORT": new_ris.port}})
        assert (await admin.post("/hl7/config/load/moved")).status_code == 200
        ready = await record_results(nc)
        sent = await outcome(nc, ready)
        assert isinstance(sent, ev.Hl7Sent) and sent.ris == f"127.0.0.1:{new_ris.port}"
        assert len(sent_messages(new_ris, ready)) == 1
    assert sent_messages(ris, ready) == []


def test_run_hl7_without_a_ris_is_one_line(tmp_path: Path) -> None:
    result = pacsor_cli("run", "hl7", cwd=tmp_path, HL7_RIS_IP="")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "pacsor: HL7_RIS_IP: not set; the hl7 component sends to the RIS"
    ]
