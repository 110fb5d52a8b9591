"""Who may talk to NATS: a real nats-server with pacsor's roles, the embedded server of
`pacsor up`, and TLS with certificates made here by openssl."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import stat
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import nats
import pytest
from nats.aio.client import Client
from nats.js.api import ConsumerConfig

from pacsor.components import NATS_ROLES
from pacsor.config import ConfigError, load_settings
from pacsor.domain import events as ev
from pacsor.jetstream.blobs import BlobStore
from pacsor.jetstream.broker import (
    EmbeddedNats,
    apply_streams,
    connect,
    credentials_folder,
    nats_access,
    nats_server_binary,
)
from pacsor.jetstream.eventlog import EventLog
from pacsor.jetstream.nats_auth import (
    PIPELINE_USER,
    PROVIDER_USER,
    READER_USER,
    deployment_authorization_conf,
)
from pacsor.jetstream.subjects import (
    EVENTS_STREAM,
    INSTANCES_BUCKET,
    event_subject,
    study_subjects,
    webps_subject,
)
from tests.certificates import authority, certificate
from tests.harness import PROJECT, running_gateway
from tests.nats_server import NatsServer, free_port

STUDY = "1.2.826.0.1.3680043.10.1.15"


async def raw_client(url: str, errors: list[str] | None = None, **options: object) -> Client:
    """A plain nats-py client, not pacsor's: one attempt, its asynchronous errors kept."""

    async def on_error(err: Exception) -> None:
        if errors is not None:
            errors.append(str(err))

    return await nats.connect(
        url, allow_reconnect=False, connect_timeout=3, error_cb=on_error, **options
    )


@pytest.fixture
async def pipeline(nats_server: NatsServer) -> AsyncIterator[Client]:
    client = await connect(nats_server.url, "pacsor tests")
    await apply_streams(client)
    yield client
    await client.close()


def received(sop: str = "1.2.3.4") -> ev.InstanceReceived:
    return ev.InstanceReceived(
        study_uid=STUDY,
        series_instance_uid=STUDY + ".1",
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.7",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        calling_ae_title="MODALITY",
        object_name=f"{STUDY}/{sop}/00",
        size=10,
        digest="00",
    )


async def test_a_client_without_credentials_is_refused(nats_server: NatsServer) -> None:
    for url in (
        nats_server.anonymous_url,
        nats_server.url.replace(nats_server.passwords[PIPELINE_USER], "not-the-password"),
    ):
        with pytest.raises(nats.errors.Error, match=r"(?i)authorization violation"):
            await raw_client(url)
    # pacsor's own client says so at once, instead of retrying for ever.
    with pytest.raises(Exception, match="refused the credentials"):
        await asyncio.wait_for(connect(nats_server.anonymous_url, "no one"), 10)


async def test_the_reader_inspects_the_stream_and_consumers(
    nats_server: NatsServer, pipeline: Client
) -> None:
    events = EventLog(pipeline.jetstream())
    await events.publish(received())
    await pipeline.jetstream().add_consumer(
        EVENTS_STREAM, ConsumerConfig(durable_name="study-completion", filter_subject=">")
    )
    reader = await raw_client(nats_server.reader_url)
    try:
        js = reader.jetstream(timeout=5)
        names = {info.config.name for info in await js.streams_info()}
        assert EVENTS_STREAM in names and f"OBJ_{INSTANCES_BUCKET}" in names
        info = await js.stream_info(EVENTS_STREAM)
        assert info.state.messages == 1
        message = await js.get_msg(EVENTS_STREAM, 1)
        assert isinstance(ev.decode(message.data), ev.InstanceReceived)
        last = await js.get_last_msg(EVENTS_STREAM, event_subject(received()))
        assert last.seq == 1
        consumer = await js.consumer_info(EVENTS_STREAM, "study-completion")
        assert consumer.num_pending == 1
        # `nats stream view` reads through an ephemeral consumer of its own.
        view = await js.subscribe(study_subjects(STUDY), ordered_consumer=True)
        assert (await view.next_msg(timeout=5)).subject == event_subject(received())
        await view.unsubscribe()
    finally:
        await reader.close()


