"""Secrets nowhere: a study goes through with secrets of its own, then every log line, every
message of every stream (events, timers, holds, key-value entries, object metadata and chunks),
the admin's /config and `pacsor setup --show` are searched for them."""

from __future__ import annotations

import io
import logging
import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import nats
import pytest
from nats.aio.client import Client

from pacsor.config import ConfigError, load_settings
from pacsor.config.variables import mask_text, masked
from pacsor.devtools.simulator import SimulatorSettings, running_simulator
from pacsor.domain import events as ev
from pacsor.jetstream.nats_auth import PIPELINE_USER
from pacsor.process import logs
from tests.harness import (
    ReceivingPacs,
    gateway_settings,
    of_type,
    pacsor_cli,
    running_gateway,
    send_study,
    wait_for_event,
)
from tests.nats_server import NatsServer


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """Every log line pacsor writes, formatted as in production (JSON lines)."""
    written = io.StringIO()
    handler = logging.StreamHandler(written)
    handler.setFormatter(logs.JsonLines())
    root = logging.getLogger()
    pacsor_logger = logging.getLogger("pacsor")
    before = root.level, pacsor_logger.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    pacsor_logger.setLevel(logging.DEBUG)
    yield written
    root.removeHandler(handler)
    root.setLevel(before[0])
    pacsor_logger.setLevel(before[1])


async def every_stored_message(nc: Client) -> list[bytes]:
    """Subject, headers and body of every message of every stream, as bytes."""
    js = nc.jetstream(timeout=10)
    found: list[bytes] = []
    for stream in await js.streams_info():
        for seq in range(stream.state.first_seq or 1, stream.state.last_seq + 1):
            try:
                msg = await js.get_msg(stream.config.name or "", seq)
            except nats.js.errors.NotFoundError:
                continue  # removed (a purged chunk, an expired timer)
            headers = "".join(f"{k}:{v}" for k, v in (msg.headers or {}).items())
            found.append(f"{msg.subject} {headers} ".encode() + (msg.data or b""))
    return found


async def test_a_study_leaves_its_secrets_nowhere(
    nc: Client,
    nats_server: NatsServer,
    tmp_path: Path,
    pacs: ReceivingPacs,
    log_lines: io.StringIO,
) -> None:
    token = "tok-" + secrets.token_hex(12)
    admin_token = "adm-" + secrets.token_hex(12)
    store_key = "key-" + secrets.token_hex(12)
    nats_password = nats_server.passwords[PIPELINE_USER]
    (tmp_path / "admin-token").write_text(admin_token + "\n")
    (tmp_path / "api-token").write_text(token)
    with running_simulator(SimulatorSettings(token=token, running_polls=1)) as (api_url, _):
        settings = gateway_settings(
            nats_server.url,  # nats://pacsor:<password>@127.0.0.1:port
            api_url,
            pacs,
            TOKEN="",  # the harness sets one: here it comes from its file
            TOKEN_FILE=str(tmp_path / "api-token"),
            ADMIN_TOKEN_FILE=str(tmp_path / "admin-token"),
            NATS_STORE_KEY=store_key,
        )
        assert settings.token == token and settings.admin_token == admin_token
        async with running_gateway(settings) as ready:
            study, _ = await send_study(settings, tmp_path / "study")
            await wait_for_event(nc, study, of_type(ev.Dispatched), 60)
            async with httpx.AsyncClient(base_url=ready["admin_url"]) as admin:
                bearer = {"Authorization": f"Bearer {admin_token}"}
                shown = await admin.get("/config", headers=bearer)
                assert shown.status_code == 200
                refused = await admin.get("/config", headers={"Authorization": f"Bearer {token}"})
                assert refused.status_code == 401
    config = shown.json()
    assert config["TOKEN"] == config["ADMIN_TOKEN"] == config["NATS_STORE_KEY"] == "***"
    assert config["NATS_URL"] == [f"nats://***@127.0.0.1:{nats_server.port}"]

    written = log_lines.getvalue()
    lines = written.splitlines()
    assert len(lines) > 20 and any('"msg": "pacsor ready"' in line for line in lines)
    ready_line = next(line for line in lines if '"msg": "pacsor ready"' in line)
    assert f"127.0.0.1:{nats_server.port}" in ready_line

    stored = await every_stored_message(nc)
    assert len(stored) > 10
    everything = {
        "log": written.encode(),
        "streams": b"\n".join(stored),
        "/config": shown.content,
    }
    for secret in (token, admin_token, store_key, nats_password):
        for where, text in everything.items():
            assert secret.encode() not in text, f"a secret is in {where}"


