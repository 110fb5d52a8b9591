"""The original gateway's HL7 routes, answered by the hl7 component on its own port.

    GET  /config/              the HL7 settings in force, as variables (NAME: value)
    POST /config/load/{name}   load HL7_CUSTOM_DIR/<name>.json, as the admin's
                               POST /hl7/config/load/{name} does (same check, same event)

The original's scripts run `curl http://localhost:8000/config/` inside the HL7 container;
HL7_HTTP_HOST (default 127.0.0.1) and HL7_HTTP_PORT (default 8000) keep that working while
reaching nothing beyond the container. A refused load answers 404/409/422 with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from typing import Annotated, Any

import uvicorn
from litestar import Litestar, Request, Response, get, post
from litestar.params import Parameter

from pacsor.config.hl7 import Hl7Settings
from pacsor.errors import StartupError
from pacsor.hl7.config_loading import LoadRefused, in_force, load_named, shown
from pacsor.jetstream.eventlog import EventLog

AnyRequest = Request[Any, Any, Any]


def _state(request: AnyRequest) -> tuple[EventLog, Hl7Settings]:
    return request.app.state.events, request.app.state.base


@get(["/config", "/config/"], summary="The HL7 settings in force")
async def config(request: AnyRequest) -> dict[str, str]:
    events, base = _state(request)
    _, settings = await in_force(events, base)
    return shown(settings)


@post("/config/load/{name:str}", status_code=200, summary="Load a named HL7 configuration")
async def load(
    request: AnyRequest, name: Annotated[str, Parameter(max_length=64)]
) -> Response[dict[str, Any]]:
    events, base = _state(request)
    client = request.client.host if request.client else "unknown"
    try:
        event, _, _ = await load_named(events, base, name, "config", f"hl7 HTTP ({client})")
    except LoadRefused as err:
        return Response({"status_code": err.status, "detail": err.reason}, status_code=err.status)
    return Response({"loaded": event.name, "kind": event.kind, "load_id": event.load_id})


def create_app(events: EventLog, base: Hl7Settings) -> Litestar:
    app = Litestar([config, load], openapi_config=None)
    app.state.events = events
    app.state.base = base
    return app


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The component's own stop event ends this server, not uvicorn's signal handlers.
        yield


class Hl7HttpServer:
    """Listens at once (a busy port stops start-up with one line), serves until stopped."""

    def __init__(self, events: EventLog, base: Hl7Settings) -> None:
        host, port = base.http_host, base.http_port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((host, port))
            self._sock.listen(64)
        except OSError as err:
            self._sock.close()
            raise StartupError(
                f"HL7_HTTP_PORT: cannot listen on {host}:{port}: {err.strerror or err}"
            ) from None
        self.url = f"http://{host}:{self._sock.getsockname()[1]}"
        self._server = _Server(
            uvicorn.Config(
                create_app(events, base), log_level="warning", timeout_graceful_shutdown=5
            )
        )

    async def run(self, stop: asyncio.Event) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._server.serve(sockets=[self._sock]))
                await stop.wait()
                self._server.should_exit = True
        finally:
            self._sock.close()
