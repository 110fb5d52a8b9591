"""StudyComplete → upload the study to one AI core → Uploaded (or UploadFailed).

The instances are streamed from the PACSOR_INSTANCES bucket into the HTTP request, so a
large study is never held in memory. 429 and 5xx answers and network errors are retried with
the shared backoff (and at least the server's Retry-After); other 4xx fail at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from functools import partial

from pacsor.ai.milvue_api import ApiError, MilvueApi, core_clients
from pacsor.config import ConfigError, Settings
from pacsor.domain import events as ev
from pacsor.domain.retry import RetryPolicy
from pacsor.jetstream.blobs import BlobNotFound, BlobStore
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
    )


async def upload_study(
    event: ev.StudyComplete,
    delivery: Delivery,
    api: MilvueApi,
    instances: BlobStore,
    core: str,
    policy: RetryPolicy,
) -> Outcome:
    study = event.study_instance_uid
    if not event.for_core(core):
        return Emit()  # a relaunch limited to other cores

    def failed(reason: str, status: int | None = None) -> ev.UploadFailed:
        return ev.UploadFailed(
            study_instance_uid=study,
            core=core,
            attempt=event.attempt,
            reason=reason,
            http_status=status,
        )

    parts: list[Callable[[], AsyncIterator[bytes]]] = [
        partial(instances.chunks, instance.object_name) for instance in event.instances
    ]
    try:
        response = await api.upload_study(study, parts)
    except BlobNotFound as err:
        return retry_or_fail(
            delivery, policy, str(err), False, failed(f"instance no longer stored: {err}")
        )
    except ApiError as err:
        return retry_or_fail(
            delivery, policy, str(err), err.retryable, failed(str(err), err.status), err.retry_after
        )
    return Emit(
        (
            ev.Uploaded(
                study_instance_uid=study,
                core=core,
                attempt=event.attempt,
                instance_count=len(event.instances),
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
            partial(upload_study, api=api, instances=rt.instances, core=core.name, policy=rt.policy)
            for core, api in clients
        ]
        specs = [consumer(core.name) for core, _ in clients]
        await rt.run_consumers(list(zip(specs, handlers, strict=True)), started)


COMPONENT = Component(
    "uploader", "StudyComplete -> Uploaded / UploadFailed, per AI core", run, check=require_tokens
)
