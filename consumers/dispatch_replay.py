"""DispatchReplayRequested → C-STORE that attempt's results again to one destination →
Dispatched (or DispatchFailed) of that replay.

An operator replays a time range to a PACS that lost data. Each destination has its own
durable consumer and ignores the requests meant for the others. The result objects are the
ones the attempt's ResultReady lists, still in PACSOR_RESULTS.
"""

from __future__ import annotations

import ssl

from pacsor.config import Destination
from pacsor.dicom.sender import SendError, send_objects
from pacsor.domain import dispatch
from pacsor.domain import events as ev
from pacsor.domain.retry import RetryPolicy
from pacsor.jetstream.blobs import BlobNotFound, BlobStore
from pacsor.jetstream.eventlog import EventLog
from pacsor.jetstream.handler_runner import Delivery, Emit, Outcome, retry_or_fail
from pacsor.jetstream.subjects import replay_durable, replay_filter
from pacsor.process.runtime import FanOut, Step


def replay_failed(
    request: ev.DispatchReplayRequested,
    reason: str,
    tries: int,
    outcome: dispatch.Outcome = dispatch.NOTHING_KNOWN,
) -> ev.DispatchFailed:
    key, where = request.key, request.destination
    return dispatch.failure(key, where, reason, tries, outcome, request.replay_id)


STEP = Step(
    consumes=ev.DispatchReplayRequested,
    fan_out=FanOut.PER_DESTINATION,
    durable=lambda target: replay_durable(target.core_settings.name, str(target.peer)),
    filter_subject=lambda target: replay_filter(target.core_settings.name),
    description=lambda target: f"DispatchReplayRequested -> C-STORE again to {target.peer}",
    emits=(ev.Dispatched, ev.DispatchFailed),
    failed=lambda request, target, reason, tries: replay_failed(request, reason, tries),
    concurrency=2,
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
    tls: ssl.SSLContext | None = None,
) -> Outcome:
    if request.destination != str(destination):
        return Emit()
    study = request.study_uid

    def failed(reason: str) -> ev.DispatchFailed:
        return replay_failed(request, reason, delivery.num_delivered)

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
    objects = [(r.object_name, r.sop_instance_uid) for r in await events.result_objects(ready)]
    try:
        sent = await send_objects(destination, calling_ae_title, results, objects, tls=tls)
    except BlobNotFound as err:
        return Emit((failed(f"result objects no longer stored: {err}"),))
    except SendError as err:
        return retry_or_fail(delivery, policy, err.reason, True, failed(err.reason))
    # As the dispatcher does: a refusal for good is not retried, an object not delivered is.
    outcome = dispatch.outcome(
        [sop for _, sop in objects],
        dispatch.record_try(dispatch.Progress(), sent.answers, sent.notes),
    )
    if outcome.refused or outcome.undelivered:
        reason = f"{request.destination}: {outcome.summary()}"
        failure = replay_failed(request, reason, delivery.num_delivered, outcome)
        return retry_or_fail(delivery, policy, reason, bool(outcome.undelivered), failure)
    return Emit(
        (
            ev.Dispatched(
                **request.key,
                destination=request.destination,
                object_count=len(outcome.delivered),
                results_digest=ready.results_digest,
                replay_id=request.replay_id,
            ),
        )
    )
