"""Wires the components to JetStream and runs the ones asked for, in one process.

    scp          C-STORE            -> InstanceReceived
    quiet-timer  InstanceReceived   -> (re)arm the study's quiet timer
    completion   timer elapsed      -> StudyComplete
    uploader     StudyComplete      -> Uploaded
    poller       Uploaded           -> ResultReady
    dispatcher   ResultReady        -> Dispatched, one per destination
    admin        the stream         -> the operators' read model, HTTP API and dashboard

`pacsor up` runs them all; `pacsor run <name>` runs one, and several processes running the
same component share its work through the durable consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext

from pacsor.admin.server import AdminServer
from pacsor.ai.milvue_api import MilvueApi
from pacsor.config import ConfigError, Settings, require
from pacsor.consumers import (
    dispatch_replay,
    dispatcher,
    quiet_timer,
    result_poller,
    study_completion,
    uploader,
)
from pacsor.dicom.storage_scp import StorageScp
from pacsor.domain.retry import RetryPolicy
from pacsor.jetstream.blobs import BlobStore
from pacsor.jetstream.broker import BrokerError, EmbeddedNats, apply_streams, connect
from pacsor.jetstream.eventlog import EventLog
from pacsor.jetstream.handler_runner import run_consumer
from pacsor.jetstream.liveness import Heartbeat, liveness_file
from pacsor.jetstream.quiet_timers import QuietTimers
from pacsor.jetstream.rate_limit import RateLimiter
from pacsor.jetstream.subjects import INSTANCES_BUCKET, RESULTS_BUCKET

log = logging.getLogger("pacsor.gateway")

COMPONENTS = ("scp", "quiet-timer", "completion", "uploader", "poller", "dispatcher", "admin")


@dataclass
class Wiring:
    """Everything a component needs, built once per process."""

    settings: Settings
    nc: Client
    js: JetStreamContext
    events: EventLog
    instances: BlobStore
    results: BlobStore
    timers: QuietTimers
    policy: RetryPolicy


async def _connect_with_patience(
    url: str, name: str, stop: asyncio.Event, patience: float = 60.0
) -> Client | None:
    """Connect, waiting up to `patience` seconds for the server; None when stopped first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience
    while not stop.is_set():
        try:
            # nats-py retries the first connection forever when reconnects are unlimited.
            return await asyncio.wait_for(connect(url, name), 5.0)
        except Exception as err:
            if loop.time() > deadline:
                reason = str(err) or type(err).__name__
                raise ConfigError(f"NATS_URL: cannot connect to {url}: {reason}") from None
            log.warning("waiting for NATS", extra={"url": url, "error": repr(err)})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
    return None


async def _close(nc: Client) -> None:
    """Drain (finish in-flight acks and publishes), or just close when the server is gone."""
    try:
        await asyncio.wait_for(nc.drain(), 10)
    except Exception as err:
        log.warning("NATS connection closed without draining", extra={"error": repr(err)})
        await nc.close()


