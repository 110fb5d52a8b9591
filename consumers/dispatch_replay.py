"""DispatchReplayRequested → C-STORE that attempt's results again to one destination →
Dispatched (or DispatchFailed) of that replay.

An operator replays a time range to a PACS that lost data. Each destination has its own
durable consumer and ignores the requests meant for the others. The result objects are the
ones the attempt's ResultReady lists, still in PACSOR_RESULTS.
"""

from __future__ import annotations

from pacsor.config import Destination
from pacsor.dicom.sender import SendError, send_objects
from pacsor.domain import dispatch
from pacsor.domain import events as ev
from pacsor.domain.retry import RetryPolicy
from pacsor.jetstream.blobs import BlobNotFound, BlobStore
from pacsor.jetstream.eventlog import EventLog
from pacsor.jetstream.handler_runner import ConsumerSpec, Delivery, Emit, Outcome, retry_or_fail
from pacsor.jetstream.subjects import EVENTS_STREAM, replay_durable, replay_filter


def consumer(core: str, destination: Destination) -> ConsumerSpec[ev.DispatchReplayRequested]:
    return ConsumerSpec(
        durable=replay_durable(core, str(destination)),
        stream=EVENTS_STREAM,
        filter_subject=replay_filter(core),
        decode=ev.decoder(ev.DispatchReplayRequested),
        ack_wait=15.0,
        concurrency=2,
        description=f"DispatchReplayRequested -> C-STORE again to {destination}",
        start="new",
    )


async def replay_to_destination(
    request: ev.DispatchReplayRequested,
    delivery: Delivery,
    events: EventLog,
    results: BlobStore,
    destination: Destination,
    calling_ae_title: str,
    policy: RetryPolicy,
) -> Outcome:
    if request.destination != str(destination):
        return Emit()
    study = request.study_uid

    def failed(reason: str, delivered: tuple[str, ...] = ()) -> ev.DispatchFailed:
        return ev.DispatchFailed(
            **request.key,
            destination=request.destination,
            reason=reason,
            tries=delivery.num_delivered,
            delivered_sop_instance_uids=delivered,
            replay_id=request.replay_id,
        )

    ready = next(
        (
            r.event
            for r in await events.history(study)
            if isinstance(r.event, ev.ResultReady)
            and (r.event.core, r.event.attempt) == (request.core, request.attempt)
        ),
        None,
    )
    if ready is None:
        return Emit((failed("no results recorded for this attempt"),))
    objects = [(r.object_name, r.sop_instance_uid) for r in ready.results]
    try:
        answers = await send_objects(destination, calling_ae_title, results, objects)
    except BlobNotFound as err:
        return Emit((failed(f"result objects no longer stored: {err}"),))
    except SendError as err:
        return retry_or_fail(delivery, policy, err.reason, True, failed(err.reason))
    delivered = tuple(sop for sop, status in answers if dispatch.is_stored(status))
    if len(delivered) < len(answers):
        reason = ", ".join(
            f"{sop}: {dispatch.status_text(status)}"
            for sop, status in answers
            if not dispatch.is_stored(status)
        )
        return retry_or_fail(delivery, policy, reason, True, failed(reason, delivered))
    return Emit(
        (
            ev.Dispatched(
                **request.key,
                destination=request.destination,
                sop_instance_uids=delivered,
                replay_id=request.replay_id,
            ),
        )
    )