def test_setup_show_masks_tokens_and_url_passwords(tmp_path: Path) -> None:
    token = "tok-" + secrets.token_hex(12)
    written = pacsor_cli(
        "setup",
        "--project-dir",
        str(tmp_path),
        "--site=north",
        "--product=SmartChest",
        "--api-url=https://api.example.test",
        f"--token={token}",
        "--pacs-host=pacs.local",
        "--no-hl7",
        "--no-second-core",
        cwd=tmp_path,
    )
    assert written.returncode == 0, written.stderr
    password = "pw-" + secrets.token_hex(12)
    site = tmp_path / "env-files" / ".env.north"
    site.write_text(
        site.read_text()
        + f"NATS_URL=nats://pacsor:{password}@nats-1:4222,nats://pacsor:{password}@nats-2:4222\n"
        + f"NATS_PASSWORD={password}\nNATS_STORE_KEY={password}\n"
    )
    shown = pacsor_cli("setup", "--show", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert token not in shown.stdout and password not in shown.stdout
    assert "NATS_URL=nats://***@nats-1:4222,nats://***@nats-2:4222" in shown.stdout
    assert "NATS_PASSWORD=********" in shown.stdout and "TOKEN=********" in shown.stdout
    # The site's NATS passwords are files of their own, never in the site file.
    secrets_folder = tmp_path / "env-files" / "nats.north"
    generated = (secrets_folder / "pacsor.password").read_text().strip()
    assert generated and generated not in site.read_text() and generated not in shown.stdout


def test_every_secret_has_a_file_form(tmp_path: Path) -> None:
    values = {
        "TOKEN": "t-" + secrets.token_hex(8),
        "TOKEN_1": "t1-" + secrets.token_hex(8),
        "ADMIN_TOKEN": "a-" + secrets.token_hex(8),
        "NATS_PASSWORD": "p-" + secrets.token_hex(8),
        "NATS_STORE_KEY": "k-" + secrets.token_hex(8),
    }
    env = {
        "API_URL_1": "http://127.0.0.1:1",
        "DESTINATIONS_1": "same-as-first",
        "NATS_USER": "pacsor",
    }
    for name, value in values.items():
        (tmp_path / name).write_text(value + "\n")  # as Docker writes a secret, or an editor
        env[f"{name}_FILE"] = str(tmp_path / name)
    settings = load_settings(env, dotenv=None)
    assert settings.token == values["TOKEN"]
    assert settings.cores[1].token == values["TOKEN_1"]
    assert settings.admin_token == values["ADMIN_TOKEN"]
    assert settings.nats_password == values["NATS_PASSWORD"]
    assert settings.nats_store_key == values["NATS_STORE_KEY"]
    with pytest.raises(ConfigError, match=r"^TOKEN_FILE: TOKEN is set too"):
        load_settings({"TOKEN": "x", "TOKEN_FILE": str(tmp_path / "TOKEN")}, dotenv=None)
    with pytest.raises(ConfigError, match=r"^ADMIN_TOKEN_FILE: cannot read"):
        load_settings({"ADMIN_TOKEN_FILE": str(tmp_path / "absent")}, dotenv=None)
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match=r"^NATS_PASSWORD_FILE: the file .* is empty"):
        load_settings({"NATS_PASSWORD_FILE": str(tmp_path / "empty")}, dotenv=None)


def test_a_bad_secret_is_named_not_shown() -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings({"NATS_STORE_KEY": "short-secret"}, dotenv=None)
    assert "short-secret" not in str(refused.value)
    with pytest.raises(ConfigError) as bad_url:
        load_settings({"NATS_URL": "nats://pacsor:hunter2@host:4222/x"}, dotenv=None)
    assert str(bad_url.value).startswith("NATS_URL: ") and "hunter2" not in str(bad_url.value)


def test_masking_reaches_into_tuples_and_text() -> None:
    shown = masked({"NATS_URL": ("nats://u:p4ss@h:1", "nats://u:p4ss@h:2"), "X": ("a",)})
    assert shown == {"NATS_URL": ["nats://***@h:1", "nats://***@h:2"], "X": ["a"]}
    assert masked({"EXTRA_CORES": ({"TOKEN": "t0k"},)}) == {"EXTRA_CORES": [{"TOKEN": "***"}]}
    assert mask_text("cannot connect to nats://u:p@ss@h:1, nats://v:q@h:2") == (
        "cannot connect to nats://***@h:1, nats://***@h:2"
    )
