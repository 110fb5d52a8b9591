"""The deployment files: compose.yaml against the Compose schema, nats-server's config, streams."""

from __future__ import annotations

import configparser
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from nats.aio.client import Client
from pacsor.streams import stream_definitions

from pacsor.components import BY_NAME, NATS_ROLES
from pacsor.jetstream.broker import apply_streams, nats_server_binary
from pacsor.jetstream.nats_auth import ensure_deployment_secrets

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT.parent / "shared" / "reference" / "compose-spec.schema.json"


def test_compose_file_is_valid_and_runs_every_component() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    schema_path = SCHEMA if SCHEMA.exists() else ROOT / "tests" / "compose-spec.schema.json"
    # The schema names draft 07 by an address jsonschema does not know; say it directly.
    jsonschema.Draft7Validator(json.loads(schema_path.read_text())).validate(compose)
    commands = [s["command"] for s in compose["services"].values() if "command" in s]
    assert sorted(c[1] for c in commands if c[0] == "run") == sorted(BY_NAME)
    assert compose["services"]["scp"]["ports"] == ["1040:1040"]


def test_nats_server_accepts_its_config(tmp_path: Path) -> None:
    # As compose mounts it: beside authorization.conf, with the site's secrets in secrets/.
    for name in ("nats-server.conf", "authorization.conf"):
        shutil.copy(ROOT / "deploy" / "nats" / name, tmp_path / name)
    ensure_deployment_secrets(tmp_path / "secrets", NATS_ROLES)
    result = subprocess.run(
        [nats_server_binary(), "-c", str(tmp_path / "nats-server.conf"), "-t"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr


async def test_stream_files_apply_idempotently(nc: Client) -> None:
    # `nc` has applied them once already; twice more changes nothing and raises nothing.
    assert await apply_streams(nc) == list(stream_definitions())
    js = nc.jetstream()
    info = await js.stream_info("PACSOR")
    assert info.config.subjects == ["pacsor.study.>", "pacsor.site.>"]
    assert info.config.duplicate_window == 86400.0
    timers = await js.stream_info("PACSOR_TIMERS")
    assert timers.config.allow_msg_schedules


async def test_a_changed_stream_file_updates_the_stream(nc: Client) -> None:
    js = nc.jetstream()
    config = stream_definitions()["PACSOR"] | {"description": "edited by the operator"}
    reply = await nc.request("$JS.API.STREAM.UPDATE.PACSOR", json.dumps(config).encode())
    assert "error" not in json.loads(reply.data)
    await apply_streams(nc)  # the file wins again
    assert (await js.stream_info("PACSOR")).config.description == stream_definitions()["PACSOR"][
        "description"
    ]


def test_compose_builds_the_image_once_and_tags_it() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    builders = [name for name, service in services.items() if "build" in service]
    assert builders == ["scp"]
    pacsor_images = {
        service["image"] for service in services.values() if "pacsor" in service["image"].lower()
    }
    # The name and the tag are settings (a site's own registry), pacsor:latest by default.
    assert pacsor_images == {"${PACSOR_IMAGE:-pacsor}:${PACSOR_VERSION:-latest}"}


def test_every_service_has_a_healthcheck() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    for name, service in compose["services"].items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def test_docker_build_context_holds_only_the_sources() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "*" in ignored  # everything is left out unless listed
    assert {"!pacsor/", "!consumers/", "!streams/", "!pyproject.toml", "!README.md"} <= set(ignored)


def test_demo_pacs_refuses_a_bad_port_in_one_line(tmp_path: Path) -> None:
    from tests.harness import pacsor_cli

    result = pacsor_cli("demo-pacs", "--port", "70000", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == "pacsor: --port: expected a port number, got 70000\n"


def test_the_systemd_unit_is_accepted_by_systemd(tmp_path: Path) -> None:
    """deploy/systemd/pacsor.service, with its ExecStart at this venv's pacsor, verified."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is not installed (apt-get install systemd)")
    unit = (ROOT / "deploy" / "systemd" / "pacsor.service").read_text()
    service = configparser.ConfigParser(strict=False, interpolation=None)
    service.optionxform = str  # type: ignore[assignment,method-assign]  # keys keep their case
    service.read_string(unit)
    assert service["Service"]["ExecStart"] == "/opt/pacsor/bin/pacsor up"
    assert service["Service"]["WorkingDirectory"] == "/var/lib/pacsor"
    assert service["Service"]["Environment"] == "LOG_FORMAT=text"
    assert service["Install"]["WantedBy"] == "multi-user.target"
    here = Path(sys.executable).parent / "pacsor"
    copy = tmp_path / "pacsor.service"
    copy.write_text(unit.replace("/opt/pacsor/bin/pacsor", str(here)))
    # verify warns on stderr (an unknown key, a bad value) and still exits 0: both are checked.
    result = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
