"""The admin component: the projection following the stream, and the HTTP server."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import uvicorn

from pacsor.admin.app import Admin, create_app
from pacsor.admin.dashboard import DASHBOARD
from pacsor.admin.hl7_routes import HL7_ROUTES
from pacsor.admin.metrics import AdminMetrics
from pacsor.admin.projector import Projector
from pacsor.admin.read_model import ReadModel
from pacsor.config import Settings
from pacsor.errors import StartupError
from pacsor.jetstream.broker_state import broker_state
from pacsor.process.runtime import Runtime, Started

log = logging.getLogger("pacsor.admin")


def read_model_path(settings: Settings) -> Path:
    return settings.data_dir / "admin" / "read-model.sqlite"


def is_local(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_warning(settings: Settings) -> str | None:
    """What to say when the admin listens beyond this machine without a token."""
    if settings.admin_token or is_local(settings.admin_host):
        return None
    return (
        f"ADMIN_TOKEN: not set, and the admin API listens on {settings.admin_host}: anyone who "
        "reaches it can read study history and relaunch studies; set ADMIN_TOKEN"
    )


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # pacsor's own SIGINT/SIGTERM handlers stop every component, this server included.
        yield


class AdminServer:
    """The admin of one process: its read model, projection and HTTP server.

    Built before the process reports ready, so that its URL is known and a busy port stops
    start-up with one line; `run` then serves until stopped.
    """

    def __init__(self, rt: Runtime) -> None:
        settings = rt.settings
        warning = exposure_warning(settings)
        if warning:
            log.warning(warning)
        self._sock = listen(settings.admin_host, settings.admin_port)
        model = ReadModel(read_model_path(settings))
        metrics = AdminMetrics(model)
        self.admin = Admin(
            settings=settings,
            broker=partial(broker_state, rt.nc),
            events=rt.events,
            instances=rt.instances,
            model=model,
            projector=Projector(rt.events, model, metrics),
            metrics=metrics,
        )
        config = uvicorn.Config(
            create_app(self.admin, [*DASHBOARD, *HL7_ROUTES]),
            log_level="warning",
            timeout_graceful_shutdown=5,
        )
        self._server = _Server(config)
        host, port = settings.admin_host, self._sock.getsockname()[1]
        self.url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    async def run(self, stop: asyncio.Event) -> None:
        log.info(
            "admin API listening",
            extra={"url": self.url, "read_model": str(self.admin.model.path)},
        )
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.admin.projector.run(stop))
                group.create_task(self._server.serve(sockets=[self._sock]))
                await stop.wait()
                self._server.should_exit = True
        finally:
            self._sock.close()
            with contextlib.suppress(Exception):
                self.admin.model.close()


def listen(host: str, port: int) -> socket.socket:
    """A listening socket: connections wait in its backlog until the server accepts them,
    and a busy port is one clear line, not a traceback."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say TCP.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as err:
        sock.close()
        raise StartupError(
            f"ADMIN_PORT: cannot listen on {host}:{port}: {err.strerror or err}"
        ) from None
    return sock


async def run(rt: Runtime, started: Started) -> None:
    admin = AdminServer(rt)
    started({"admin_url": admin.url})
    await admin.run(rt.stop)

