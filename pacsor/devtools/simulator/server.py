"""Running the simulator: in the foreground (`pacsor simulator`) or in a thread (tests)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import uvicorn

from pacsor.devtools.simulator.app import create_app
from pacsor.devtools.simulator.settings import SimulatorSettings
from pacsor.devtools.simulator.state import SimulatorState


def serve(settings: SimulatorSettings, host: str = "127.0.0.1", port: int = 8421) -> None:
    """Serve the simulator until interrupted (Ctrl-C / SIGTERM)."""
    config = uvicorn.Config(create_app(settings), host=host, port=port, log_level="info")
    uvicorn.Server(config).run()


@contextmanager
def running_simulator(
    settings: SimulatorSettings | None = None, *, startup_timeout: float = 10.0
) -> Iterator[tuple[str, SimulatorState]]:
    """Run the simulator on a free 127.0.0.1 port in a background thread.

    Yields (base URL, state) once the server answers; stops it and deletes the received
    files on exit.
    """
    # Binding here, before the thread starts, makes the port ours: no race on a "free" port.
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on sockets that say TCP, and
    # without it every keep-alive request waits ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    with SimulatorState() as state, sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        base_url = f"http://127.0.0.1:{port}"
        app = create_app(settings or SimulatorSettings(), state)
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5)
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=f"simulator-{port}", daemon=True
        )
        thread.start()
        try:
            _wait_until_started(server, thread, startup_timeout)
            # One real request proves the app answers, not just that the socket listens.
            response = httpx.get(f"{base_url}/healthz", timeout=startup_timeout)
            response.raise_for_status()
            yield base_url, state
        finally:
            server.should_exit = True
            thread.join(timeout=10)
        if thread.is_alive():
            raise RuntimeError(f"simulator on port {port} did not stop within 10 s")


def _wait_until_started(server: uvicorn.Server, thread: threading.Thread, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("simulator thread exited during start-up (see its traceback)")
        if time.monotonic() > deadline:
            raise TimeoutError(f"simulator not started within {timeout} s")
        thread.join(0.01)  # waits on the thread itself, so a crash ends the wait at once
