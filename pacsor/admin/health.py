"""Is the pipeline healthy? NATS connected, every stream present, each consumer's backlog."""

from __future__ import annotations

import msgspec
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from pacsor.admin.metrics import AdminMetrics
from pacsor.admin.projector import Projector
from pacsor.jetstream.subjects import EVENTS_STREAM
from pacsor.streams import stream_definitions


class ConsumerHealth(msgspec.Struct, frozen=True):
    stream: str
    consumer: str
    pending: int
    ack_pending: int
    redelivered: int


class StreamHealth(msgspec.Struct, frozen=True):
    name: str
    present: bool
    messages: int = 0


class Health(msgspec.Struct, frozen=True):
    healthy: bool
    nats_connected: bool
    projection_running: bool
    applied_sequence: int
    stream_sequence: int
    streams: list[StreamHealth]
    consumers: list[ConsumerHealth]
    problems: list[str]


async def check_health(
    nc: Client, js: JetStreamContext, projector: Projector, metrics: AdminMetrics | None = None
) -> Health:
    problems: list[str] = []
    streams: list[StreamHealth] = []
    consumers: list[ConsumerHealth] = []
    last_sequence = 0
    if not nc.is_connected:
        problems.append("not connected to NATS")
    else:
        for name in stream_definitions():
            try:
                info = await js.stream_info(name)
            except NotFoundError:
                streams.append(StreamHealth(name, False))
                problems.append(f"stream {name} is missing")
                continue
            except Exception as err:
                problems.append(f"stream {name}: {type(err).__name__}: {err}")
                continue
            streams.append(StreamHealth(name, True, info.state.messages))
            if name == EVENTS_STREAM:
                last_sequence = info.state.last_seq
            if name.startswith("OBJ_"):
                continue
            for consumer in await js.consumers_info(name):
                if consumer.config.durable_name is None:
                    continue  # ephemeral readers, such as this admin's projection
                consumers.append(
                    ConsumerHealth(
                        stream=name,
                        consumer=consumer.name,
                        pending=consumer.num_pending or 0,
                        ack_pending=consumer.num_ack_pending or 0,
                        redelivered=consumer.num_redelivered or 0,
                    )
                )
    if not projector.connected:
        problems.append("the projection is not following the stream")
    applied = projector.applied_sequence
    if metrics is not None:
        metrics.lag.set(max(last_sequence - applied, 0))
        for c in consumers:
            metrics.pending.labels(c.stream, c.consumer).set(c.pending)
            metrics.ack_pending.labels(c.stream, c.consumer).set(c.ack_pending)
            metrics.redelivered.labels(c.stream, c.consumer).set(c.redelivered)
    return Health(
        healthy=not problems,
        nats_connected=nc.is_connected,
        projection_running=projector.connected,
        applied_sequence=applied,
        stream_sequence=last_sequence,
        streams=streams,
        consumers=consumers,
        problems=problems,
    )
