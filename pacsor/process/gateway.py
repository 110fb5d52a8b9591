"""Runs the components asked for in one process.

With NATS_URL, on one connection as its NATS_USER; on the embedded server of `pacsor up`,
each component on a connection of its own, as its own NATS user (pacsor.components.NATS_ROLES).

`pacsor up` runs every component of pacsor.components; `pacsor run <name>` runs one, and
several processes running the same component share its work through its durable consumers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

from nats.aio.client import Client

from pacsor.components import BY_NAME, NATS_ROLES
from pacsor.config import ConfigError, Settings
from pacsor.errors import StartupError
from pacsor.jetstream.blobs import BlobStore
from pacsor.jetstream.broker import (
    BrokerError,
    CredentialsRefused,
    EmbeddedNats,
    NatsAccess,
    apply_streams,
    connect,
    embedded_folder,
    nats_access,
)
from pacsor.jetstream.eventlog import EventLog
from pacsor.jetstream.holds import Holds
from pacsor.jetstream.nats_auth import may_update_streams
from pacsor.jetstream.quiet_timers import QuietTimers
from pacsor.jetstream.subjects import INSTANCES_BUCKET, RESULTS_BUCKET, retention_max_ages
from pacsor.process.runtime import Component, Runtime, retry_policy

log = logging.getLogger("pacsor.process.gateway")


def components_of_up(settings: Settings) -> tuple[str, ...]:
    """The components `pacsor up` runs with these settings."""
    return tuple(name for name, c in BY_NAME.items() if c.in_up(settings))


async def _connect_with_patience(
    access: NatsAccess, name: str, stop: asyncio.Event, patience: float = 60.0
) -> Client | None:
    """Connect, waiting up to `patience` seconds for the server; None when stopped first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience
    while not stop.is_set():
        try:
            # nats-py retries the first connection forever when reconnects are unlimited.
            return await asyncio.wait_for(connect(access, name), 5.0)
        except CredentialsRefused as err:
            raise BrokerError(
                f"NATS_PASSWORD: {err}; set NATS_USER and NATS_PASSWORD (or NATS_PASSWORD_FILE)"
            ) from None
        except Exception as err:
            if loop.time() > deadline:
                reason = str(err) or type(err).__name__
                raise BrokerError(f"NATS_URL: cannot connect to {access}: {reason}") from None
            log.warning("waiting for NATS", extra={"url": str(access), "error": repr(err)})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
    return None


async def _close(nc: Client) -> None:
    """Drain (finish in-flight acks and publishes), or just close when the server is gone."""
    try:
        await asyncio.wait_for(nc.drain(), 10)
    except Exception as err:
        log.warning("NATS connection closed without draining", extra={"error": repr(err)})
        try:
            await nc.close()
        except OSError as lost:  # the server went first: what was buffered cannot be flushed
            log.warning("NATS connection lost while closing", extra={"error": repr(lost)})


async def run_gateway(
    settings: Settings,
    components: Sequence[str],
    stop: asyncio.Event,
    on_ready: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """Run `components` until `stop` is set."""
    chosen: list[Component] = []
    for name in components:
        if name not in BY_NAME:
            raise ConfigError(f"component: no component named {name!r}")
        chosen.append(BY_NAME[name])
        chosen[-1].check(settings)
    embedded: EmbeddedNats | None = None
    access = nats_access(settings)
    if not settings.nats_servers:
        embedded = EmbeddedNats(
            embedded_folder(settings),
            settings.embedded_nats_port,
            NATS_ROLES,
            store_key=settings.nats_store_key,
        )
        try:
            embedded.start()
        except (OSError, ValueError) as err:  # its store, configuration or credentials
            raise BrokerError(f"PACSOR_DATA_DIR: the embedded nats-server: {err}") from None
        access = embedded.access
        log.info(
            "embedded nats-server started",
            extra={
                "url": embedded.url,
                "store": str(embedded.store_dir),
                "encrypted": bool(settings.nats_store_key),
            },
        )
    elif settings.nats_store_key:
        log.warning("NATS_STORE_KEY is for the embedded server; NATS_URL's server keeps its own")
    url = str(access)
    connections: list[Client] = []
    try:
        nc = await _connect_with_patience(access, f"pacsor {','.join(components)}", stop)
        if nc is None:
            return
        connections.append(nc)
        await apply_streams(
            nc,
            settings.nats_replicas,
            retention_max_ages(settings.events_retention_days, settings.retention_hours),
            update=may_update_streams(NATS_ROLES, access.who),
        )
        runtimes: dict[str, Runtime] = {}
        for component in chosen:
            own = nc
            if embedded is not None:
                # The embedded server knows every component's password: each connects as
                # itself, so `pacsor up` is held to the same roles as a split deployment.
                own = await connect(embedded.access_as(component.name), f"pacsor {component.name}")
                connections.append(own)
            runtimes[component.name] = _runtime(settings, own, stop, component.name)
        if embedded is not None and chosen:
            # The pipeline's connection only applied the streams: it does not stay open.
            connections.remove(nc)
            await _close(nc)
        await _run(runtimes, chosen, url, on_ready)
    finally:
        for connection in reversed(connections):
            await _close(connection)
        if embedded is not None:
            embedded.stop()


def _runtime(settings: Settings, nc: Client, stop: asyncio.Event, component: str) -> Runtime:
    js = nc.jetstream(timeout=10)
    return Runtime(
        settings=settings,
        nc=nc,
        js=js,
        events=EventLog(js),
        instances=BlobStore(nc, js, INSTANCES_BUCKET),
        results=BlobStore(nc, js, RESULTS_BUCKET),
        timers=QuietTimers(js),
        holds=Holds(js),
        policy=retry_policy(settings),
        stop=stop,
        component=component,
    )


async def _run(
    runtimes: Mapping[str, Runtime],
    components: Sequence[Component],
    url: str,
    on_ready: Callable[[dict[str, Any]], None] | None,
) -> None:
    """Start every component; report ready once all of them serve; stop them all together."""
    ready: dict[str, Any] = {"nats_url": url, "components": tuple(c.name for c in components)}
    waiting = {c.name for c in components}

    def started(name: str, facts: Mapping[str, Any]) -> None:
        ready.update({k: v for k, v in facts.items() if k != "consumers"})
        waiting.discard(name)
        if not waiting:
            log.info("pacsor ready", extra=ready)
            if on_ready is not None:
                on_ready(ready)

    if not components:
        started("", {})
    try:
        async with asyncio.TaskGroup() as group:
            for component in components:
                group.create_task(
                    component.run(runtimes[component.name], partial(started, component.name)),
                    name=component.name,
                )
    except ExceptionGroup as failures:
        # What a component found wrong at start (a setting, a busy port) is one line, not a trace.
        startup_errors, _ = failures.split(StartupError)
        if startup_errors is not None:
            raise _first_leaf(startup_errors) from None
        raise


def _first_leaf(group: BaseExceptionGroup[StartupError]) -> StartupError:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first
