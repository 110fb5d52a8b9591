"""ResultReady → C-STORE the result objects to one destination → Dispatched (or DispatchFailed).

Each destination has its own durable consumer, so a destination that is down waits and
retries on its own and never holds back the others. What the destination accepted or refused
is remembered across tries (pacsor.jetstream.dispatch_progress), so a retry sends only the
rest. An object refused for good (0xA9xx, 0xCxxx) is not sent again: once every object is
accepted or refused, DispatchFailed says so at once; objects failing transiently (0xA7xx, no
answer, network) are retried with backoff, and DispatchFailed after the last try lists every
object with its status. The objects stay in PACSOR_RESULTS.
"""

from __future__ import annotations

import ssl
from functools import partial

from pacsor.consumers import dispatch_replay

from pacsor.config import ConfigError, Destination, Settings
from pacsor.dicom.sender import SendError, send_objects
from pacsor.dicom.tls import dispatch_context
from pacsor.domain import dispatch
from pacsor.domain import events as ev
from pacsor.domain.retry import RetryPolicy
from pacsor.jetstream.blobs import BlobStore
from pacsor.jetstream.dispatch_progress import DispatchProgress
from pacsor.jetstream.eventlog import EventLog
from pacsor.jetstream.handler_runner import (
    Delivery,
    Emit,
    Handler,
    Outcome,
    retry_or_fail,
)
from pacsor.jetstream.nats_auth import Publishes
from pacsor.jetstream.subjects import (
    DISPATCH_PROGRESS_BUCKET,
    core_events_filter,
    dispatch_consumer,
    dispatch_progress_key,
)
from pacsor.process.counters import DISPATCH_REFUSED
from pacsor.process.runtime import (
    Component,
    FanOut,
    Runtime,
    Started,
    Step,
    Target,
    emitted,
    run_steps,
)

STEP = Step(
    consumes=ev.ResultReady,
    fan_out=FanOut.PER_DESTINATION,
    durable=lambda target: dispatch_consumer(target.core_settings.name, str(target.peer)),
    filter_subject=lambda target: core_events_filter(ev.ResultReady, target.core_settings.name),
    description=lambda target: f"ResultReady -> C-STORE to {target.peer}",
    emits=(ev.Dispatched, ev.DispatchFailed),
    failed=lambda event, target, reason, tries: dispatch_failed(
        event, str(target.peer), reason, tries
    ),
    concurrency=2,
    start="new",
)


def dispatch_failed(
    event: ev.ResultReady,
    destination: str,
    reason: str,
    tries: int,
    outcome: dispatch.Outcome = dispatch.NOTHING_KNOWN,
) -> ev.DispatchFailed:
    return dispatch.failure(event.key, destination, reason, tries, outcome)


async def dispatch_to_destination(
    event: ev.ResultReady,
    delivery: Delivery,
    events: EventLog,
    results: BlobStore,
    progress_store: DispatchProgress,
    destination: Destination,
    calling_ae_title: str,
    policy: RetryPolicy,
    tls: ssl.SSLContext | None = None,
) -> Outcome:
    if not event.result_count:
        return Emit()  # the API had no result objects (status empty): nothing to send
    # The list is read back from the ResultReady's pages: the event only counts it.
    listed = await events.result_objects(event)
    where = str(destination)
    key = dispatch_progress_key(event.study_uid, event.core, event.attempt, where)
    sop_uids = [r.sop_instance_uid for r in listed]
    progress = await progress_store.get(key, sop_uids)
    names = {r.sop_instance_uid: r.object_name for r in listed}
    pending = dispatch.to_send(sop_uids, progress)
    error = ""
    if pending:
        notes: tuple[str, ...] = ()
        try:
            sent = await send_objects(
                destination,
                calling_ae_title,
                results,
                [(names[sop], sop) for sop in pending],
                tls=tls,
            )
            answers, notes = sent.answers, sent.notes
        except SendError as err:
            answers, error = [(sop, dispatch.NO_ANSWER) for sop in pending], err.reason
        before = len(progress.refused)
        progress = await progress_store.record(key, sop_uids, answers, notes)
        DISPATCH_REFUSED.labels(where).inc(len(progress.refused) - before)

    outcome = dispatch.outcome(sop_uids, progress)
    if not outcome.refused and not outcome.undelivered:
        return Emit(
            (
                ev.Dispatched(
                    **event.key,
                    destination=where,
                    object_count=len(outcome.delivered),
                    results_digest=event.results_digest,
                ),
            )
        )
    reason = f"{where}: {outcome.summary()}" + (f"; {error}" if error else "")
    # Refusals alone: no try can change them.
    failed = dispatch_failed(event, where, reason, delivery.num_delivered, outcome)
    return retry_or_fail(delivery, policy, reason, bool(outcome.undelivered), failed)


def require_destinations(settings: Settings) -> None:
    """Every inference core has a destination, and the TLS files load when one needs TLS."""
    for n, core in enumerate(settings.cores):
        if not core.destinations and core.kind == "inference":
            variable = "PACS_IP" if n == 0 else core.variable("DESTINATIONS")
            raise ConfigError(
                f"{variable}: not set and DESTINATIONS is empty; results need a destination"
            )
    dispatch_context(settings)


async def run(rt: Runtime, started: Started) -> None:
    """Per core and destination, one consumer of the results and one of the replays asked for:
    a PACS that is down delays no other."""
    aet, results, policy = rt.settings.milvue_aet, rt.results, rt.policy
    tls = dispatch_context(rt.settings)
    progress = DispatchProgress(rt.js)

    def dispatch_to(target: Target) -> Handler[ev.ResultReady]:
        return partial(
            dispatch_to_destination,
            events=rt.events,
            results=results,
            progress_store=progress,
            destination=target.peer,
            calling_ae_title=aet,
            policy=policy,
            tls=tls,
        )

    def replay_to(target: Target) -> Handler[ev.DispatchReplayRequested]:
        return partial(
            dispatch_replay.replay_to_destination,
            events=rt.events,
            results=results,
            destination=target.peer,
            calling_ae_title=aet,
            policy=policy,
            tls=tls,
        )

    await run_steps(rt, started, [(STEP, dispatch_to), (dispatch_replay.STEP, replay_to)])


COMPONENT = Component(
    "dispatcher",
    "ResultReady -> Dispatched / DispatchFailed, per core and destination",
    run,
    check=require_destinations,
    publishes=Publishes(
        events=emitted(STEP, dispatch_replay.STEP), key_values=(DISPATCH_PROGRESS_BUCKET,)
    ),
)
