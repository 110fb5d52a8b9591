"""StudyComplete → upload the study to one AI core → Uploaded (or UploadFailed, NothingToUpload).

Each core has its own uploader (its own durable consumer), so a core that is down or slow
holds back no other. Which instances are sent, and why the others are skipped (already
uploaded, unreadable, filtered out), is pacsor.domain.upload_triage. Those sent go in batches
of UPLOAD_BATCH_SIZE: multipart STOW, or (SIGNED_URL) a POST of the instances without their
pixel data, then a PUT of each full instance to its URL, UPLOAD_CONCURRENCY at a time (each
PUT is a round trip to the cloud: one after another, a study of 20,000 instances would take
their sum).

The handler uploads one batch per call and returns it as a checkpoint (Continue): the runner
records InstancesUploaded (and the skips, in InstancesSkipped) before calling it again for the
next batch, so a restart resumes after the last batch recorded. When a PUT fails, no other
starts, those in flight finish, and the ones that were accepted are recorded before the
failure is retried: the retry PUTs only the rest.

The attempt's instances are read back from the study's InstanceReceived events up to the
StudyComplete's `through_sequence` (pacsor.domain.completion.attempt_instances), so the event
stays small whatever the study's size. Their bytes are
streamed from PACSOR_INSTANCES into the request, and each object's digest must be the one its
event recorded: at most the pixel-less headers of one batch are held in memory, never a study.
With UPLOAD_RATE_LIMIT, every instance waits for a slot shared by all the replicas.

429, 5xx and network errors are retried with the shared backoff (and at least the server's
Retry-After); 400, 403, 404 and 422 fail at once with the API's message.

An upload whose answer was lost (read timeout, dropped connection) may have been received and
processed by the AI all the same. It is retried like any network error: that batch again, with
the same UIDs. If the last try's answer is lost too, UploadFailed says that the AI may have
the study, so that nobody takes it for a study the AI never saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable
from functools import partial

import msgspec

from pacsor.ai.milvue_api import ApiError, MilvueApi
from pacsor.ai.multipart import SizedPart
from pacsor.config import ConfigError, Settings, require_api_tokens
from pacsor.dicom.header import HeaderError, read_header, tag_values
from pacsor.domain import events as ev
from pacsor.domain.completion import attempt_instances
from pacsor.domain.filters import FilterError, FilterRule, parse_filters
from pacsor.domain.retry import RetryPolicy
from pacsor.domain.upload_triage import (
    CoreProgress,
    Done,
    NothingSent,
    Skip,
    TriagePolicy,
    Verdict,
    after_reading,
    before_reading,
    conclusion,
)
from pacsor.jetstream.blobs import BlobError, BlobStore
from pacsor.jetstream.eventlog import EventLog
from pacsor.jetstream.handler_runner import (
    Continue,
    Delivery,
    Emit,
    Handler,
    Outcome,
    retry_or_fail,
)
from pacsor.jetstream.nats_auth import Publishes
from pacsor.jetstream.rate_limit import RateLimiter
from pacsor.jetstream.subjects import (
    LIMITS_BUCKET,
    events_filter,
    study_core_events,
    upload_consumer,
)
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

log = logging.getLogger("pacsor.uploader")

# Skips are recorded in parts of at most this many instances (an event stays small).
SKIPS_PER_EVENT = 500


class UploadSettings(msgspec.Struct, frozen=True, kw_only=True):
    core: str
    signed_url: bool = False
    filters: tuple[FilterRule, ...] = ()
    batch_size: int = 100
    concurrency: int = 8  # signed-URL PUTs in flight at once
    no_duplicate: bool = True


STEP = Step(
    consumes=ev.StudyComplete,
    fan_out=FanOut.PER_CORE,
    durable=lambda target: upload_consumer(target.core_settings.name),
    filter_subject=events_filter(ev.StudyComplete),
    description=lambda target: f"StudyComplete -> upload to AI core {target.core_settings.name}",
    emits=(
        ev.InstancesSkipped,
        ev.InstancesUploaded,
        ev.Uploaded,
        ev.NothingToUpload,
        ev.UploadFailed,
    ),
    failed=lambda event, target, reason, tries: upload_failed(
        event, target.core_settings.name, reason, tries=tries
    ),
)


def upload_failed(
    event: ev.StudyComplete, core: str, reason: str, status: int | None = None, tries: int = 1
) -> ev.UploadFailed:
    return ev.UploadFailed(
        **event.key_for(core),
        reason=reason,
        http_status=status,
        tries=tries,
    )


class _Pending(msgspec.Struct, frozen=True):
    instance: ev.InstanceRef
    without_pixels: bytes  # only in signed-URL mode


class _Resume(msgspec.Struct, frozen=True):
    """Where the attempt's upload stands between two batches of one delivery."""

    refs: tuple[ev.InstanceRef, ...]
    progress: CoreProgress
    position: int = 0  # the next instance to triage
    batch: int = 0  # batches recorded in this attempt
    uploaded: int = 0
    skips: Counter[Skip] = msgspec.field(default_factory=Counter)
    # Skips not yet recorded: parts of SKIPS_PER_EVENT go as they fill, the rest at the end.
    unrecorded: tuple[ev.SkippedInstance, ...] = ()
    skip_parts: int = 0
    api_message: str = ""


