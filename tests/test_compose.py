"""`docker compose up` for real: the demo profile, with no configuration but the NATS
credentials `pacsor nats-credentials` makes, delivers a study; NATS refuses anyone else.

Needs a Docker engine with Compose v2 (`.ci/run` prepares one). Without one the test skips,
saying why; with CI set, a missing engine is a failure.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import nats
import pytest
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import DeliverPolicy
from nats.js.errors import NoStreamResponseError, ServiceUnavailableError
from pacsor.streams import stream_definitions

from pacsor.components import NATS_ROLES
from pacsor.domain import events as ev
from pacsor.jetstream.broker import apply_streams, connect
from pacsor.jetstream.eventlog import EventLog
from pacsor.jetstream.nats_auth import PIPELINE_USER, READER_USER, ensure_deployment_secrets
from pacsor.jetstream.subjects import EVENTS_STREAM
from tests.harness import PROJECT, images, pacsor_cli, write_study
from tests.nats_server import free_port
from tests.test_scp_access import site_certificates, storescu_tls

pytestmark = pytest.mark.timeout(600)

# What JetStream answers while a stream elects a new leader.
LEADERLESS = (NoRespondersError, NoStreamResponseError, NatsTimeoutError, ServiceUnavailableError)

# The demo: the API simulator and a demo PACS.
PROFILES = ("--profile", "demo")


def _engine_problem() -> str | None:
    if shutil.which("docker") is None:
        return "no docker CLI"
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    if info.returncode != 0:
        return "no Docker engine answers: " + info.stderr.strip().splitlines()[-1:][0]
    version = subprocess.run(
        ["docker", "compose", "version"], capture_output=True, text=True, timeout=60
    )
    if version.returncode != 0:
        return "no Compose v2 plugin: " + version.stderr.strip()
    return None


class Compose:
    """`docker compose` on this project, as its own project name with its own host ports."""

    def __init__(self, folder: Path, *more_files: Path) -> None:
        self.project = f"pacsor-test-{uuid.uuid4().hex[:8]}"
        self.nats_port = free_port()
        self.dicom_port = free_port()
        self.admin_port = free_port()
        # Host ports of our own, so that the test runs beside anything else on the machine.
        self.override = folder / "ports.yaml"
        self.override.write_text(
            "services:\n"
            f"  nats:\n    ports: !override\n      - '127.0.0.1:{self.nats_port}:4222'\n"
            f"  scp:\n    ports: !override\n      - '127.0.0.1:{self.dicom_port}:1040'\n"
            f"  admin:\n    ports: !override\n      - '127.0.0.1:{self.admin_port}:7000'\n"
        )
        # No configuration at all: no site file for the containers, none for substitution;
        # only the NATS credentials, made as `pacsor nats-credentials` does, in a folder of the
        # test's (named in the environment, which wins over any site file's PACSOR_NATS_SECRETS).
        empty = folder / "empty.env"
        empty.write_text("")
        self.passwords = ensure_deployment_secrets(folder / "nats-secrets", NATS_ROLES)
        self.env = {
            **os.environ,
            "PACSOR_ENV_FILE": str(folder / "absent.env"),
            "PACSOR_NATS_SECRETS": str(folder / "nats-secrets"),
        }
        self.env.pop("PACSOR_VERSION", None)
        self.base = ["docker", "compose", "--env-file", str(empty), "-p", self.project]
        self.base += ["-f", str(PROJECT / "compose.yaml")]
        for more in (*more_files, self.override):
            self.base += ["-f", str(more)]

    def nats_url(self, user: str = PIPELINE_USER) -> str:
        return f"nats://{user}:{self.passwords[user]}@127.0.0.1:{self.nats_port}"

    def with_env_file(self, env_file: Path) -> Compose:
        """The same project, reading `env_file`: for substitution and as the containers' site
        file (which names itself relative to its own project; here it lives elsewhere)."""
        other = copy.copy(self)
        other.env = {**self.env, "PACSOR_ENV_FILE": str(env_file)}
        other.base = [*self.base]
        other.base[other.base.index("--env-file") + 1] = str(env_file)
        return other

    def __call__(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*self.base, *args],
            cwd=PROJECT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert result.returncode == 0, f"docker compose {' '.join(args)}:\n{result.stderr}"
        return result

    def containers(self) -> list[str]:
        listed = subprocess.run(
            [
                "docker",
                "ps",
                "-a",
                "--filter",
                f"label=com.docker.compose.project={self.project}",
                "--format",
                "{{.Names}}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return listed.stdout.split()


async def dispatched_after(compose: Compose, send: Callable[[], None]) -> ev.Dispatched:
    """Run `send` (which stores a study), then the first Dispatched that follows it; any
    failure event on the way fails the test."""
    nc = await connect(compose.nats_url(), "compose test")
    try:
        sub = await nc.jetstream().subscribe(
            "pacsor.study.>",
            stream=EVENTS_STREAM,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.NEW,
        )
        await asyncio.to_thread(send)
        while True:
            event = ev.decode((await sub.next_msg(timeout=120)).data)
            assert not isinstance(event, ev.UploadFailed | ev.ResultFailed | ev.DispatchFailed)
            if isinstance(event, ev.Dispatched):
                return event
    finally:
        await nc.close()


def _engine_or_skip() -> None:
    problem = _engine_problem()
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but Docker is not usable: {problem}")
        pytest.skip(f"needs a Docker engine with Compose v2: {problem}")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Compose]:
    _engine_or_skip()
    compose = Compose(tmp_path_factory.mktemp("compose"))
    try:
        # --wait: returns once every service's healthcheck passes, or fails.
        compose(*PROFILES, "up", "-d", "--build", "--wait", "--wait-timeout", "240")
        yield compose
    finally:
        logs = subprocess.run(
            [*compose.base, "--profile", "*", "logs", "--no-color"],
            cwd=PROJECT,
            env=compose.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        subprocess.run(
            [*compose.base, "--profile", "*", "down", "-v", "--timeout", "20"],
            cwd=PROJECT,
            env=compose.env,
            capture_output=True,
            timeout=300,
        )
        if os.environ.get("PACSOR_SHOW_COMPOSE_LOGS"):
            print(logs.stdout[-20000:])


def test_every_service_is_healthy(demo: Compose) -> None:
    listed = demo(*PROFILES, "ps", "--format", "json").stdout
    services = [json.loads(line) for line in listed.splitlines() if line.strip()]
    health = {s["Service"]: s["Health"] for s in services}
    assert health == {
        name: "healthy"
        for name in (
            "nats",
            "scp",
            "quiet-timer",
            "completion",
            "uploader",
            "poller",
            "dispatcher",
            "retention",
            "admin",
            "simulator",
            "demo-pacs",
        )
    }


def test_the_admin_api_answers_on_the_host(demo: Compose) -> None:
    answer = httpx.get(f"http://127.0.0.1:{demo.admin_port}/health", timeout=30)
    assert answer.status_code in (200, 503)  # 503: the admin's verdict on the pipeline
    assert "healthy" in answer.json()


def test_a_handler_probe_fails_for_a_component_not_running_there(demo: Compose) -> None:
    # The uploader's container runs no dispatcher: its probe must say so, not pass blindly.
    result = subprocess.run(
        [*demo.base, "exec", "-T", "uploader", "pacsor", "health", "dispatcher"],
        cwd=PROJECT,
        env=demo.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stdout.strip() == "dispatcher: no pull loop has fetched yet"
    assert demo("exec", "-T", "uploader", "pacsor", "health", "uploader").stdout.strip() == (
        "uploader: ok"
    )


async def test_demo_with_no_configuration_delivers_a_study(demo: Compose, tmp_path: Path) -> None:
    def send() -> None:
        sent = pacsor_cli("send", "--sample", "3", "--port", str(demo.dicom_port), cwd=tmp_path)
        assert sent.returncode == 0, sent.stderr

    event = await dispatched_after(demo, send)
    assert event.destination == "DEMOPACS@demo-pacs:11112"
    stored = demo("exec", "-T", "demo-pacs", "find", "/var/lib/pacsor-demo", "-name", "*.dcm")
    # 3 images x 2 inference commands, in the demo-pacs volume.
    assert len(stored.stdout.split()) == 6
    logs = demo("--profile", "demo", "logs", "--no-color", "demo-pacs").stdout
    assert logs.count("demo PACS stored") == 6
    # Every service ran as its own NATS user, and nats-server refused none of them anything.
    assert "Violation" not in demo("logs", "--no-color", "nats").stdout


async def test_nats_refuses_strangers_and_the_reader_only_reads(demo: Compose) -> None:
    for url in (f"nats://127.0.0.1:{demo.nats_port}", demo.nats_url().replace("pacsor:", "x:")):
        with pytest.raises(nats.errors.Error, match=r"(?i)authorization violation"):
            await nats.connect(url, allow_reconnect=False, connect_timeout=5)
    errors: list[str] = []

    async def on_error(err: Exception) -> None:
        errors.append(str(err))

    reader = await nats.connect(
        demo.nats_url(READER_USER), allow_reconnect=False, error_cb=on_error
    )
    try:
        js = reader.jetstream(timeout=3)
        info = await js.stream_info(EVENTS_STREAM)
        with pytest.raises(NatsTimeoutError):
            await js.purge_stream(EVENTS_STREAM)
        assert (await js.stream_info(EVENTS_STREAM)).state.messages == info.state.messages
    finally:
        await reader.close()
    assert any("permissions violation" in e.lower() for e in errors), errors


def test_pacsor_check_passes_inside_the_demo(demo: Compose) -> None:
    lines = demo("run", "--rm", "--no-deps", "-T", "scp", "check").stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "ok    NATS nats",
        *(f"ok    stream {name}" for name in stream_definitions()),
        "ok    C-ECHO DEMOPACS@demo-pacs",
        "ok    C-STORE DEMOPACS@demo-pacs",
        "ok    AI core default http",
    ]


async def test_an_operator_relaunches_a_study_from_the_admin_container(
    demo: Compose, tmp_path: Path
) -> None:
    """As docs/deployment.md says: a one-off `relaunch --wait` in the admin's service, as the
    admin's NATS user, follows the new attempt to its end; the scp's user is refused."""

    def send() -> None:
        sent = pacsor_cli("send", "--sample", "1", "--port", str(demo.dicom_port), cwd=tmp_path)
        assert sent.returncode == 0, sent.stderr

    study = (await dispatched_after(demo, send)).study_uid
    one_off = ("run", "--rm", "--no-deps", "-T")
    relaunch = demo(*one_off, "admin", "relaunch", study, "--wait", timeout=180).stdout
    assert relaunch.splitlines()[-1] == "attempt 2 ended", relaunch
    refused = subprocess.run(
        [*demo.base, *one_off, "scp", "relaunch", study],
        cwd=PROJECT,
        env=demo.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2
    assert "NATS_USER: scp may not publish RelaunchRequested" in refused.stderr


async def test_a_site_written_by_the_wizard_runs_with_compose(
    demo: Compose, tmp_path: Path
) -> None:
    # An operator answers the wizard (here as options), then `up -d` with the site's file:
    # every container is recreated with the site's settings and a study goes through.
    written = pacsor_cli(
        "setup",
        "--project-dir",
        str(tmp_path),
        "--site=lyon",
        "--product=SmartChest",
        "--api-url=http://simulator:8421",
        "--token=site-token",
        "--pacs-aet=DEMOPACS",
        "--pacs-host=demo-pacs",
        "--pacs-port=11112",
        "--aet=SITEGW",
        "--no-hl7",
        "--no-second-core",
        cwd=tmp_path,
    )
    assert written.returncode == 0, written.stderr
    site_file = tmp_path / "env-files" / ".env.lyon"
    site = demo.with_env_file(site_file)
    site(*PROFILES, "up", "-d", "--wait", "--wait-timeout", "240")
    printed = site("exec", "-T", "uploader", "printenv", "TOKEN", "INFERENCE_COMMANDS").stdout
    assert printed.split() == ["site-token", "smartchest"]

    nc = await connect(demo.nats_url(), "compose site test")
    try:
        sub = await nc.jetstream().subscribe(
            "pacsor.study.*.*.dispatched",
            stream=EVENTS_STREAM,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.NEW,
        )
        sent = pacsor_cli(
            "send",
            "--sample",
            "2",
            "--port",
            str(demo.dicom_port),
            "--aet",
            "SITEGW",
            cwd=tmp_path,
        )
        assert sent.returncode == 0, sent.stderr
        event = ev.decode((await sub.next_msg(timeout=120)).data)
    finally:
        await nc.close()
    assert isinstance(event, ev.Dispatched)
    # One result per image: SmartChest is one inference command.
    assert event.object_count == 2


def test_up_never_asks_a_registry_for_the_image_built_here(tmp_path: Path) -> None:
    """With the image absent (a tag never built), `up` builds it and pulls nothing: the dry
    run lists what it would do without doing it."""
    _engine_or_skip()
    compose = Compose(tmp_path)
    compose.env["PACSOR_VERSION"] = f"never-built-{uuid.uuid4().hex[:8]}"
    planned = compose(*PROFILES, "--dry-run", "up", "-d", timeout=120)
    said = planned.stdout + planned.stderr
    assert "Built" in said, said
    assert "Pulling" not in said and "registry" not in said, said


def test_down_as_documented_removes_every_container(demo: Compose) -> None:
    assert len(demo.containers()) == 11  # nats, 8 components (retention among them), 2 of the demo
    # Compose stops only the profiles it is told about: the README says to name the demo's.
    demo(*PROFILES, "down", "--timeout", "20")
    assert demo.containers() == []


async def test_the_cluster_override_runs_three_nodes_that_survive_one_lost(
    tmp_path: Path,
) -> None:
    _engine_or_skip()
    cluster = Compose(tmp_path, PROJECT / "deploy" / "nats" / "compose.cluster.yaml")
    try:
        cluster("up", "-d", "--wait", "--wait-timeout", "120", "nats", "nats-2", "nats-3")
        nc = await connect(cluster.nats_url(), "compose cluster test")
        try:
            await apply_streams(nc, replicas=3)
            js = nc.jetstream(timeout=10)
            info = await js.stream_info(EVENTS_STREAM)
            assert info.cluster is not None and info.cluster.name == "pacsor"
            peers = {info.cluster.leader, *(p.name for p in info.cluster.replicas or [])}
            assert peers == {"nats-1", "nats-2", "nats-3"}
            # A node is lost, the stream's leader when that is not the node we talk to (nats-1):
            # the stream still takes writes.
            leader = info.cluster.leader
            cluster("kill", leader if leader in ("nats-2", "nats-3") else "nats-3")
            event = ev.InstanceRejected(
                study_uid="1.2.3",
                reason="compose cluster test",
                dimse_status=0xC210,
                rejection_id="compose-cluster-test",
            )
            # If the lost node led the stream, the other two elect a leader first: until then
            # the stream does not answer.
            async with asyncio.timeout(60):
                while True:
                    try:
                        await EventLog(js).publish(event)
                        info = await js.stream_info(EVENTS_STREAM)
                        break
                    except LEADERLESS:
                        await asyncio.sleep(0.5)
            assert info.state.messages == 1
        finally:
            await nc.close()
    finally:
        subprocess.run(
            [*cluster.base, "down", "-v", "--timeout", "20"],
            cwd=PROJECT,
            env=cluster.env,
            capture_output=True,
            timeout=300,
        )


# A site of the original gateway, migrated, then the peers its site file names: two PACS and
# a RIS, beside the API simulator (no profile needed: the site names no demo).
PEERS = """
x-peer: &peer
  image: ${PACSOR_IMAGE:-pacsor}:${PACSOR_VERSION:-latest}
  pull_policy: never
  healthcheck: &peer-health
    interval: 5s
    timeout: 30s
    retries: 12