async def test_the_reader_cannot_publish_purge_delete_or_put(
    nats_server: NatsServer, pipeline: Client
) -> None:
    events = EventLog(pipeline.jetstream())
    await events.publish(received())
    await pipeline.jetstream().add_consumer(
        EVENTS_STREAM, ConsumerConfig(durable_name="study-completion", filter_subject=">")
    )
    errors: list[str] = []
    reader = await raw_client(nats_server.reader_url, errors)
    try:
        js = reader.jetstream(timeout=2)
        forged = ev.RelaunchRequested(
            study_uid=STUDY, relaunch_id="forged", requested_by="intruder"
        )
        attempts = {
            "publish an event": js.publish(event_subject(forged), msgspec.json.encode(forged)),
            "purge the stream": js.purge_stream(EVENTS_STREAM),
            "delete a message": js.delete_msg(EVENTS_STREAM, 1),
            "delete the stream": js.delete_stream(EVENTS_STREAM),
            "put an object": BlobStore(reader, js, INSTANCES_BUCKET).put(f"{STUDY}/x", b"forged"),
            "create a durable consumer": js.add_consumer(
                EVENTS_STREAM, ConsumerConfig(durable_name="mine", filter_subject=">")
            ),
            "take the pipeline's messages": js.pull_subscribe_bind(
                "study-completion", EVENTS_STREAM
            ),
        }
        for what, attempt in attempts.items():
            try:
                outcome = await attempt
                if what == "take the pipeline's messages":
                    await outcome.fetch(1, timeout=1)  # type: ignore[union-attr]
            except Exception:
                continue
            pytest.fail(f"the reader could {what}")
    finally:
        await reader.close()
    # Each was refused by the server's permissions, not by chance.
    assert any("permissions violation" in e.lower() for e in errors), errors
    js = pipeline.jetstream()
    state = (await js.stream_info(EVENTS_STREAM)).state
    assert (state.messages, state.last_seq) == (1, 1)
    assert (await js.consumer_info(EVENTS_STREAM, "study-completion")).num_pending == 1
    assert {c.name for c in await js.consumers_info(EVENTS_STREAM)} == {"study-completion"}
    assert await BlobStore(pipeline, js, INSTANCES_BUCKET).info(f"{STUDY}/x") is None


async def test_nobody_purges_or_deletes_from_the_event_stream(
    nats_server: NatsServer, pipeline: Client, tmp_path: Path
) -> None:
    await EventLog(pipeline.jetstream()).publish(received())
    js = pipeline.jetstream(timeout=2)
    for attempt in (js.purge_stream(EVENTS_STREAM), js.delete_msg(EVENTS_STREAM, 1)):
        # Refused by the permissions: the API never answers.
        with pytest.raises(nats.errors.TimeoutError):
            await attempt
    assert (await js.stream_info(EVENTS_STREAM)).state.messages == 1
    # And without any permissions at all, the stream's own configuration refuses.
    bare = NatsServer(tmp_path / "bare", auth=False)  # the stream config alone, on purpose
    bare.start()
    try:
        nc = await connect(bare.url, "pacsor tests")
        try:
            await apply_streams(nc)
            bare_js = nc.jetstream()
            await EventLog(bare_js).publish(received())
            info = await bare_js.stream_info(EVENTS_STREAM)
            assert info.config.deny_purge and info.config.deny_delete
            with pytest.raises(nats.js.errors.APIError, match=r"(?i)purge"):
                await bare_js.purge_stream(EVENTS_STREAM)
            with pytest.raises(nats.js.errors.APIError, match=r"(?i)delete"):
                await bare_js.delete_msg(EVENTS_STREAM, 1)
            assert (await bare_js.stream_info(EVENTS_STREAM)).state.messages == 1
        finally:
            await nc.close()
    finally:
        bare.stop()


