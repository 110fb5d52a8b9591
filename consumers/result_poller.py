"""Uploaded → poll the AI's status → fetch each inference command's result objects and
JSON findings → store them in PACSOR_RESULTS → ResultReady (or ResultFailed).

Polling is a NAK with delay: the wait between polls is kept by JetStream, not by this
process, so a restart resumes polling where it was. Every answer has its outcome:

- status `error`, or results `forbidden`: ResultFailed with the API's message, no retry;
- results `empty`: ResultReady with no objects (nothing is dispatched);
- results still "running" after the status said done (the original's TimeoutReady), 429,
  5xx and network errors: asked again, until RESULT_TIMEOUT_SECONDS after the upload, then
  ResultFailed;
- other 4xx: ResultFailed at once.

Result objects are streamed into the bucket one by one (as multipart parts or from their
signed URLs): one object at most is in memory, and only its header is kept to name it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import timedelta
from functools import partial

import msgspec
from pydicom.dataset import Dataset

from pacsor.ai.milvue_api import FINDINGS_KINDS, INFERENCE_COMMANDS, ApiError, MilvueApi
from pacsor.config import ConfigError, Settings, require_api_tokens
from pacsor.dicom.header import MIN_PREFIX, HeaderError, parse_header
from pacsor.domain import events as ev
from pacsor.domain.retry import poll_delay
from pacsor.jetstream.blobs import BlobStore, sha256_digest
from pacsor.jetstream.handler_runner import Delivery, Emit, Handler, Outcome, Retry
from pacsor.jetstream.nats_auth import Publishes
from pacsor.jetstream.subjects import (
    RESULTS_BUCKET,
    core_events_filter,
    findings_object_name,
    is_valid_uid,
    poll_consumer,
    result_object_name,
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


class PollSettings(msgspec.Struct, frozen=True, kw_only=True):
    core: str
    inference_commands: tuple[str, ...]
    poll_interval: float
    result_timeout: timedelta
    # Query options of the results route (output_format, language, ...), from settings.
    options: Mapping[str, str] = msgspec.field(default_factory=dict)


STEP = Step(
    consumes=ev.Uploaded,
    fan_out=FanOut.PER_CORE,
    durable=lambda target: poll_consumer(target.core_settings.name),
    filter_subject=lambda target: core_events_filter(ev.Uploaded, target.core_settings.name),
    description=lambda target: f"Uploaded -> poll AI core {target.core_settings.name}",
    emits=(ev.ResultObjectsListed, ev.ResultReady, ev.ResultFailed),
    failed=lambda event, target, reason, tries: ev.ResultFailed(
        **event.key, reason=f"gave up after {tries} tries: {reason}"
    ),
    max_ack_pending=1024,
)


class ResultIdentity(msgspec.Struct, frozen=True):
    study_uid: str = msgspec.field(name="study_instance_uid")
    sop_instance_uid: str
    sop_class_uid: str


def identify_result(ds: Dataset) -> ResultIdentity:
    """The UIDs of a result object's header; ValueError when it is not usable DICOM."""
    try:
        identity = ResultIdentity(
            study_uid=str(ds.StudyInstanceUID),
            sop_instance_uid=str(ds.SOPInstanceUID),
            sop_class_uid=str(ds.SOPClassUID),
        )
    except Exception as err:
        raise ValueError(f"result object is not readable DICOM: {err}") from err
    if not is_valid_uid(identity.sop_instance_uid):
        raise ValueError(
            f"result object has an invalid SOPInstanceUID {identity.sop_instance_uid!r}"
        )
    return identity


async def _store_result(
    body: AsyncIterator[bytes], results: BlobStore, name_of: Callable[[str], str]
) -> tuple[ResultIdentity, str, int]:
    """Stream one result object into the bucket: (identity, object name, size).

    The chunks are written as they come; the header, read from the first bytes, names it.
    """
    writer = results.writer()
    prefix = bytearray()
    header = None
    try:
        async for chunk in body:
            await writer.write(chunk)
            if header is None:
                prefix += chunk
                if len(prefix) >= MIN_PREFIX:
                    header = parse_header(bytes(prefix), complete=False)
                if header is not None:
                    prefix.clear()
        try:
            header = header or parse_header(bytes(prefix), complete=True)
        except HeaderError as err:
            raise ValueError(f"result object is not readable DICOM: {err}") from err
        assert header is not None
        identity = identify_result(header.dataset)
        name = name_of(identity.sop_instance_uid)
        size = writer.size
        await writer.commit(name)
    except BaseException:
        await writer.abort()
        raise
    return identity, name, size


