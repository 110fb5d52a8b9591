"""StudyComplete → upload the study to one AI core → Uploaded (or UploadFailed).

The attempt's instances are read back from the study's InstanceReceived events up to the
StudyComplete's `through_sequence` (pacsor.domain.completion.attempt_instances), so the event
stays small whatever the study's size. Their bytes are streamed from the PACSOR_INSTANCES
bucket into the HTTP request, so a large study is never held in memory, and each object's
digest must be the one its event recorded. 429 and 5xx answers and network errors are retried
with the shared backoff (and at least the server's Retry-After); other 4xx fail at once.

An upload whose answer was lost (read timeout, dropped connection) may have been received and
processed by the AI all the same. It is retried like any network error: the whole study again,
with the same UIDs. If the last try's answer is lost too, UploadFailed says that the AI may
have the study, so that nobody takes it for a study the AI never saw.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from functools import partial

from pacsor.ai.milvue_api import ApiError, MilvueApi, core_clients
from pacsor.config import ConfigError, Settings
from pacsor.domain import events as ev
from pacsor.domain.completion import attempt_instances
from pacsor.domain.retry import RetryPolicy
from pacsor.jetstream.blobs import BlobError, BlobStore
from pacsor.jetstream.eventlog import EventLog
from pacsor.jetstream.handler_runner import ConsumerSpec, Delivery, Emit, Outcome, retry_or_fail
from pacsor.jetstream.subjects import EVENTS_STREAM, events_filter, upload_consumer
from pacsor.runtime import Component, Runtime, Started


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
        study_instance_uid=event.study_instance_uid,
        core=core,
        attempt=event.attempt,
        reason=reason,
        http_status=status,
        tries=tries,
    )


async def upload_study(
    event: ev.StudyComplete,
    delivery: Delivery,
    api: MilvueApi,
    events: EventLog,
    instances: BlobStore,
    core: str,
    policy: RetryPolicy,
) -> Outcome:
    study = event.study_instance_uid
    if not event.for_core(core):
        return Emit()  # a relaunch limited to other cores

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
    parts: list[Callable[[], AsyncIterator[bytes]]] = [
        partial(instances.chunks, ref.object_name, ref.digest) for ref in refs
    ]
    try:
        response = await api.upload_study(study, parts)
    except BlobError as err:  # gone (past retention), or not the bytes the event recorded
        reason = f"instance not uploadable: {err}"
        return retry_or_fail(delivery, policy, reason, False, upload_failed(event, core, reason))
    except ApiError as err:
        reason = str(err)
        if err.answer_lost:
            reason += " (the request was sent: the AI may have received and processed the study)"
        failed = upload_failed(event, core, reason, err.status)
        return retry_or_fail(delivery, policy, reason, err.retryable, failed, err.retry_after)
    return Emit(
        (
            ev.Uploaded(
                study_instance_uid=study,
                core=core,
                attempt=event.attempt,
                instance_count=len(refs),
                api_message=response.message,
            ),
        )
    )


def require_tokens(settings: Settings) -> None:
    for n, core in enumerate(settings.cores):
        if not core.token:
            variable = "TOKEN" if n == 0 else f"TOKEN_{n}"
            raise ConfigError(f"{variable}: not set; the Milvue API needs an API key")


async def run(rt: Runtime, started: Started) -> None:
    """One durable consumer per core: a core that is down never delays the others."""
    async with core_clients(rt.settings) as clients:
        handlers = [
            partial(
                upload_study,
                api=api,
                events=rt.events,
                instances=rt.instances,
                core=core.name,
                policy=rt.policy,
            )
            for core, api in clients
        ]
        specs = [consumer(core.name) for core, _ in clients]
        await rt.run_consumers(list(zip(specs, handlers, strict=True)), started)


COMPONENT = Component(
    "uploader", "StudyComplete -> Uploaded / UploadFailed, per AI core", run, check=require_tokens
)
