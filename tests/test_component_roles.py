"""Each component as its own NATS user, as compose runs them: a real nats-server with the
roles of pacsor.components, a study through the whole pipeline, and what each role is refused.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import httpx
import nats
import pytest
from nats.aio.client import Client

from pacsor.components import BY_NAME, REGISTRY
from pacsor.devtools.demo_ris import DemoRis
from pacsor.devtools.simulator import SimulatorSettings, running_simulator
from pacsor.domain import events as ev
from pacsor.jetstream.broker import apply_streams, connect
from pacsor.jetstream.subjects import (
    EVENTS_STREAM,
    INSTANCES_BUCKET,
    RESULTS_BUCKET,
    events_filter,
    object_chunk_subject,
    stream_api_subject,
    uid_token,
)
from tests.harness import (
    TOKEN,
    ReceivingPacs,
    gateway_settings,
    running_gateway,
    send_study,
    to_the_ris,
    wait_for_event,
)
from tests.nats_server import NatsServer

STUDY = "1.2.826.0.1.3680043.10.1.18"
VIOLATION = "permissions violation for publish to "


def violations(server: NatsServer) -> list[str]:
    return [
        line
        for line in (server.store / "server.log").read_text().splitlines()
        if "Violation" in line
    ]


async def test_every_component_runs_a_study_as_its_own_user(
    nc: Client, nats_server: NatsServer, tmp_path: Path, pacs: ReceivingPacs
) -> None:
    """The pipeline split as compose splits it, each component with its own credentials, takes
    a study to the PACS and the RIS and relaunches it; nats-server refuses nothing on the way."""
    async with DemoRis() as ris:
        with running_simulator(SimulatorSettings(token=TOKEN, running_polls=1)) as (api_url, _):
            base = gateway_settings(nats_server.url, api_url, pacs, **to_the_ris(ris.port))
            async with contextlib.AsyncExitStack() as stack:
                ready = {}
                for component in REGISTRY:
                    own = gateway_settings(
                        nats_server.url_as(component.name),
                        api_url,
                        pacs,
                        PORT=str(base.port),
                        **to_the_ris(ris.port),
                    )
                    ready[component.name] = await stack.enter_async_context(
                        running_gateway(own, components=(component.name,))
                    )
                study, _ = await send_study(base, tmp_path / "study", 2)
                first = await wait_for_event(nc, study, is_dispatched(1), 90)
                assert isinstance(first, ev.Dispatched) and first.object_count == 4
                await wait_for_event(nc, study, lambda e: isinstance(e, ev.Hl7Sent), 60)
                async with httpx.AsyncClient(base_url=ready["admin"]["admin_url"]) as admin:
                    response = await admin.post(
                        f"/studies/{study}/relaunch", json={"requested_by": "alice"}
                    )
                    assert response.status_code == 202, response.text
                await wait_for_event(nc, study, is_dispatched(2), 90)
    assert len(pacs.received) == 2 * first.object_count
    assert violations(nats_server) == []


def is_dispatched(attempt: int) -> Callable[[ev.AnyEvent], bool]:
    return lambda e: isinstance(e, ev.Dispatched) and e.attempt == attempt


def subject_of(kind: type[ev.Event]) -> str:
    """A subject where one event of `kind` would be published (its filter, filled in)."""
    return events_filter(kind).replace("*", uid_token(STUDY), 1).replace("*", "default")


async def refused_publishes(server: NatsServer, user: str, subjects: list[str]) -> set[str]:
    """Publish a message to each subject as `user`; the subjects the server refused."""
    refused: list[str] = []

    async def on_error(err: Exception) -> None:
        text = str(err).lower()
        if VIOLATION in text:
            refused.append(text.split(VIOLATION, 1)[1].strip(' "'))

    client = await nats.connect(server.url_as(user), allow_reconnect=False, error_cb=on_error)
    try:
        for subject in subjects:
            await client.publish(subject, b"{}")
        # A request after them all: its answer means every refusal before it has arrived.
        await client.request(stream_api_subject("INFO", EVENTS_STREAM), b"", timeout=5)
    finally:
        await client.close()
    return set(refused)


@pytest.mark.parametrize("name", list(BY_NAME))
async def test_a_component_publishes_only_the_events_it_declares(
    nats_server: NatsServer, nc: Client, name: str
) -> None:
    declared = BY_NAME[name].publishes.events
    every = {subject_of(kind): kind for kind in ev.catalogue()}
    refused = await refused_publishes(nats_server, name, list(every))
    assert {every[s] for s in refused} == {k for k in ev.catalogue() if k not in declared}
    # What got through is in the stream: exactly the declared types, once each.
    info = await nc.jetstream().stream_info(EVENTS_STREAM, subjects_filter="pacsor.>")
    assert set(info.state.subjects or {}) == {subject_of(kind) for kind in declared}


async def test_results_and_history_are_out_of_the_scp_s_reach(nats_server: NatsServer) -> None:
    """The SCP takes hostile traffic: its credentials write instances, never results, and
    erase nothing."""
    attempts = [
        object_chunk_subject(RESULTS_BUCKET, "forged"),
        f"$O.{RESULTS_BUCKET}.M.forged",
        subject_of(ev.ResultReady),
        subject_of(ev.RelaunchRequested),
        stream_api_subject("PURGE", EVENTS_STREAM),
        stream_api_subject("DELETE", EVENTS_STREAM),
        stream_api_subject("UPDATE", EVENTS_STREAM),
        "pacsor.webps.radnet.report",
    ]
    allowed = [object_chunk_subject(INSTANCES_BUCKET, "chunk"), subject_of(ev.InstanceReceived)]
    refused = await refused_publishes(nats_server, "scp", attempts + allowed)
    assert refused == {s.lower() for s in attempts}


async def test_only_the_admin_changes_a_stream_the_others_leave_it(
    nats_server: NatsServer, nc: Client
) -> None:
    await apply_streams(nc)
    for user, changes in (("uploader", False), ("admin", True)):
        client = await connect(nats_server.url_as(user), "pacsor tests")
        try:
            await apply_streams(client, max_ages={EVENTS_STREAM: 259200.0}, update=changes)
        finally:
            await client.close()
        info = await nc.jetstream().stream_info(EVENTS_STREAM)
        assert (info.config.max_age == 259200.0) is changes
    assert violations(nats_server) == []