services:
  simulator:
    profiles: !reset []
  pacs-a:
    <<: *peer
    command: ["demo-pacs", "--host", "0.0.0.0", "--port", "11112", "--aet", "PACS_A",
              "--folder", "/var/lib/pacsor-demo"]
    healthcheck:
      <<: *peer-health
      test: ["CMD", "pacsor", "echo", "PACS_A@127.0.0.1:11112"]
  pacs-b:
    <<: *peer
    command: ["demo-pacs", "--host", "0.0.0.0", "--port", "11112", "--aet", "PACS_B",
              "--folder", "/var/lib/pacsor-demo"]
    healthcheck:
      <<: *peer-health
      test: ["CMD", "pacsor", "echo", "PACS_B@127.0.0.1:11112"]
  ris:
    <<: *peer
    command: ["demo-ris", "--host", "0.0.0.0", "--port", "2575"]
    healthcheck:
      <<: *peer-health
      test: ["CMD", "python", "-c", "import socket; socket.create_connection(('127.0.0.1', 2575))"]
"""


async def test_a_migrated_site_runs_with_a_plain_compose_up(tmp_path: Path) -> None:
    _engine_or_skip()
    original = tmp_path / "original"
    shutil.copytree(PROJECT / "tests" / "fixtures" / "original" / "hl7", original, symlinks=True)
    site_dir = tmp_path / "site"
    migrated = pacsor_cli("migrate", str(original), "--project-dir", str(site_dir), cwd=tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    peers = tmp_path / "peers.yaml"
    peers.write_text(PEERS)
    site = Compose(tmp_path, peers).with_env_file(site_dir / "env-files" / ".env.clinique-sud")
    # An image tag of this test's own: another build on this engine cannot replace it.
    tag = f"test-{site.project}"
    site.env["PACSOR_VERSION"] = tag
    try:
        # No --profile: the site file's COMPOSE_PROFILES (written by migrate) starts hl7.
        site("up", "-d", "--build", "--wait", "--wait-timeout", "300", timeout=900)
        listed = site("ps", "--format", "json").stdout
        health = {
            s["Service"]: s["Health"]
            for s in (json.loads(line) for line in listed.splitlines() if line.strip())
        }
        assert health.get("hl7") == "healthy", health

        # The original's command, as its scripts run it in the HL7 container.
        shown = site("exec", "-T", "hl7", "curl", "-s", "http://localhost:8000/config/").stdout
        config = json.loads(shown)
        assert (config["HL7_ENABLE"], config["HL7_RIS_IP"]) == ("true", "ris")
        assert config["MEASURE_INFERENCE_COMMAND"] == "measures"

        nc = await connect(site.nats_url(), "compose migrated site test")
        try:
            sub = await nc.jetstream().subscribe(
                "pacsor.study.>",
                stream=EVENTS_STREAM,
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.NEW,
            )
            sent = pacsor_cli(
                "send",
                "--sample",
                "2",
                "--port",
                str(site.dicom_port),
                "--aet",
                "SUDGW",
                cwd=tmp_path,
            )
            assert sent.returncode == 0, sent.stderr
            dispatched: dict[tuple[str, str], int] = {}
            ris: set[str] = set()
            while len(dispatched) < 3 or len(ris) < 2:
                event = ev.decode((await sub.next_msg(timeout=180)).data)
                assert not isinstance(
                    event, ev.UploadFailed | ev.ResultFailed | ev.DispatchFailed | ev.Hl7Failed
                ), event
                if isinstance(event, ev.Dispatched):
                    dispatched[(event.core, event.destination)] = event.object_count
                if isinstance(event, ev.Hl7Sent):
                    assert (event.ack_code, event.ris) == ("AA", "ris:2575")
                    ris.add(event.core)
        finally:
            await nc.close()
        # The first core to both PACS (its CALLBACK_URLS), core 1 to the second (CALLBACK_URLS_1):
        # 2 images x 2 commands (detection, measures), and x 1 (detection) for core 1.
        assert dispatched == {
            ("default", "PACS_A@pacs-a:11112"): 4,
            ("default", "PACS_B@pacs-b:11112"): 4,
            ("core1", "PACS_B@pacs-b:11112"): 2,
        }
        assert ris == {"default", "core1"}
        stored = {
            pacs: site(
                "exec", "-T", pacs, "find", "/var/lib/pacsor-demo", "-name", "*.dcm"
            ).stdout.split()
            for pacs in ("pacs-a", "pacs-b")
        }
        # Each PACS keeps one file per SOP instance: core 1's detection results are the same
        # objects as the first core's (the simulator answers alike), stored again, kept once.
        assert (len(stored["pacs-a"]), len(stored["pacs-b"])) == (4, 4)
        stores = {
            pacs: site("logs", "--no-color", pacs).stdout.count("demo PACS stored")
            for pacs in ("pacs-a", "pacs-b")
        }
        assert stores == {"pacs-a": 4, "pacs-b": 6}
        assert site("logs", "--no-color", "ris").stdout.count("demo RIS received") == 2
    finally:
        subprocess.run(
            [*site.base, "--profile", "*", "down", "-v", "--timeout", "20"],
            cwd=PROJECT,
            env=site.env,
            capture_output=True,
            timeout=300,
        )
        subprocess.run(["docker", "rmi", f"pacsor:{tag}"], capture_output=True, timeout=120)


def test_the_image_name_and_tag_are_settings_for_a_registry(tmp_path: Path) -> None:
    _engine_or_skip()
    registry = tmp_path / "registry.env"
    registry.write_text(
        "PACSOR_IMAGE=registry.example.org/radiology/pacsor\nPACSOR_VERSION=2.1.0\n"
        "PACSOR_PULL_POLICY=missing\n"
    )
    compose = Compose(tmp_path).with_env_file(registry)
    services = json.loads(compose("config", "--format", "json").stdout)["services"]
    assert {
        (s["image"], s["pull_policy"]) for s in services.values() if "nats" not in s["image"]
    } == {("registry.example.org/radiology/pacsor:2.1.0", "missing")}


@pytest.mark.dcmtk
async def test_the_dicom_tls_override_takes_tls_associations_from_known_certificates(
    tmp_path: Path,
) -> None:
    """deploy/compose.dicom-tls.yaml with a site's files: DCMTK's storescu over TLS with the
    site CA's client certificate is stored and delivered; without a certificate, refused."""
    _engine_or_skip()
    certs = site_certificates(tmp_path / "tls")
    site = tmp_path / "dicom-tls"  # the folder the override reads, as a site lays it out
    site.mkdir()
    for source, target in (
        ("scp.pem", "pacsor.pem"),
        ("scp.key", "pacsor.key"),
        ("siteca.pem", "ca.pem"),
    ):
        shutil.copy(certs / source, site / target)
        (site / target).chmod(0o644)  # the container's uid 1000 reads them
    compose = Compose(tmp_path, PROJECT / "deploy" / "compose.dicom-tls.yaml")
    tls_port = free_port()
    compose.override.write_text(
        compose.override.read_text().replace(
            f"'127.0.0.1:{compose.dicom_port}:1040'\n",
            f"'127.0.0.1:{compose.dicom_port}:1040'\n      - '127.0.0.1:{tls_port}:2762'\n",
        )
    )
    compose.env["DICOM_TLS_FOLDER"] = str(site)
    files = write_study(tmp_path / "study", images(2))
    try:
        compose(*PROFILES, "up", "-d", "--build", "--wait", "--wait-timeout", "240")
        refused = await asyncio.to_thread(storescu_tls, tls_port, files, certs, "stranger")
        assert refused.returncode != 0

        def send() -> None:
            stored = storescu_tls(tls_port, files, certs, "modality")
            assert stored.returncode == 0, stored.stderr

        event = await dispatched_after(compose, send)
    finally:
        subprocess.run(
            [*compose.base, "--profile", "*", "down", "-v", "--timeout", "20"],
            cwd=PROJECT,
            env=compose.env,
            capture_output=True,
            timeout=300,
        )
    assert event.object_count == 4  # 2 images x 2 inference commands