async def run_gateway(
    settings: Settings,
    components: tuple[str, ...],
    stop: asyncio.Event,
    on_ready: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """Run `components` until `stop` is set."""
    for component in components:
        require(settings, component)
    embedded: EmbeddedNats | None = None
    url = settings.nats_url
    if not url:
        embedded = EmbeddedNats(settings.data_dir / "nats", settings.embedded_nats_port)
        try:
            embedded.start()
        except BrokerError as err:
            raise ConfigError(str(err)) from None
        url = embedded.url
        log.info(
            "embedded nats-server started", extra={"url": url, "store": str(embedded.store_dir)}
        )
    try:
        nc = await _connect_with_patience(url, f"pacsor {','.join(components)}", stop)
        if nc is None:
            return
        try:
            try:
                await apply_streams(nc, settings.nats_replicas)
            except BrokerError as err:
                raise ConfigError(str(err)) from None
            js = nc.jetstream(timeout=10)
            wiring = Wiring(
                settings=settings,
                nc=nc,
                js=js,
                events=EventLog(js),
                instances=BlobStore(nc, js, INSTANCES_BUCKET),
                results=BlobStore(nc, js, RESULTS_BUCKET),
                timers=QuietTimers(js),
                policy=RetryPolicy.from_settings(settings),
            )
            await _run(wiring, components, stop, url, on_ready)
        finally:
            await _close(nc)
    finally:
        if embedded is not None:
            embedded.stop()


async def _run(
    w: Wiring,
    components: tuple[str, ...],
    stop: asyncio.Event,
    url: str,
    on_ready: Callable[[dict[str, Any]], None] | None,
) -> None:
    s = w.settings
    quiet = timedelta(seconds=s.study_quiet_seconds)
    api = MilvueApi(s.api_url, s.token, timeout=s.api_timeout_seconds, signed_url=s.signed_url)
    loops: list[Awaitable[None]] = []
    consume = partial(run_consumer, w.js, w.events, stop=stop, error_policy=w.policy)
    beat = {c: Heartbeat(liveness_file(s.data_dir, c), w.nc) for c in components}

    if "quiet-timer" in components:
        loops.append(
            consume(
                spec=quiet_timer.CONSUMER,
                heartbeat=beat["quiet-timer"],
                handler=partial(quiet_timer.arm_quiet_timer, timers=w.timers, quiet=quiet),
            )
        )
    if "completion" in components:
        loops.append(
            consume(
                spec=study_completion.CONSUMER,
                heartbeat=beat["completion"],
                handler=partial(
                    study_completion.complete_study, events=w.events, timers=w.timers, quiet=quiet
                ),
            )
        )
        loops.append(
            consume(
                spec=study_completion.RELAUNCH_CONSUMER,
                handler=partial(study_completion.relaunch_study, events=w.events),
            )
        )
    if "uploader" in components:
        limiter = (
            RateLimiter(w.js, s.core_name, s.upload_rate_limit) if s.upload_rate_limit else None
        )
        loops.append(
            consume(
                spec=uploader.consumer(s.core_name),
                heartbeat=beat["uploader"],
                handler=partial(
                    uploader.upload_study,
                    api=api,
                    instances=w.instances,
                    events=w.events,
                    settings=uploader.UploadSettings(
                        core=s.core_name,
                        signed_url=s.signed_url,
                        filters=s.dicom_filters,
                        batch_size=s.upload_batch_size,
                        no_duplicate=s.no_duplicate_upload,
                    ),
                    policy=w.policy,
                    limiter=limiter,
                ),
            )
        )
    if "poller" in components:
        poll = result_poller.PollSettings(
            core=s.core_name,
            inference_commands=s.inference_commands,
            poll_interval=s.poll_interval_seconds,
            result_timeout=timedelta(seconds=s.result_timeout_seconds),
            options=s.result_options.query(),
        )
        loops.append(
            consume(
                spec=result_poller.consumer(s.core_name),
                heartbeat=beat["poller"],
                handler=partial(
                    result_poller.poll_results, api=api, results=w.results, settings=poll
                ),
            )
        )
    if "dispatcher" in components:
        for destination in s.all_destinations():
            loops.append(
                consume(
                    spec=dispatcher.consumer(s.core_name, destination),
                    heartbeat=beat["dispatcher"],
                    handler=partial(
                        dispatcher.dispatch_to_destination,
                        results=w.results,
                        destination=destination,
                        calling_ae_title=s.milvue_aet,
                        policy=w.policy,
                    ),
                )
            )
            loops.append(
                consume(
                    spec=dispatch_replay.consumer(s.core_name, destination),
                    handler=partial(
                        dispatch_replay.replay_to_destination,
                        events=w.events,
                        results=w.results,
                        destination=destination,
                        calling_ae_title=s.milvue_aet,
                        policy=w.policy,
                    ),
                )
            )

    scp: StorageScp | None = None
    try:
        ready: dict[str, Any] = {"nats_url": url, "components": components}
        if "admin" in components:
            admin = AdminServer(s, w.nc, w.js)
            loops.append(admin.run(stop))
            ready["admin_url"] = admin.url
        if "scp" in components:
            scp = StorageScp(s, asyncio.get_running_loop(), w.instances, w.events)
            ready["dicom_port"] = await asyncio.to_thread(scp.start)
        log.info("pacsor ready", extra=ready)
        if on_ready is not None:
            on_ready(ready)
        async with asyncio.TaskGroup() as group:
            for loop in loops:
                group.create_task(loop)  # type: ignore[arg-type]
            group.create_task(stop.wait())
    finally:
        if scp is not None:
            await asyncio.to_thread(scp.stop)
        await api.aclose()
