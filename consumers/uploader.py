"""StudyComplete → upload the study to one AI core → Uploaded (or UploadFailed, NothingToUpload).

Each core has its own uploader (its own durable consumer), so a core that is down or slow
holds back no other. For each instance of the attempt, in order:

- one already uploaded to this core in this attempt (a retry, a restart) is not sent again;
- with NO_DUPLICATE_UPLOAD, one uploaded to this core by an earlier attempt, with the same
  digest, is skipped ("already uploaded"), unless a person asked for a full relaunch;
- one that the core's DICOM filters reject is skipped, with the rule that rejected it;
- the others go in batches of UPLOAD_BATCH_SIZE: multipart STOW, or (SIGNED_URL) a POST of
  the instances without their pixel data, then a PUT of each full instance to its URL,
  UPLOAD_CONCURRENCY at a time (each PUT is a round trip to the cloud: one after another, a
  study of 20,000 instances would take their sum).

Each accepted batch is recorded (InstancesUploaded) before the next one starts, and the skips
in InstancesSkipped. When a PUT fails, no other starts, those in flight finish, and the ones
that were accepted are recorded before the failure is retried: the retry PUTs only the rest.

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
from collections import Counter
from collections.abc import AsyncIterator, Callable
from functools import partial

import msgspec

from pacsor.ai.milvue_api import ApiError, MilvueApi
from pacsor.config import ConfigError, CoreSettings, Settings
from pacsor.dicom.header import HeaderError, read_header, tag_values
from pacsor.domain import events as ev
from pacsor.domain.completion import attempt_instances
from pacsor.domain.filters import FilterError, FilterRule, parse_filters, skipping_rule
from pacsor.domain.retry import RetryPolicy
from pacsor.jetstream.blobs import BlobError, BlobStore
from pacsor.jetstream.eventlog import EventLog
from pacsor.jetstream.handler_runner import (
    ConsumerSpec,
    Delivery,
    Emit,
    Handler,
    Outcome,
    retry_or_fail,
)
from pacsor.jetstream.rate_limit import RateLimiter
from pacsor.jetstream.subjects import (
    EVENTS_STREAM,
    events_filter,
    study_core_events,
    upload_consumer,
)
from pacsor.process.runtime import Component, Runtime, Started, run_per_core

# Skips are recorded in parts of at most this many instances (an event stays small).
SKIPS_PER_EVENT = 500


class UploadSettings(msgspec.Struct, frozen=True, kw_only=True):
    core: str
    signed_url: bool = False
    filters: tuple[FilterRule, ...] = ()
    batch_size: int = 100
    concurrency: int = 8  # signed-URL PUTs in flight at once
    no_duplicate: bool = True


def consumer(core: str) -> ConsumerSpec[ev.StudyComplete]:
    return ConsumerSpec(
        durable=upload_consumer(core),
        stream=EVENTS_STREAM,
        filter_subject=events_filter(ev.StudyComplete),
        decode=ev.decoder(ev.StudyComplete),
        ack_wait=15.0,
        concurrency=4,
        description=f"StudyComplete -> upload to AI core {core}",
        failed=lambda event, reason, tries: upload_failed(event, core, reason, tries=tries),
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


class _Progress(msgspec.Struct, frozen=True):
    """What this core's history says was uploaded: in this attempt, and before it."""

    this_attempt: frozenset[str]  # SOP Instance UIDs
    before: frozenset[tuple[str, str]]  # (SOP Instance UID, digest)
    batches: int  # batches of this attempt already recorded