async def poll_results(
    event: ev.Uploaded,
    delivery: Delivery,
    api: MilvueApi,
    results: BlobStore,
    settings: PollSettings,
) -> Outcome:
    study = event.study_uid
    overdue = ev.utc_now() > event.occurred_at + settings.result_timeout

    def failed(reason: str, status: int | None = None) -> Emit:
        return Emit(
            (
                ev.ResultFailed(
                    **event.key,
                    reason=reason,
                    http_status=status,
                ),
            )
        )

    def wait(reason: str, at_least: float | None = None) -> Outcome:
        if overdue:
            return failed(
                f"no result {settings.result_timeout.total_seconds():g} s after upload: {reason}"
            )
        delay = poll_delay(delivery.num_delivered, settings.poll_interval)
        return Retry(max(delay, at_least or 0.0), reason)

    def name_of(sop_uid: str) -> str:
        return result_object_name(study, event.core, event.attempt, sop_uid)

    stored: list[ev.ResultObject] = []
    findings: list[ev.FindingsObject] = []
    try:
        status = await api.get_status(study)
        if status.status == "running":
            return wait("AI still running")
        if status.status != "done":
            message = status.message or "no message"
            return failed(f"AI answered status {status.status!r}: {message}")

        for command in settings.inference_commands:
            # aclosing: leaving the loop early (a bad object) still releases the connection.
            async with contextlib.aclosing(
                api.iter_results(study, command, settings.options)
            ) as objects:
                async for body in objects:
                    try:
                        identity, name, size = await _store_result(body, results, name_of)
                    except ValueError as err:
                        return failed(f"{command}: {err}")
                    stored.append(
                        ev.ResultObject(
                            inference_command=command,
                            sop_instance_uid=identity.sop_instance_uid,
                            sop_class_uid=identity.sop_class_uid,
                            object_name=name,
                            size=size,
                        )
                    )
            if command in FINDINGS_KINDS:
                # Detections are named in the results' language; measures take no options.
                options = (
                    {"language": settings.options["language"]}
                    if FINDINGS_KINDS[command] == "detections" and "language" in settings.options
                    else {}
                )
                data = await api.get_findings(study, command, options)
                name = findings_object_name(study, event.core, event.attempt, command)
                digest = sha256_digest(data)
                await results.put(name, data, digest)
                findings.append(
                    ev.FindingsObject(
                        inference_command=command, object_name=name, size=len(data), digest=digest
                    )
                )
    except ApiError as err:
        if not err.retryable:
            return failed(str(err), err.status)
        return wait(str(err), err.retry_after)

    # The list goes in pages recorded first; ResultReady, published last, counts them.
    pages, digest = ev.list_results(event.key, stored)
    ready = ev.ResultReady(
        **event.key,
        result_count=len(stored),
        results_digest=digest,
        result_pages=len(pages),
        api_version=status.version,
        findings=tuple(findings),
    )
    return Emit((*pages, ready))


async def run(rt: Runtime, started: Started) -> None:
    s = rt.settings

    def poll(target: Target) -> Handler[ev.Uploaded]:
        core = target.core_settings
        settings = PollSettings(
            core=core.name,
            # A tcr core writes a report, fetched by the hl7 component: no objects.
            inference_commands=() if core.kind == "tcr" else core.inference_commands,
            poll_interval=s.poll_interval_seconds,
            result_timeout=timedelta(seconds=s.result_timeout_seconds),
            options=s.result_options(),
        )
        return partial(poll_results, api=target.client, results=rt.results, settings=settings)

    await run_steps(rt, started, [(STEP, poll)])


def require_served_commands(settings: Settings) -> None:
    """Each inference core asks only for commands whose results and findings pacsor fetches:
    an unknown one is refused at start rather than polled for nothing."""
    for core in settings.cores:
        if core.kind == "tcr":
            continue
        unknown = [c for c in core.inference_commands if c not in INFERENCE_COMMANDS]
        if unknown:
            raise ConfigError(
                f"{core.variable('INFERENCE_COMMANDS')}: pacsor cannot serve {unknown[0]!r}; "
                f"commands it serves: {', '.join(INFERENCE_COMMANDS)}"
            )


def check(settings: Settings) -> None:
    require_api_tokens(settings)
    require_served_commands(settings)


COMPONENT = Component(
    "poller",
    "Uploaded -> ResultReady / ResultFailed, per AI core",
    run,
    check=check,
    publishes=Publishes(events=emitted(STEP), buckets=(RESULTS_BUCKET,)),
)