async def _progress(events: EventLog, study: str, core: str, attempt: int) -> CoreProgress:
    subject = study_core_events(study, ev.InstancesUploaded, core)
    this_attempt: set[str] = set()
    # The copy the core last received of each SOP Instance: A, A', A uploads A again.
    before: dict[str, str] = {}
    batches = 0
    for recorded in await events.read(subject):
        batch = recorded.event
        if not isinstance(batch, ev.InstancesUploaded):
            continue
        if batch.attempt == attempt:
            batches = max(batches, batch.batch)
            this_attempt.update(i.sop_instance_uid for i in batch.instances)
        elif batch.attempt < attempt:
            before.update((i.sop_instance_uid, i.digest) for i in batch.instances)
    return CoreProgress(frozenset(this_attempt), before, batches)


async def upload_study(
    event: ev.StudyComplete,
    delivery: Delivery,
    api: MilvueApi,
    instances: BlobStore,
    events: EventLog,
    settings: UploadSettings,
    policy: RetryPolicy,
    limiter: RateLimiter | None = None,
) -> Outcome:
    """One batch per call: its upload and skips are a checkpoint (Continue) before the next."""
    study, core = event.study_uid, settings.core
    if not event.for_core(core):
        return Emit()  # a relaunch asked for other cores only
    triage = TriagePolicy(
        filters=settings.filters,
        dedupe=settings.no_duplicate and not event.relaunch,
        signed_url=settings.signed_url,
    )
    state = delivery.resume
    if not isinstance(state, _Resume):
        # 0: a schema 1 event, whose instances are all those received before it.
        through = event.through_sequence or delivery.stream_sequence
        refs = attempt_instances(await events.received(study, through), through)
        if len(refs) != event.instance_count:
            reason = (
                f"the stream holds {len(refs)} of the attempt's {event.instance_count} "
                f"instances (InstanceReceived up to sequence {through})"
            )
            failed = upload_failed(event, core, reason)
            return retry_or_fail(delivery, policy, reason, False, failed)
        progress = await _progress(events, study, core, event.attempt)
        state = _Resume(
            tuple(refs), progress, batch=progress.batches, uploaded=len(progress.this_attempt)
        )

    batch: list[_Pending] = []
    skipped: list[ev.SkippedInstance] = []
    skips = Counter(state.skips)
    position = state.position
    try:
        while position < len(state.refs) and len(batch) < settings.batch_size:
            ref = state.refs[position]
            position += 1
            verdict: Verdict | None = before_reading(ref, state.progress, triage)
            without_pixels = b""
            if verdict is None and triage.needs_header:
                chunks = instances.chunks(ref.object_name, ref.digest)
                try:
                    async with contextlib.aclosing(chunks) as c:
                        header = await read_header(c)
                except HeaderError as err:
                    verdict = after_reading(triage, None, str(err))
                else:
                    verdict = after_reading(triage, tag_values(header.dataset, triage.tags))
                    without_pixels = header.without_pixels if triage.signed_url else b""
            if isinstance(verdict, Skip):
                skips[verdict] += 1
                skipped.append(verdict.record(ref))
            elif not isinstance(verdict, Done):
                batch.append(_Pending(ref, without_pixels))
        sent, api_message, failure = await _send(api, instances, study, batch, limiter, settings)
    except BlobError as err:  # gone (past retention), or not the bytes the event recorded
        reason = f"instance not uploadable: {err}"
        return retry_or_fail(delivery, policy, reason, False, upload_failed(event, core, reason))

    checkpoint: list[ev.Event] = []
    if sent:  # what was accepted before a failure is not sent again by the retry
        checkpoint.append(_uploaded_batch(event, core, state.batch + 1, sent))
    finished = position >= len(state.refs) and failure is None
    parts, unrecorded, skip_parts = _skip_parts(
        event, core, (*state.unrecorded, *skipped), state.skip_parts, final=finished
    )
    checkpoint.extend(parts)
    if failure is not None:
        return _failed(event, core, delivery, policy, failure, tuple(checkpoint))
    state = msgspec.structs.replace(
        state,
        position=position,
        batch=state.batch + (1 if sent else 0),
        uploaded=state.uploaded + len(sent),
        skips=skips,
        unrecorded=unrecorded,
        skip_parts=skip_parts,
        api_message=api_message or state.api_message,
    )
    if sent:  # a long upload says how far it is, with its totals (the event names the batch)
        batches = max(state.batch, -(-len(state.refs) // settings.batch_size))
        log.info(
            "upload progress",
            extra={
                "study": study,
                "core": core,
                "batch": f"{state.batch}/{batches}",
                "instances": f"{state.uploaded}/{len(state.refs)}",
            },
        )
    if not finished:
        return Continue(tuple(checkpoint), state)
    return Emit((*checkpoint, _outcome(event, core, state, settings.signed_url)))


def _uploaded_batch(
    event: ev.StudyComplete, core: str, number: int, sent: list[_Pending]
) -> ev.InstancesUploaded:
    return ev.InstancesUploaded(
        **event.key_for(core),
        batch=number,
        instances=tuple(
            ev.UploadedInstance(
                sop_instance_uid=p.instance.sop_instance_uid, digest=p.instance.digest
            )
            for p in sent
        ),
    )


def _skip_parts(
    event: ev.StudyComplete,
    core: str,
    skipped: tuple[ev.SkippedInstance, ...],
    parts_before: int,
    final: bool,
) -> tuple[list[ev.InstancesSkipped], tuple[ev.SkippedInstance, ...], int]:
    """The full parts of SKIPS_PER_EVENT skips (an event stays small), and at the end the rest:
    (parts, skips left for later, parts numbered so far).

    Skips come in the same order on every delivery and parts are cut at the same places, so a
    redelivery numbers the same parts alike and their idempotency keys record each once."""
    whole = len(skipped) if final else len(skipped) - len(skipped) % SKIPS_PER_EVENT
    parts = [
        ev.InstancesSkipped(
            **event.key_for(core),
            part=parts_before + n + 1,
            skipped=skipped[start : min(start + SKIPS_PER_EVENT, whole)],
        )
        for n, start in enumerate(range(0, whole, SKIPS_PER_EVENT))
    ]
    return parts, skipped[whole:], parts_before + len(parts)


def _failed(
    event: ev.StudyComplete,
    core: str,
    delivery: Delivery,
    policy: RetryPolicy,
    err: ApiError | BlobError,
    progress: tuple[ev.Event, ...],
) -> Outcome:
    if isinstance(err, BlobError):
        reason = f"instance not uploadable: {err}"
        failed = upload_failed(event, core, reason)
        return retry_or_fail(delivery, policy, reason, False, failed, progress=progress)
    reason = str(err)
    if err.answer_lost:
        reason += " (the request was sent: the AI may have received and processed the study)"
    failed = upload_failed(event, core, reason, err.status)
    return retry_or_fail(
        delivery, policy, reason, err.retryable, failed, err.retry_after, progress=progress
    )


def _outcome(
    event: ev.StudyComplete, core: str, state: _Resume, signed_url: bool
) -> ev.Uploaded | ev.NothingToUpload:
    skipped = sum(state.skips.values())
    decided = conclusion(len(state.refs), state.uploaded, state.skips)
    if isinstance(decided, NothingSent):
        return ev.NothingToUpload(
            **event.key_for(core), reason=decided.reason, skipped_count=skipped
        )
    return ev.Uploaded(
        **event.key_for(core),
        instance_count=state.uploaded,
        api_message=state.api_message,
        skipped_count=skipped,
        signed_url=signed_url,
    )


async def _send(
    api: MilvueApi,
    instances: BlobStore,
    study: str,
    batch: list[_Pending],
    limiter: RateLimiter | None,
    settings: UploadSettings,
) -> tuple[list[_Pending], str, ApiError | BlobError | None]:
    """Upload one batch: (the instances accepted, the API's message, the failure if any)."""
    if not batch:
        return [], "", None
    try:
        if settings.signed_url:
            sent, failure = await _send_signed(
                api, instances, study, batch, limiter, settings.concurrency
            )
            return sent, "", failure
        return batch, await _send_stow(api, instances, study, batch, limiter), None
    except (ApiError, BlobError) as err:
        return [], "", err


def _instance_body(
    instances: BlobStore, ref: ev.InstanceRef, limiter: RateLimiter | None
) -> Callable[[], AsyncIterator[bytes]]:
    """The bytes of one stored instance, sent once the rate limit gives it a slot."""

    async def produce() -> AsyncIterator[bytes]:
        if limiter is not None:
            await limiter.acquire()
        async for chunk in instances.chunks(ref.object_name, ref.digest):
            yield chunk

    return produce


async def _send_stow(
    api: MilvueApi,
    instances: BlobStore,
    study: str,
    batch: list[_Pending],
    limiter: RateLimiter | None,
) -> str:
    # Sizes from the events: the request's Content-Length is known before it goes.
    parts = [
        SizedPart(_instance_body(instances, p.instance, limiter), p.instance.size) for p in batch
    ]
    return (await api.upload_study(study, parts)).message


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _send_signed(
    api: MilvueApi,
    instances: BlobStore,
    study: str,
    batch: list[_Pending],
    limiter: RateLimiter | None,
    concurrency: int,
) -> tuple[list[_Pending], ApiError | BlobError | None]:
    """POST the batch without pixel data, then PUT each instance, `concurrency` at a time.

    Returns the instances PUT, and the first failure, if any. After a failure no PUT starts,
    and those in flight finish: a PUT cut off might have reached the API all the same.
    """
    urls = await api.upload_without_pixels(
        study, [SizedPart(partial(_one, p.without_pixels), len(p.without_pixels)) for p in batch]
    )
    missing = [
        p.instance.sop_instance_uid for p in batch if p.instance.sop_instance_uid not in urls
    ]
    if missing:
        raise ApiError(200, f"the API gave no signed URL for instance {missing[0]}", method="POST")
    sent: list[_Pending] = []
    failures: list[ApiError | BlobError] = []
    todo = iter(batch)  # shared by the workers: each instance is taken once

    async def put_each() -> None:
        for pending in todo:
            if failures:
                return
            ref = pending.instance
            try:
                body = _instance_body(instances, ref, limiter)
                await api.put_instance(urls[ref.sop_instance_uid], body, ref.size)
            except (ApiError, BlobError) as err:
                failures.append(err)
                return
            sent.append(pending)

    workers = [asyncio.create_task(put_each()) for _ in range(min(concurrency, len(batch)))]
    try:
        await asyncio.gather(*workers)
    finally:  # on anything unforeseen (a cancelled handler), stop the other PUTs
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    return sent, (failures[0] if failures else None)


def core_filters(settings: Settings, n: int) -> tuple[FilterRule, ...]:
    """The DICOM filters of core `n` (0: the unsuffixed core), parsed; ConfigError names the
    variable, the rule and the fault."""
    variable = settings.cores[n].variable("DICOM_FILTERS")
    try:
        return parse_filters(settings.cores[n].dicom_filters)
    except FilterError as err:
        raise ConfigError(f"{variable}: {err}") from None


def check(settings: Settings) -> None:
    """What the uploader cannot start without: a token and well-formed filters, per core."""
    require_api_tokens(settings)
    for n in range(len(settings.cores)):
        core_filters(settings, n)


async def run(rt: Runtime, started: Started) -> None:
    s = rt.settings

    def upload(target: Target) -> Handler[ev.StudyComplete]:
        core = target.core_settings
        settings = UploadSettings(
            core=core.name,
            signed_url=core.signed_url,
            filters=core_filters(s, core.index),
            batch_size=s.upload_batch_size,
            concurrency=s.upload_concurrency,
            no_duplicate=s.no_duplicate_upload,
        )
        limit = s.upload_rate_limit
        return partial(
            upload_study,
            api=target.client,
            instances=rt.instances,
            events=rt.events,
            settings=settings,
            policy=rt.policy,
            limiter=RateLimiter(rt.js, core.name, limit) if limit else None,
        )

    await run_steps(rt, started, [(STEP, upload)])


COMPONENT = Component(
    "uploader",
    "StudyComplete -> Uploaded / UploadFailed / NothingToUpload, per AI core",
    run,
    check=check,
    # The shared upload rate limit is a key-value entry.
    publishes=Publishes(events=emitted(STEP), key_values=(LIMITS_BUCKET,)),
)