async def _progress(events: EventLog, study: str, core: str, attempt: int) -> _Progress:
    subject = study_core_events(study, ev.InstancesUploaded, core)
    this_attempt: set[str] = set()
    before: set[tuple[str, str]] = set()
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
    return _Progress(frozenset(this_attempt), frozenset(before), batches)


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
    study = event.study_uid
    core = settings.core
    if not event.for_core(core):
        return Emit()  # a relaunch asked for other cores only

    # 0: a schema 1 event, whose instances are all those received before it.
    through = event.through_sequence or delivery.stream_sequence
    received = await events.received(study, through)
    refs = attempt_instances(received, through)
    if len(refs) != event.instance_count:
        reason = (
            f"the stream holds {len(refs)} of the attempt's {event.instance_count} instances "
            f"(InstanceReceived up to sequence {through})"
        )
        return retry_or_fail(delivery, policy, reason, False, upload_failed(event, core, reason))

    progress = await _progress(events, study, core, event.attempt)
    # A relaunch asked for by a person uploads everything again.
    dedupe = settings.no_duplicate and not event.relaunch
    tags = {rule.tag for rule in settings.filters}
    need_header = settings.signed_url or bool(settings.filters)

    total = 0
    uploaded = len(progress.this_attempt)
    batch_number = progress.batches
    batch: list[_Pending] = []
    skips: list[ev.SkippedInstance] = []
    skip_parts = 0
    skip_reasons: Counter[str] = Counter()
    api_message = ""

    async def record_skips(final: bool) -> None:
        nonlocal skip_parts
        while skips and (final or len(skips) >= SKIPS_PER_EVENT):
            part, skips[:] = skips[:SKIPS_PER_EVENT], skips[SKIPS_PER_EVENT:]
            skip_parts += 1
            await events.publish(
                ev.InstancesSkipped(
                    **event.key_for(core),
                    part=skip_parts,
                    skipped=tuple(part),
                )
            )

    def skip(instance: ev.InstanceRef, reason: str, rule: str = "") -> None:
        skips.append(
            ev.SkippedInstance(sop_instance_uid=instance.sop_instance_uid, reason=reason, rule=rule)
        )
        skip_reasons[f"{reason} ({rule})" if rule else reason] += 1

    async def record(sent: list[_Pending]) -> None:
        nonlocal batch_number, uploaded
        batch_number += 1
        await events.publish(
            ev.InstancesUploaded(
                **event.key_for(core),
                batch=batch_number,
                instances=tuple(
                    ev.UploadedInstance(
                        sop_instance_uid=p.instance.sop_instance_uid, digest=p.instance.digest
                    )
                    for p in sent
                ),
            )
        )
        uploaded += len(sent)

    async def send_batch() -> None:
        nonlocal api_message
        if not batch:
            return
        if settings.signed_url:
            sent, failure = await _send_signed(
                api, instances, study, batch, limiter, settings.concurrency
            )
            if sent:  # what was PUT before a failure is not PUT again by the retry
                await record(sent)
            if failure is not None:
                raise failure
        else:
            api_message = await _send_stow(api, instances, study, batch, limiter)
            await record(batch)
        batch.clear()

    try:
        for instance in refs:
            total += 1
            if instance.sop_instance_uid in progress.this_attempt:
                continue  # sent before this attempt was interrupted
            if dedupe and (instance.sop_instance_uid, instance.digest) in progress.before:
                skip(instance, "already uploaded")
                continue
            without_pixels = b""
            if need_header:
                try:
                    chunks = instances.chunks(instance.object_name, instance.digest)
                    async with contextlib.aclosing(chunks) as c:
                        header = await read_header(c)
                except HeaderError as err:
                    skip(instance, f"unreadable: {err}")
                    continue
                if settings.filters:
                    rule = skipping_rule(settings.filters, tag_values(header.dataset, tags))
                    if rule is not None:
                        skip(instance, "filtered", str(rule))
                        continue
                if settings.signed_url:
                    without_pixels = header.without_pixels
            batch.append(_Pending(instance, without_pixels))
            if len(batch) >= settings.batch_size:
                await send_batch()
            await record_skips(final=False)
        await send_batch()
        await record_skips(final=True)
    except BlobError as err:  # gone (past retention), or not the bytes the event recorded
        reason = f"instance not uploadable: {err}"
        return retry_or_fail(delivery, policy, reason, False, upload_failed(event, core, reason))
    except ApiError as err:
        reason = str(err)
        if err.answer_lost:
            reason += " (the request was sent: the AI may have received and processed the study)"
        failed = upload_failed(event, core, reason, err.status)
        return retry_or_fail(delivery, policy, reason, err.retryable, failed, err.retry_after)

    skipped = sum(skip_reasons.values())
    filtered = sum(n for reason, n in skip_reasons.items() if reason.startswith("filtered"))
    if uploaded == 0 and total > 0 and filtered == total:
        return Emit(
            (
                ev.NothingToUpload(
                    **event.key_for(core),
                    reason=f"all {total} instances filtered out: "
                    + "; ".join(f"{n} {reason}" for reason, n in skip_reasons.items()),
                    skipped_count=skipped,
                ),
            )
        )
    return Emit(
        (
            ev.Uploaded(
                **event.key_for(core),
                instance_count=uploaded,
                api_message=api_message,
                skipped_count=skipped,
                signed_url=settings.signed_url,
            ),
        )
    )


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
    parts = [_instance_body(instances, p.instance, limiter) for p in batch]
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
    urls = await api.upload_without_pixels(study, [partial(_one, p.without_pixels) for p in batch])
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


def require_tokens(settings: Settings) -> None:
    for n, core in enumerate(settings.cores):
        if not core.token:
            variable = "TOKEN" if n == 0 else f"TOKEN_{n}"
            raise ConfigError(f"{variable}: not set; the Milvue API needs an API key")


def core_filters(settings: Settings, n: int) -> tuple[FilterRule, ...]:
    """The DICOM filters of core `n` (0: the unsuffixed core), parsed; ConfigError names the
    variable, the rule and the fault."""
    variable = "DICOM_FILTERS" if n == 0 else f"DICOM_FILTERS_{n}"
    try:
        return parse_filters(settings.cores[n].dicom_filters)
    except FilterError as err:
        raise ConfigError(f"{variable}: {err}") from None


def check(settings: Settings) -> None:
    """What the uploader cannot start without: a token and well-formed filters, per core."""
    require_tokens(settings)
    for n in range(len(settings.cores)):
        core_filters(settings, n)


async def run(rt: Runtime, started: Started) -> None:
    """One durable consumer per core: a core that is down never delays the others."""
    s = rt.settings
    index = {core.name: n for n, core in enumerate(s.cores)}

    def upload(core: CoreSettings, api: MilvueApi) -> Handler[ev.StudyComplete]:
        settings = UploadSettings(
            core=core.name,
            signed_url=core.signed_url,
            filters=core_filters(s, index[core.name]),
            batch_size=s.upload_batch_size,
            concurrency=s.upload_concurrency,
            no_duplicate=s.no_duplicate_upload,
        )
        limit = s.upload_rate_limit
        return partial(
            upload_study,
            api=api,
            instances=rt.instances,
            events=rt.events,
            settings=settings,
            policy=rt.policy,
            limiter=RateLimiter(rt.js, core.name, limit) if limit else None,
        )

    await run_per_core(rt, started, consumer, upload)


COMPONENT = Component(
    "uploader",
    "StudyComplete -> Uploaded / UploadFailed / NothingToUpload, per AI core",
    run,
    check=check,
)
