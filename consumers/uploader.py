"""StudyComplete → upload the study to one AI core → Uploaded (or UploadFailed).

The instances are streamed from the PACSOR_INSTANCES bucket into the HTTP request, so a
large study is never held in memory. 429 and 5xx answers and network errors are retried with
the shared backoff (and at least the server's Retry-After); other 4xx fail at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from functools import partial

from pacsor.ai.milvue_api import ApiError, MilvueApi
from pacsor.domain import events as ev
from pacsor.domain.retry import RetryPolicy
from pacsor.jetstream.blobs import BlobNotFound, BlobStore
from pacsor.jetstream.handler_runner import ConsumerSpec, Delivery, Emit, Outcome, retry_or_fail
from pacsor.jetstream.subjects import EVENTS_STREAM, events_filter


def consumer(core: str) -> ConsumerSpec[ev.StudyComplete]:
    return ConsumerSpec(
        durable=f"upload-{core}",
        stream=EVENTS_STREAM,
        filter_subject=events_filter(ev.StudyComplete.topic, per_core=False),
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

    def failed(reason: str, status: int | None = None) -> Callable[[int], ev.Event]:
        return lambda tries: ev.UploadFailed(
            study_instance_uid=study,
            core=core,
            attempt=event.attempt,
            reason=reason,
            http_status=status,
            tries=tries,
        )

    parts: list[Callable[[], AsyncIterator[bytes]]] = [
        partial(instances.chunks, instance.object_name) for instance in event.instances
    ]
    try:
        response = await api.upload_study(study, parts)
    except BlobNotFound as err:
        return Emit((failed(f"instance no longer stored: {err}")(delivery.num_delivered),))
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
