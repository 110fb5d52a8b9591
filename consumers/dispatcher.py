"""ResultReady → C-STORE the result objects to one destination → Dispatched (or DispatchFailed).

Each destination has its own durable consumer, so a destination that is down waits and
retries on its own and never holds back the others. When the retries are exhausted,
DispatchFailed records what was and was not delivered; the objects stay in PACSOR_RESULTS.
"""

from __future__ import annotations

import re

from pacsor.config import Destination
from pacsor.dicom.sender import SendError, send_objects
from pacsor.domain import events as ev
from pacsor.domain.retry import RetryPolicy
from pacsor.jetstream.blobs import BlobStore
from pacsor.jetstream.handler_runner import ConsumerSpec, Delivery, Emit, Outcome, retry_or_fail
from pacsor.jetstream.subjects import EVENTS_STREAM


def consumer(core: str, destination: Destination) -> ConsumerSpec[ev.ResultReady]:
    slug = re.sub(
        r"[^A-Za-z0-9_-]", "_", f"{destination.ae_title}_{destination.host}_{destination.port}"
    )
    return ConsumerSpec(
        durable=f"dispatch-{core}-{slug}",
        stream=EVENTS_STREAM,
        filter_subject=f"pacsor.study.*.{core}.{ev.ResultReady.topic}",
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
        failure = err
        return retry_or_fail(
            delivery,
            policy,
            err.reason,
            retryable=True,
            failed=lambda tries: ev.DispatchFailed(
                study_instance_uid=event.study_instance_uid,
                core=event.core,
                attempt=event.attempt,
                destination=str(destination),
                reason=failure.reason,
                tries=tries,
                delivered_sop_instance_uids=failure.delivered,
            ),
        )
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
