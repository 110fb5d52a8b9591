"""The admin HTTP API over real HTTP, against a real nats-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import httpx
import msgspec
import pytest
from nats.aio.client import Client

from pacsor.admin.server import exposure_warning
from pacsor.config import Settings, load_settings
from pacsor.devtools.sample_events import received
from pacsor.domain import events as ev
from pacsor.jetstream.eventlog import EventLog
from tests.admin_data import ARCHIVE, PACS, T0, admin_settings, fixture_studies, publish
from tests.harness import pacsor_process, running_gateway
from tests.nats_server import NatsServer

ADMIN_TOKEN = "s3cret-admin-token"


@pytest.fixture
async def admin(
    nc: Client, nats_server: NatsServer, tmp_path: Path
) -> AsyncIterator[httpx.AsyncClient]:
    settings = admin_settings(nats_server.url, tmp_path)
    async with (
        running_gateway(settings, ("admin",)) as ready,
        httpx.AsyncClient(base_url=ready["admin_url"], timeout=30) as client,
    ):
        yield client


async def test_studies_are_listed_newest_first_filtered_and_paged(
    nc: Client, admin: httpx.AsyncClient
) -> None:
    last = await fixture_studies(nc)
    assert (await admin.get("/studies/1.2.3.99", params={"after": last})).status_code == 200
    # A sequence the stream has not reached is refused at once, not waited for.
    beyond = await admin.get("/studies/1.2.3.99", params={"after": last + 1000})
    assert beyond.status_code == 400
    assert (
        beyond.json()["detail"]
        == f"after: sequence {last + 1000} is beyond the stream's last, {last}"
    )

    page = (await admin.get("/studies", params={"limit": 5})).json()
    assert page["total"] == 13
    assert [s["study_instance_uid"] for s in page["studies"]] == [
        "1.2.3.99",
        "1.2.3.11",
        "1.2.3.10",
        "1.2.3.9",
        "1.2.3.8",
    ]
    second = (await admin.get("/studies", params={"limit": 5, "offset": 5})).json()
    assert second["studies"][0]["study_instance_uid"] == "1.2.3.7"

    async def uids(**params: Any) -> list[str]:
        response = await admin.get("/studies", params=params)
        assert response.status_code == 200, response.text
        return [s["study_instance_uid"] for s in response.json()["studies"]]

    assert await uids(state="failed") == ["1.2.3.4"]
    assert await uids(state="receiving") == ["1.2.3.99"]
    assert await uids(destination=ARCHIVE, state="failed") == ["1.2.3.4"]
    assert len(await uids(destination=PACS, state="dispatched")) == 12
    assert len(await uids(core="default")) == 12
    assert await uids(core="elsewhere") == []
    assert await uids(q="ACC007") == ["1.2.3.7"]
    assert await uids(q="1.2.3.99") == ["1.2.3.99"]
    since, until = (T0 + timedelta(minutes=3)).isoformat(), (T0 + timedelta(minutes=5)).isoformat()
    assert await uids(since=since, until=until) == ["1.2.3.4", "1.2.3.3"]

    failed = (await admin.get("/studies", params={"state": "failed"})).json()["studies"][0]
    assert failed["destinations"] == [
        {"name": PACS, "state": "dispatched", "core": "default"},
        {"name": ARCHIVE, "state": "failed", "core": "default"},
    ]


@pytest.mark.parametrize(
    "params",
    [
        {"state": "lost"},
        {"limit": "0"},
        {"limit": "501"},
        {"offset": "-1"},
        {"since": "yesterday"},
        {"q": "x" * 65},
    ],
)
async def test_bad_queries_are_400(admin: httpx.AsyncClient, params: dict[str, str]) -> None:
    response = await admin.get("/studies", params=params)
    assert response.status_code == 400, response.text


async def test_one_study_and_its_events(nc: Client, admin: httpx.AsyncClient) -> None:
    last = await fixture_studies(nc)
    view = (await admin.get("/studies/1.2.3.4", params={"after": last})).json()
    assert view["state"] == "failed" and view["accession_number"] == "ACC004"
    assert view["instance_count"] == 3 and view["attempt"] == 1
    archive = next(d for d in view["destinations"] if d["destination"] == ARCHIVE)
    assert archive["reason"] == "association rejected"

    history = (await admin.get("/studies/1.2.3.4/events")).json()
    assert [h["type"] for h in history] == [
        *["InstanceReceived"] * 3,
        "StudyComplete",
        "Uploaded",
        "ResultObjectsListed",
        "ResultReady",
        "Dispatched",
        "DispatchFailed",
    ]
    sequences = [h["sequence"] for h in history]
    assert sequences == sorted(sequences)
    assert history[0]["event"]["accession_number"] == "ACC004"
    assert history[0]["subject"] == "pacsor.study.1_2_3_4.received"

    for path in ("/studies/1.2.3.12345", "/studies/1.2.3.12345/events"):
        missing = await admin.get(path)
        assert missing.status_code == 404 and "1.2.3.12345" in missing.json()["detail"]
    for path in ("/studies/not-a-uid", "/studies/1.2.3.x/events", "/studies/" + "1" * 65):
        assert (await admin.get(path)).status_code == 400


async def test_relaunch_refusals(nc: Client, admin: httpx.AsyncClient) -> None:
    await fixture_studies(nc)
    unknown = await admin.post("/studies/1.2.3.12345/relaunch")
    assert unknown.status_code == 404 and "no study" in unknown.json()["detail"]
    # The original gateway's GET relaunches only with an Authorization header (any, as no
    # ADMIN_TOKEN is set here): a browser cannot be made to send one.
    compatible = {"Authorization": "Bearer from-a-script"}
    assert (await admin.get("/relaunch/1.2.3.12345", headers=compatible)).status_code == 404
    for uid in ("abc", "1.2.3.4%3E", "1.2.*.4"):
        malformed = await admin.post(f"/studies/{uid}/relaunch")
        assert malformed.status_code == 400, malformed.text
        assert "not a DICOM UID" in malformed.json()["detail"]
    # These studies' instances were never stored in the bucket: as if past retention.
    gone = await admin.post("/studies/1.2.3.4/relaunch")
    assert gone.status_code == 409 and "no longer stored" in gone.json()["detail"]
    assert (await admin.get("/relaunch/1.2.3.4", headers=compatible)).status_code == 409
    expired = ev.ObjectsExpired(
        study_uid="1.2.3.5", kind="instances", object_count=3, reason="retention 168 h"
    )
    await publish(nc, [expired])
    gone = await admin.post("/studies/1.2.3.5/relaunch")
    assert gone.status_code == 409 and "retention 168 h" in gone.json()["detail"]
    core = await admin.post("/studies/1.2.3.4/relaunch", json={"cores": ["nope"]})
    assert core.status_code == 400 and "unknown core" in core.json()["detail"]
    body = await admin.post("/studies/1.2.3.4/relaunch", json={"cores": "default"})
    assert body.status_code == 400
    body = await admin.post("/studies/1.2.3.4/relaunch", content=b"{not json")
    assert body.status_code == 400


async def test_replay_refusals(admin: httpx.AsyncClient) -> None:
    unknown = await admin.post("/destinations/NOWHERE/replay", params={"since": T0.isoformat()})
    assert unknown.status_code == 404 and "PACS@10.0.0.1:104" in unknown.json()["detail"]
    no_since = await admin.post("/destinations/PACS/replay")
    assert no_since.status_code == 400
    bad = await admin.post("/destinations/PACS/replay", params={"since": "last week"})
    assert bad.status_code == 400


async def test_health_metrics_and_config(
    nc: Client, nats_server: NatsServer, admin: httpx.AsyncClient
) -> None:
    last = await fixture_studies(nc)
    await admin.get("/studies/1.2.3.99", params={"after": last})
    health = await admin.get("/health")
    assert health.status_code == 200, health.text
    report = health.json()
    assert report["healthy"] and report["nats_connected"] and report["projection_running"]
    assert {s["name"] for s in report["streams"] if s["present"]} >= {"PACSOR", "PACSOR_TIMERS"}
    assert report["applied_sequence"] == report["stream_sequence"] == last

    text = (await admin.get("/metrics")).text
    assert 'pacsor_events_total{type="InstanceReceived"} 37.0' in text
    assert 'pacsor_studies{state="dispatched"} 11.0' in text
    assert 'pacsor_studies{state="failed"} 1.0' in text
    assert 'pacsor_step_seconds_count{step="ai_wait"} 12.0' in text
    assert "pacsor_projection_lag_events 0.0" in text

    shown = (await admin.get("/config")).json()
    assert shown["TOKEN"] == "***" and shown["ADMIN_TOKEN"] == ""
    assert shown["PACS_IP"] == "10.0.0.1" and "api-key-for-the-ai" not in str(shown)

    nats_server.stop()
    down = await admin.get("/health")
    assert down.status_code == 503
    assert "not connected to NATS" in down.json()["problems"]


async def test_every_route_needs_the_token_but_health(
    nc: Client, nats_server: NatsServer, tmp_path: Path
) -> None:
    settings = admin_settings(nats_server.url, tmp_path, ADMIN_TOKEN=ADMIN_TOKEN)
    async with (
        running_gateway(settings, ("admin",)) as ready,
        httpx.AsyncClient(base_url=ready["admin_url"], timeout=30) as client,
    ):
        paths = ["/studies", "/studies/1.2.3", "/config", "/metrics", "/schema/openapi.json", "/"]
        for path in paths:
            assert (await client.get(path)).status_code == 401, path
            wrong = await client.get(path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}x"})
            assert wrong.status_code == 401, path
            basic = await client.get(path, headers={"Authorization": f"Basic {ADMIN_TOKEN}"})
            assert basic.status_code == 401, path
        assert (await client.post("/studies/1.2.3/relaunch")).status_code == 401
        assert (await client.get("/relaunch/1.2.3")).status_code == 401
        assert (await client.get("/health")).status_code == 200

        bearer = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        assert (await client.get("/studies", headers=bearer)).status_code == 200
        assert (await client.get("/schema/openapi.json", headers=bearer)).status_code == 200
        shown = (await client.get("/config", headers=bearer)).json()
        assert shown["ADMIN_TOKEN"] == "***" and ADMIN_TOKEN not in str(shown)

        # The dashboard: the token once, then a cookie.
        refused = await client.post("/login", data={"token": "guess"})
        assert refused.status_code == 401
        signed_in = await client.post("/login", data={"token": ADMIN_TOKEN})
        assert signed_in.status_code in {302, 303}
        assert (await client.get("/")).status_code == 200


def test_listening_beyond_localhost_without_a_token_is_warned_about() -> None:
    def settings(**env: str) -> Settings:
        return load_settings(env, dotenv=None)

    assert exposure_warning(settings()) is None
    assert exposure_warning(settings(ADMIN_HOST="::1")) is None
    assert exposure_warning(settings(ADMIN_HOST="0.0.0.0", ADMIN_TOKEN="t" * 16)) is None
    warning = exposure_warning(settings(ADMIN_HOST="0.0.0.0"))
    assert warning is not None and warning.startswith("ADMIN_TOKEN: not set")


async def test_pacsor_run_admin_warns_when_exposed(nats_server: NatsServer, tmp_path: Path) -> None:
    process = await pacsor_process(
        "run",
        "admin",
        cwd=tmp_path,
        stdout=asyncio.subprocess.DEVNULL,
        NATS_URL=nats_server.url,
        ADMIN_HOST="0.0.0.0",
    )
    assert process.stderr is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(60):
            while not any("pacsor ready" in line for line in lines):
                line = (await process.stderr.readline()).decode()
                assert line, "pacsor exited:\n" + "".join(lines)
                lines.append(line)
    finally:
        process.terminate()
        await process.wait()
    assert any("ADMIN_TOKEN: not set" in line and "WARNING" in line for line in lines)


async def test_the_dashboard_form_replays_a_day_to_one_destination(
    nc: Client, admin: httpx.AsyncClient
) -> None:
    last = await fixture_studies(nc)
    await admin.get("/studies/1.2.3.99", params={"after": last})
    page = await admin.get("/")
    assert 'action="/ui/replay"' in page.text and PACS in page.text
    since = (T0 + timedelta(minutes=9)).strftime("%Y-%m-%dT%H:%M")
    sent = await admin.post("/ui/replay", data={"destination": "PACS", "since": since})
    assert sent.status_code in {302, 303}
    assert "3 result set(s)" in unquote_plus(sent.headers["location"])
    recorded = await EventLog(nc.jetstream()).read("pacsor.study.*.*.replay_requested")
    assert sorted(r.event.study_uid for r in recorded) == [
        "1.2.3.10",
        "1.2.3.11",
        "1.2.3.9",
    ]
    assert {getattr(r.event, "destination", "") for r in recorded} == {PACS}
    bad = await admin.post("/ui/replay", data={"destination": "PACS", "since": "soon"})
    assert bad.status_code in {302, 303} and "Not a time" in unquote_plus(bad.headers["location"])


async def test_send_one_study_again_to_one_destination(
    nc: Client, admin: httpx.AsyncClient
) -> None:
    last = await fixture_studies(nc)
    await admin.get("/studies/1.2.3.99", params={"after": last})
    sent = await admin.post("/studies/1.2.3.5/destinations/PACS/replay")
    assert sent.status_code == 202, sent.text
    body = sent.json()
    assert (body["destination"], body["results"]) == (PACS, 1)
    recorded = await EventLog(nc.jetstream()).read("pacsor.study.*.*.replay_requested")
    assert [(r.event.study_uid, getattr(r.event, "destination", "")) for r in recorded] == [
        ("1.2.3.5", PACS)
    ]
    view = (await admin.get("/studies/1.2.3.5", params={"after": body["sequence"]})).json()
    pacs = next(d for d in view["destinations"] if d["destination"] == PACS)
    assert pacs["resending"] is True

    for path, status, words in (
        ("/studies/1.2.3.12345/destinations/PACS/replay", 404, "no study"),
        ("/studies/1.2.3.5/destinations/NOWHERE/replay", 404, "no destination"),
        ("/studies/1.2.3.99/destinations/PACS/replay", 409, "relaunch the study instead"),
        ("/studies/1.2.x/destinations/PACS/replay", 400, "not a DICOM UID"),
    ):
        refused = await admin.post(path)
        assert refused.status_code == status, (path, refused.text)
        assert words in refused.json()["detail"]


async def test_health_shows_each_core_and_destination_as_last_seen(
    nc: Client, admin: httpx.AsyncClient
) -> None:
    last = await fixture_studies(nc)
    await admin.get("/studies/1.2.3.99", params={"after": last})
    report = (await admin.get("/health")).json()
    assert [(c["name"], c["state"]) for c in report["cores"]] == [("default", "ok")]
    [pacs] = report["destinations"]
    assert (pacs["name"], pacs["state"]) == (PACS, "ok")
    assert pacs["last_ok_at"].startswith("2026-03-01T08:11")  # the last study's delivery


async def test_dicom_text_is_escaped_on_every_page(nc: Client, admin: httpx.AsyncClient) -> None:
    hostile = "<script>alert(1)</script>"
    event = msgspec.structs.replace(
        received("1.2.3.66", 0, T0, "<b>ACC</b>"), study_description=hostile
    )
    last = await publish(nc, [event])
    await admin.get("/studies/1.2.3.66", params={"after": last})
    for path in ("/", "/ui/live/studies", "/ui/studies/1.2.3.66", "/ui/live/studies/1.2.3.66"):
        page = await admin.get(path)
        assert page.status_code == 200, path
        assert hostile not in page.text and "<b>ACC</b>" not in page.text, path
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text, path