async def test_an_event_stream_of_before_gets_its_purge_refused_on_start(
    nats_server: NatsServer,
) -> None:
    nc = await connect(nats_server.url, "pacsor tests")
    try:
        old = json.loads((PROJECT / "streams" / "PACSOR.json").read_text())
        old |= {"deny_purge": False}
        reply = await nc.request("$JS.API.STREAM.CREATE.PACSOR", json.dumps(old).encode(), 5)
        assert "error" not in json.loads(reply.data)
        await apply_streams(nc)
        info = await nc.jetstream().stream_info(EVENTS_STREAM)
        assert info.config.deny_purge and info.config.deny_delete
    finally:
        await nc.close()


async def test_a_report_provider_sends_reports_and_nothing_else(nats_server: NatsServer) -> None:
    refused = asyncio.Event()

    async def on_error(err: Exception) -> None:
        if "permissions violation" in str(err).lower():
            refused.set()

    provider = await nats.connect(
        nats_server.url_as(PROVIDER_USER), allow_reconnect=False, error_cb=on_error
    )
    try:
        # A report is let through: the server itself answers that nobody serves it yet.
        with pytest.raises(nats.errors.NoRespondersError):
            await provider.request(webps_subject("radnet"), b"{}", timeout=5)
        assert not refused.is_set()
        forged = received()
        await provider.publish(event_subject(forged), msgspec.json.encode(forged))
        await asyncio.wait_for(refused.wait(), 5)
    finally:
        await provider.close()


def test_the_deployment_authorization_is_the_roles_module() -> None:
    written = (PROJECT / "deploy" / "nats" / "authorization.conf").read_text()
    assert written == deployment_authorization_conf(NATS_ROLES)


