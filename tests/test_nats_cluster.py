"""pacsor on a three-node JetStream cluster started from deploy/nats/cluster.conf.

Three real nats-server processes (the config's ports changed to free ones, the routes pointed at
them), streams and buckets replicated on all three. One node is killed in the middle of a
study: the study is still dispatched exactly once; restarted, the node catches up.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from nats.aio.client import Client
from nats.js.api import StreamInfo

from pacsor.components import NATS_ROLES
from pacsor.devtools.simulator import SimulatorSettings, running_simulator
from pacsor.domain import events as ev
from pacsor.jetstream.broker import connect, nats_server_binary
from pacsor.jetstream.eventlog import EventLog
from pacsor.jetstream.nats_auth import (
    PIPELINE_USER,
    ROUTE_PASSWORD,
    ROUTE_USER,
    ensure_deployment_secrets,
)
from pacsor.jetstream.subjects import EVENTS_STREAM, RESULTS_BUCKET
from tests.harness import (
    PROJECT,
    TOKEN,
    ReceivingPacs,
    gateway_settings,
    of_type,
    pacsor_cli,
    running_gateway,
    send_study,
)
from tests.harness import wait_for_event as wait_for_event_once
from tests.nats_server import NatsServer, free_port

CLUSTER_CONF = PROJECT / "deploy" / "nats" / "cluster.conf"


class ClusterNode:
    """One nats-server of the cluster, from the deployment's config with test ports."""

    def __init__(self, name: str, store: Path) -> None:
        self.name = name
        self.store = store
        self.port, self.http_port, self.route_port = free_port(), free_port(), free_port()
        self.routes: list[str] = []
        self.process: subprocess.Popen[bytes] | None = None
        # The credentials the deployment's nodes share, made as `pacsor nats-credentials` does.
        self.secrets = store.parent / "secrets"
        self.passwords = ensure_deployment_secrets(self.secrets, NATS_ROLES)

    @property
    def url(self) -> str:
        return f"nats://{PIPELINE_USER}:{self.passwords[PIPELINE_USER]}@127.0.0.1:{self.port}"

    def start(self) -> None:
        self.store.mkdir(parents=True, exist_ok=True)
        # The deployment's file as it is, but for the store and route port.
        conf = self.store / "cluster.conf"
        text = CLUSTER_CONF.read_text()
        assert "store_dir: /data" in text
        assert text.count("  port: 6222\n") == 1
        # The route port in the file too: nats-server's --cluster flag would drop the file's
        # route authorization along with its listen address.
        text = text.replace("  port: 6222\n", f"  port: {self.route_port}\n")
        conf.write_text(text.replace("store_dir: /data", f'store_dir: "{self.store}"'))
        authorization = CLUSTER_CONF.with_name("authorization.conf")
        (self.store / authorization.name).write_text(authorization.read_text())
        if not (self.store / "secrets").exists():
            (self.store / "secrets").symlink_to(self.secrets)
        self.process = subprocess.Popen(
            [
                nats_server_binary(),
                "-c",
                str(conf),
                "--addr",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--http_port",
                str(self.http_port),
                "--routes",
                ",".join(self.routes),
                "--log",
                str(self.store / "server.log"),
            ],
            env={**os.environ, "NATS_SERVER_NAME": self.name},
            stdin=subprocess.DEVNULL,
        )

    async def wait_healthy(self, timeout: float = 60) -> None:
        """Until /healthz says the node serves JetStream with the cluster's current state."""
        async with httpx.AsyncClient() as http, asyncio.timeout(timeout):
            while True:
                assert self.process is not None and self.process.poll() is None, (
                    self.store / "server.log"
                ).read_text()[-2000:]
                try:
                    answer = await http.get(f"http://127.0.0.1:{self.http_port}/healthz")
                    if answer.status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.2)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=15)
        self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=15)
            self.process = None


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[list[ClusterNode]]:
    nodes = [ClusterNode(f"nats-{n}", tmp_path / f"nats-{n}") for n in (1, 2, 3)]
    for node in nodes:
        # As the deployment's routes give it: the route password the nodes share.
        password = (node.secrets / ROUTE_PASSWORD).read_text().strip()
        node.routes = [
            f"nats-route://{ROUTE_USER}:{password}@127.0.0.1:{other.route_port}" for other in nodes
        ]
        node.start()
    try:
        for node in nodes:
            await node.wait_healthy()
        yield nodes
    finally:
        for node in nodes:
            node.stop()


async def wait_for_event(nc: Client, study: str, match: type[ev.Event]) -> ev.AnyEvent:
    """As the harness's, but through a leader election: JetStream may answer 503 meanwhile."""
    async with asyncio.timeout(120):
        while True:
            try:
                return await wait_for_event_once(nc, study, of_type(match), timeout=20)
            except Exception:  # a JetStream error while the cluster elects a leader: again
                await asyncio.sleep(0.5)


