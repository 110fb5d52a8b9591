"""ResultReady → C-STORE the result objects to one destination → Dispatched (or DispatchFailed).

Each destination has its own durable consumer, so a destination that is down waits and
retries on its own and never holds back the others. When the retries are exhausted,
DispatchFailed records what was and was not delivered; the objects stay in PACSOR_RESULTS.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from pacsor.consumers import dispatch_replay

from pacsor.config import ConfigError, Destination, Settings
from pacsor.dicom.sender import SendError, send_objects
from pacsor.domain import events as ev
from pacsor.domain.retry import RetryPolicy
from pacsor.jetstream.blobs import BlobStore
from pacsor.jetstream.handler_runner import (
    ConsumerSpec,
    Delivery,
    Emit,
    Handler,
    Outcome,
    retry_or_fail,
)
from pacsor.jetstream.subjects import EVENTS_STREAM, core_events_filter, dispatch_consumer
from pacsor.runtime import Component, Runtime, Started


def consumer(core: str, destination: Destination) -> ConsumerSpec[ev.ResultReady]:
    return ConsumerSpec(
        durable=dispatch_consumer(core, destination.ae_title, destination.host, destination.port),
        stream=EVENTS_STREAM,
        filter_subject=core_events_filter(ev.ResultReady, core),
        decode=ev.decoder(ev.ResultReady),
        ack_wait=15.0,
        concurrency=2,
        description=f"ResultReady -> C-STORE to {destination}",
        start="new",
    )


async def dispatch_to_destination(
    event: ev.ResultReady,
    delivery: Delivery,
    results: BlobStore,
    destination: Destination,
    calling_ae_title: str,
    policy: RetryPolicy,
) -> Outcome:
    if not event.results:
        return Emit()  # the API had no result objects (status empty): nothing to send
    objects = [(r.object_name, r.sop_instance_uid) for r in event.results]
    try:
        delivered = await send_objects(destination, calling_ae_title, results, objects)
    except SendError as err:
        failed = ev.DispatchFailed(
            study_instance_uid=event.study_instance_uid,
            core=event.core,
            attempt=event.attempt,
            destination=str(destination),
            reason=err.reason,
            delivered_sop_instance_uids=err.delivered,
        )
        return retry_or_fail(delivery, policy, err.reason, True, failed)
    return Emit(
        (
            ev.Dispatched(
                study_instance_uid=event.study_instance_uid,
                core=event.core,
                attempt=event.attempt,
                destination=str(destination),
                sop_instance_uids=delivered,
            ),
        )
    )


def require_destinations(settings: Settings) -> None:
    for n, core in enumerate(settings.cores):
        if not core.destinations:
            variable = "PACS_IP" if n == 0 else f"DESTINATIONS_{n}"
            raise ConfigError(
                f"{variable}: not set and DESTINATIONS is empty; results need a destination"
            )


async def run(rt: Runtime, started: Started) -> None:
    """Per core and destination, one consumer of the results and one of the replays asked for:
    a PACS that is down delays no other."""
    aet, results, policy = rt.settings.milvue_aet, rt.results, rt.policy
    consumers: list[tuple[ConsumerSpec[Any], Handler[Any]]] = []
    for core in rt.settings.cores:
        for destination in core.destinations:
            consumers.append(
                (
                    consumer(core.name, destination),
                    partial(
                        dispatch_to_destination,
                        results=results,
                        destination=destination,
                        calling_ae_title=aet,
                        policy=policy,
                    ),
                )
            )
            consumers.append(
                (
                    dispatch_replay.consumer(core.name, destination),
                    partial(
                        dispatch_replay.replay_to_destination,
                        events=rt.events,
                        results=results,
                        destination=destination,
                        calling_ae_title=aet,
                        policy=policy,
                    ),
                )
            )
    await rt.run_consumers(consumers, started)


COMPONENT = Component(
    "dispatcher",
    "ResultReady -> Dispatched / DispatchFailed, per core and destination",
    run,
    check=require_destinations,
)