@pytest.mark.parametrize("conf", ["nats-server.conf", "cluster.conf"])
def test_the_deployment_config_needs_its_secrets_and_takes_them(tmp_path: Path, conf: str) -> None:
    """nats-server reads the committed files with the secrets `pacsor nats-credentials` makes."""
    etc = tmp_path / "etc"
    etc.mkdir()
    for name in (conf, "authorization.conf"):
        (etc / name).write_text((PROJECT / "deploy" / "nats" / name).read_text())
    check = [nats_server_binary(), "-c", str(etc / conf), "-t"]
    missing = subprocess.run(check, capture_output=True, text=True, env={"NATS_SERVER_NAME": "n"})
    assert missing.returncode != 0  # no secrets, no server
    made = subprocess.run(
        [
            os.path.join(os.path.dirname(nats_server_binary()), "pacsor"),
            "nats-credentials",
            str(etc / "secrets"),
            "--encrypt-nats-store",
        ],
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE((etc / "secrets").stat().st_mode) == 0o700
    assert "cipher: chacha" in (etc / "secrets" / "nats-store.conf").read_text()
    valid = subprocess.run(check, capture_output=True, text=True, env={"NATS_SERVER_NAME": "n"})
    assert valid.returncode == 0, valid.stderr


async def test_pacsor_up_makes_its_credentials_once_and_keeps_them(tmp_path: Path) -> None:
    port = free_port()
    settings = load_settings(
        {
            "PACSOR_DATA_DIR": str(tmp_path / "data"),
            "EMBEDDED_NATS_PORT": str(port),
            "NATS_STORE_KEY": "a-store-key-of-this-test-only",
        },
        dotenv=None,
    )
    async with running_gateway(settings, components=("quiet-timer",)):
        folder = credentials_folder(tmp_path / "data" / "nats")
        passwords = {u: (folder / f"{u}.password").read_text() for u in ("pacsor", "reader")}
        for path in [*folder.iterdir(), tmp_path / "data" / "nats" / "nats-server.conf"]:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        url = f"nats://127.0.0.1:{port}"
        with pytest.raises(nats.errors.Error, match=r"(?i)authorization violation"):
            await raw_client(url)
        # Other commands on this machine (`pacsor events`, health, check) find them.
        nc = await connect(nats_access(settings), "pacsor tests")
        await EventLog(nc.jetstream()).publish(received())
        await nc.close()
        reader = await raw_client(url, user=READER_USER, password=passwords["reader"].strip())
        assert (await reader.jetstream().stream_info(EVENTS_STREAM)).state.messages == 1
        await reader.close()
    async with running_gateway(settings, components=("quiet-timer",)):
        again = {user: (folder / f"{user}.password").read_text() for user in ("pacsor", "reader")}
        assert again == passwords
        nc = await connect(nats_access(settings), "pacsor tests")
        assert (await nc.jetstream().stream_info(EVENTS_STREAM)).state.messages == 1
        await nc.close()
    # The store is encrypted: the event's text is nowhere in it.
    stored = b"".join(
        p.read_bytes() for p in (tmp_path / "data" / "nats" / "jetstream").rglob("*") if p.is_file()
    )
    assert b"MODALITY" not in stored and STUDY.encode() not in stored


def make_certificates(folder: Path) -> None:
    """A CA, a server certificate for 127.0.0.1, a client certificate, all signed by it."""
    authority(folder, "ca")
    certificate(folder, "server", "ca", "server")
    certificate(folder, "client", "ca", "client")


async def test_tls_to_nats_with_a_client_certificate(tmp_path: Path) -> None:
    make_certificates(tmp_path)
    port = free_port()
    conf = tmp_path / "tls.conf"
    conf.write_text(
        f"host: 127.0.0.1\nport: {port}\njetstream {{ store_dir: {json.dumps(str(tmp_path))} }}\n"
        f"tls {{ cert_file: {json.dumps(str(tmp_path / 'server.pem'))}\n"
        f"  key_file: {json.dumps(str(tmp_path / 'server.key'))}\n"
        f"  ca_file: {json.dumps(str(tmp_path / 'ca.pem'))}\n  verify: true }}\n"
    )
    server = subprocess.Popen([nats_server_binary(), "-c", str(conf)], stderr=subprocess.DEVNULL)
    try:
        settings = load_settings(
            {
                "NATS_URL": f"tls://127.0.0.1:{port}",
                "NATS_TLS_CA": str(tmp_path / "ca.pem"),
                "NATS_TLS_CERT": str(tmp_path / "client.pem"),
                "NATS_TLS_KEY": str(tmp_path / "client.key"),
            },
            dotenv=None,
        )
        access = nats_access(settings)
        async with asyncio.timeout(15):
            while True:  # the server's start: nothing to await but its port
                try:
                    nc = await connect(access, "pacsor tests")
                    break
                except (ConnectionRefusedError, OSError, nats.errors.NoServersError):
                    await asyncio.sleep(0.1)
        assert await apply_streams(nc)
        await nc.close()
        # Without a client certificate, and with a CA that is not the server's: refused.
        without = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        with pytest.raises(Exception):  # noqa: B017 - the TLS handshake fails
            await raw_client(f"tls://127.0.0.1:{port}", tls=without)
        with pytest.raises(Exception):  # noqa: B017 - the server's certificate is not trusted
            await raw_client(f"tls://127.0.0.1:{port}", tls=ssl.create_default_context())
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_a_half_given_client_certificate_is_one_line(tmp_path: Path) -> None:
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    with pytest.raises(ConfigError, match=r"^NATS_TLS_CERT: "):
        load_settings({"NATS_TLS_CERT": str(cert)}, dotenv=None)
    with pytest.raises(ConfigError, match=r"^NATS_TLS_CA: no such file"):
        load_settings({"NATS_TLS_CA": str(tmp_path / "absent.pem")}, dotenv=None)


def test_embedded_credentials_are_not_remade_by_a_second_process(tmp_path: Path) -> None:
    first = EmbeddedNats(tmp_path, free_port(), NATS_ROLES)
    second = EmbeddedNats(tmp_path, free_port(), NATS_ROLES)
    first._write_config()
    second._write_config()
    assert first.passwords == second.passwords
    assert len({first.passwords[u] for u in (PIPELINE_USER, READER_USER, PROVIDER_USER)}) == 3
