"""Relaunch and replay end to end: DICOM in, the simulator over HTTP, receiving PACS, the
admin API over HTTP and the `pacsor relaunch` command."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from nats.aio.client import Client

from pacsor.devtools.simulator import SimulatorSettings, running_simulator
from pacsor.domain import events as ev
from pacsor.jetstream.eventlog import EventLog
from tests.harness import (
    TOKEN,
    ReceivingPacs,
    gateway_settings,
    pacsor_cli,
    running_gateway,
    send_study,
    wait_for_event,
)
from tests.nats_server import NatsServer

IMAGES = 2
RESULTS = 2 * IMAGES  # one per image and inference command


def dispatched(
    destination: str, attempt: int, replay: bool = False
) -> Callable[[ev.AnyEvent], bool]:
    return lambda e: (
        isinstance(e, ev.Dispatched)
        and e.destination == destination
        and e.attempt == attempt
        and bool(e.replay_id) == replay
    )


async def test_relaunch_through_both_endpoints_and_the_cli_then_replay_to_one_destination(
    nc: Client, nats_server: NatsServer, tmp_path: Path, pacs: ReceivingPacs, archive: ReceivingPacs
) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    with running_simulator(SimulatorSettings(token=TOKEN, running_polls=1)) as (api_url, _):
        settings = gateway_settings(
            nats_server.url, api_url, pacs, DESTINATIONS=archive.destination
        )
        async with (
            running_gateway(settings) as ready,
            httpx.AsyncClient(base_url=ready["admin_url"], timeout=30) as admin,
        ):
            study, _ = await send_study(settings, tmp_path / "study", IMAGES)
            await wait_for_event(nc, study, dispatched(pacs.destination, 1))
            await wait_for_event(nc, study, dispatched(archive.destination, 1))
            assert len(await pacs.wait_for(RESULTS)) == RESULTS

            # Attempt 2: the HTTP API, limited to one core by name.
            response = await admin.post(
                f"/studies/{study}/relaunch", json={"cores": ["default"], "requested_by": "alice"}
            )
            assert response.status_code == 202, response.text
            assert response.json()["requested_by"] == "alice"
            await wait_for_event(nc, study, dispatched(pacs.destination, 2))
            assert len(await pacs.wait_for(2 * RESULTS)) == 2 * RESULTS

            # Attempt 3: the original gateway's URL, as a script calls it: with an Authorization
            # header (a browser opening it only gets a page asking to confirm).
            response = await admin.get(
                f"/relaunch/{study}", headers={"Authorization": "Bearer from-a-script"}
            )
            assert response.status_code == 202, response.text
            await wait_for_event(nc, study, dispatched(pacs.destination, 3))

            # Attempt 4: the command line.
            result = await asyncio.to_thread(
                pacsor_cli, "relaunch", study, "--by", "bob", cwd=tmp_path, NATS_URL=nats_server.url
            )
            assert result.returncode == 0, result.stderr
            assert "relaunch of" in result.stdout
            await wait_for_event(nc, study, dispatched(pacs.destination, 4))
            await wait_for_event(nc, study, dispatched(archive.destination, 4))
            assert len(await pacs.wait_for(4 * RESULTS)) == 4 * RESULTS
            assert len(await archive.wait_for(4 * RESULTS)) == 4 * RESULTS

            last = (await EventLog(nc.jetstream()).history(study))[-1].sequence
            view = (await admin.get(f"/studies/{study}", params={"after": last})).json()
            assert [a["attempt"] for a in view["attempts"]] == [1, 2, 3, 4]
            assert [a["relaunch"] for a in view["attempts"]] == [False, True, True, True]
            assert view["attempts"][1]["requested_by"] == "alice"
            assert view["attempts"][1]["cores"] == ["default"]
            assert view["attempts"][2]["requested_by"].startswith("admin API")
            assert view["attempts"][3]["requested_by"] == "bob"
            assert view["state"] == "dispatched" and view["attempt"] == 4
            history = (await admin.get(f"/studies/{study}/events")).json()
            completes = [h["event"]["attempt"] for h in history if h["type"] == "StudyComplete"]
            assert completes == [1, 2, 3, 4]
            uploads = [h["event"]["attempt"] for h in history if h["type"] == "Uploaded"]
            assert uploads == [1, 2, 3, 4]

            # The archive lost its data: every result made ready since `before`, again, to it.
            response = await admin.post(
                f"/destinations/{archive.ae_title}/replay", params={"since": before.isoformat()}
            )
            assert response.status_code == 202, response.text
            replay = response.json()
            assert replay["results"] == 4 and replay["destination"] == archive.destination
            for attempt in (1, 2, 3, 4):
                done = await wait_for_event(
                    nc, study, dispatched(archive.destination, attempt, True)
                )
                assert isinstance(done, ev.Dispatched) and done.replay_id == replay["replay_id"]
            assert len(await archive.wait_for(8 * RESULTS)) == 8 * RESULTS

            history_after = await EventLog(nc.jetstream()).history(study)
            replayed = [
                r.event
                for r in history_after
                if isinstance(r.event, ev.Dispatched) and r.event.replay_id
            ]
            assert {e.destination for e in replayed} == {archive.destination}
            assert len(pacs.received) == 4 * RESULTS

            view = (
                await admin.get(f"/studies/{study}", params={"after": history_after[-1].sequence})
            ).json()
            archived = next(
                d for d in view["destinations"] if d["destination"] == archive.destination
            )
            assert archived["replays"] == 4 and archived["attempt"] == 4


async def test_relaunch_from_the_command_line_refuses_clearly(
    nc: Client, nats_server: NatsServer, tmp_path: Path
) -> None:
    unknown = await asyncio.to_thread(
        pacsor_cli, "relaunch", "1.2.3.4", cwd=tmp_path, NATS_URL=nats_server.url
    )
    assert unknown.returncode == 1 and "no study 1.2.3.4" in unknown.stderr
    malformed = await asyncio.to_thread(
        pacsor_cli, "relaunch", "1.2.3;rm", cwd=tmp_path, NATS_URL=nats_server.url
    )
    assert malformed.returncode == 2 and "not a DICOM UID" in malformed.stderr
    # As the SCP's NATS user (a compose service's own), asking is refused at once, in one line.
    as_scp = await asyncio.to_thread(
        pacsor_cli, "relaunch", "1.2.3.4", cwd=tmp_path, NATS_URL=nats_server.url_as("scp")
    )
    assert as_scp.returncode == 2
    assert as_scp.stderr.strip().splitlines() == [
        "pacsor: NATS_USER: scp may not publish RelaunchRequested; run this as the admin's user "
        "(docker compose run --rm --no-deps admin ...) or as pacsor"
    ]