async def replica_state(nc: Client, stream: str) -> StreamInfo:
    async with asyncio.timeout(60):
        while True:
            try:
                return await nc.jetstream(timeout=5).stream_info(stream)
            except Exception:  # no leader for a moment after a node is lost
                await asyncio.sleep(0.5)


async def test_a_node_lost_mid_study_then_restarted(
    cluster: list[ClusterNode], tmp_path: Path, pacs: ReceivingPacs
) -> None:
    urls = ",".join(node.url for node in cluster)
    nc = await connect(urls, "cluster test")
    try:
        with running_simulator(SimulatorSettings(token=TOKEN, running_polls=3)) as (api_url, _):
            settings = gateway_settings(urls, api_url, pacs, NATS_REPLICAS="3")
            async with running_gateway(settings):
                for stream in (EVENTS_STREAM, f"OBJ_{RESULTS_BUCKET}"):
                    info = await replica_state(nc, stream)
                    assert info.config.num_replicas == 3
                    assert info.cluster is not None and len(info.cluster.replicas or []) == 2
                study, _ = await send_study(settings, tmp_path / "study", images=3)
                await wait_for_event(nc, study, ev.Uploaded)
                # Lose the node leading the event stream: the hardest one to lose.
                info = await replica_state(nc, EVENTS_STREAM)
                assert info.cluster is not None
                lost = next(node for node in cluster if node.name == info.cluster.leader)
                lost.kill()
                await pacs.wait_for(6, timeout=120)
                await wait_for_event(nc, study, ev.Dispatched)
        history = await EventLog(nc.jetstream(timeout=10)).history(study)
        kinds = Counter(type(r.event).__name__ for r in history)
        assert kinds["StudyComplete"] == kinds["Uploaded"] == kinds["ResultReady"] == 1
        assert kinds["Dispatched"] == 1 and kinds["DispatchFailed"] == 0
        delivered = Counter(pacs.sop_uids())
        assert len(delivered) == 6 and set(delivered.values()) == {1}

        # Back with its store: the node catches up on what it missed.
        lost.start()
        await lost.wait_healthy()
        last = (await replica_state(nc, EVENTS_STREAM)).state.last_seq
        async with asyncio.timeout(60):
            while True:
                info = await replica_state(nc, EVENTS_STREAM)
                assert info.cluster is not None
                peers = {p.name: p for p in info.cluster.replicas or []}
                back = peers.get(lost.name)
                if info.cluster.leader == lost.name or (back and back.current and not back.lag):
                    break
                await asyncio.sleep(0.2)
        assert info.state.last_seq == last
    finally:
        await nc.close()


def test_more_replicas_than_servers_is_one_line(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats")
    server.start()
    try:
        result = pacsor_cli(
            "run", "quiet-timer", cwd=tmp_path, NATS_URL=server.url, NATS_REPLICAS="3"
        )
    finally:
        server.stop()
    assert result.returncode == 2
    # The first stream applied names the fault; which one that is depends on the stream list.
    assert re.match(
        r"pacsor: NATS_REPLICAS: 3 copies of stream \w+ need a JetStream cluster of at least 3 "
        r"servers",
        result.stderr,
    ), result.stderr
    assert result.stderr.count("\n") == 1


def test_replicas_out_of_range_is_one_line(tmp_path: Path) -> None:
    result = pacsor_cli("run", "quiet-timer", cwd=tmp_path, NATS_REPLICAS="0")
    assert (result.returncode, result.stderr) == (
        2,
        "pacsor: NATS_REPLICAS: expected an integer >= 1, got '0'\n",
    )


async def test_a_server_without_the_route_password_cannot_join(
    cluster: list[ClusterNode], tmp_path: Path
) -> None:
    """Port 6222 is no back door: a nats-server that routes to a node without the cluster's
    password is refused, and never sees what the cluster replicates."""
    first = cluster[0]
    log = first.store / "server.log"
    assert "authentication failure" not in log.read_text().lower()  # the nodes know it
    rogue_options = {
        "--name": "rogue",
        "--cluster_name": "pacsor",
        "--addr": "127.0.0.1",
        "--port": str(free_port()),
        "--store_dir": str(tmp_path / "rogue"),
        "--cluster": f"nats://127.0.0.1:{free_port()}",
        "--routes": f"nats-route://127.0.0.1:{first.route_port}",
    }
    rogue = subprocess.Popen(
        [nats_server_binary(), "--jetstream", *(x for o in rogue_options.items() for x in o)],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        async with asyncio.timeout(30):
            while "authentication failure" not in log.read_text().lower():
                await asyncio.sleep(0.2)  # nothing to await but the node's log
        async with httpx.AsyncClient() as http:
            routez = (await http.get(f"http://127.0.0.1:{first.http_port}/routez")).json()
        assert {route.get("remote_name") for route in routez["routes"]} <= {"nats-2", "nats-3"}
    finally:
        rogue.terminate()
        rogue.wait(timeout=15)
