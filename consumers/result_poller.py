"""Uploaded → poll the AI's status → fetch each inference command's result objects →
store them in PACSOR_RESULTS → ResultReady (or ResultFailed).

Polling is a NAK with delay: the wait between polls is kept by JetStream, not by this
process, so a restart resumes polling where it was. A study that has no result
RESULT_TIMEOUT_SECONDS after its upload fails with ResultFailed.
"""

from __future__ import annotations

import contextlib
from datetime import timedelta
from functools import partial
from io import BytesIO

import msgspec
from pacsor.consumers.uploader import require_tokens
from pydicom import dcmread

from pacsor.ai.milvue_api import ApiError, MilvueApi, core_clients
from pacsor.domain import events as ev
from pacsor.jetstream.blobs import BlobStore, sha256_digest
from pacsor.jetstream.handler_runner import ConsumerSpec, Delivery, Emit, Outcome, Retry
from pacsor.jetstream.subjects import (
    EVENTS_STREAM,
    core_events_filter,
    is_valid_uid,
    poll_consumer,
    result_object_name,
)
from pacsor.runtime import Component, Runtime, Started


class PollSettings(msgspec.Struct, frozen=True):
    core: str
    inference_commands: tuple[str, ...]
    poll_interval: float
    result_timeout: timedelta


def consumer(core: str) -> ConsumerSpec[ev.Uploaded]:
    return ConsumerSpec(
        durable=poll_consumer(core),
        stream=EVENTS_STREAM,
        filter_subject=core_events_filter(ev.Uploaded, core),
        decode=ev.decoder(ev.Uploaded),
        ack_wait=15.0,
        max_ack_pending=1024,
        concurrency=4,
        description=f"Uploaded -> poll AI core {core} -> ResultReady",
        failed=lambda event, reason, tries: ev.ResultFailed(
            study_instance_uid=event.study_instance_uid,
            core=event.core,
            attempt=event.attempt,
            reason=f"gave up after {tries} tries: {reason}",
        ),
    )


class ResultIdentity(msgspec.Struct, frozen=True):
    study_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str


def identify_result(data: bytes) -> ResultIdentity:
    """The UIDs of a result object; ValueError when it is not usable DICOM."""
    try:
        ds = dcmread(BytesIO(data), stop_before_pixels=True)
        identity = ResultIdentity(
            study_instance_uid=str(ds.StudyInstanceUID),
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


async def poll_results(
    event: ev.Uploaded,
    delivery: Delivery,
    api: MilvueApi,
    results: BlobStore,
    settings: PollSettings,
) -> Outcome:
    study = event.study_instance_uid
    overdue = ev.utc_now() > event.occurred_at + settings.result_timeout

    def failed(reason: str, status: int | None = None) -> Emit:
        return Emit(
            (
                ev.ResultFailed(
                    study_instance_uid=study,
                    core=event.core,
                    attempt=event.attempt,
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
        return Retry(max(settings.poll_interval, at_least or 0.0), reason)

    try:
        status = await api.get_status(study)
        if status.status == "running":
            return wait("AI still running")
        if status.status != "done":
            return failed(f"AI answered status {status.status!r}: {status.message}")

        stored: list[ev.ResultObject] = []
        for command in settings.inference_commands:
            # aclosing: leaving the loop early (a bad object) still releases the connection.
            async with contextlib.aclosing(api.iter_results(study, command)) as objects:
                async for data in objects:
                    try:
                        identity = identify_result(data)
                    except ValueError as err:
                        return failed(f"{command}: {err}")
                    name = result_object_name(
                        study, event.core, event.attempt, identity.sop_instance_uid
                    )
                    await results.put(name, data, sha256_digest(data))
                    stored.append(
                        ev.ResultObject(
                            inference_command=command,
                            sop_instance_uid=identity.sop_instance_uid,
                            sop_class_uid=identity.sop_class_uid,
                            object_name=name,
                            size=len(data),
                        )
                    )
    except ApiError as err:
        if not err.retryable:
            return failed(str(err), err.status)
        return wait(str(err), err.retry_after)

    return Emit(
        (
            ev.ResultReady(
                study_instance_uid=study,
                core=event.core,
                attempt=event.attempt,
                results=tuple(stored),
                api_version=status.version,
            ),
        )
    )


async def run(rt: Runtime, started: Started) -> None:
    s = rt.settings
    async with core_clients(s) as clients:
        consumers = [
            (
                consumer(core.name),
                partial(
                    poll_results,
                    api=api,
                    results=rt.results,
                    settings=PollSettings(
                        core=core.name,
                        # A tcr core writes a report, fetched by the hl7 component: no objects.
                        inference_commands=() if core.kind == "tcr" else core.inference_commands,
                        poll_interval=s.poll_interval_seconds,
                        result_timeout=timedelta(seconds=s.result_timeout_seconds),
                    ),
                ),
            )
            for core, api in clients
        ]
        await rt.run_consumers(consumers, started)


COMPONENT = Component(
    "poller", "Uploaded -> ResultReady / ResultFailed, per AI core", run, check=require_tokens
)
