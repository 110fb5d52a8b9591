"""Is the pipeline healthy? NATS connected, every stream present, each consumer's backlog."""

from __future__ import annotations

import msgspec

from pacsor.admin.metrics import AdminMetrics
from pacsor.admin.projector import Projector
from pacsor.jetstream.broker_state import BrokerState, ConsumerState, StreamState

# The names the admin API has always shown.
ConsumerHealth = ConsumerState
StreamHealth = StreamState


class Health(msgspec.Struct, frozen=True):
    healthy: bool
    nats_connected: bool
    projection_running: bool
    applied_sequence: int
    stream_sequence: int
    streams: list[StreamHealth]
    consumers: list[ConsumerHealth]
    problems: list[str]


def judge_health(
    broker: BrokerState, projector: Projector, metrics: AdminMetrics | None = None
) -> Health:
    problems = list(broker.problems)
    if not projector.connected:
        problems.append("the projection is not following the stream")
    applied = projector.applied_sequence
    if metrics is not None:
        metrics.lag.set(max(broker.events_last_sequence - applied, 0))
        for c in broker.consumers:
            metrics.pending.labels(c.stream, c.consumer).set(c.pending)
            metrics.ack_pending.labels(c.stream, c.consumer).set(c.ack_pending)
            metrics.redelivered.labels(c.stream, c.consumer).set(c.redelivered)
    return Health(
        healthy=not problems,
        nats_connected=broker.connected,
        projection_running=projector.connected,
        applied_sequence=applied,
        stream_sequence=broker.events_last_sequence,
        streams=broker.streams,
        consumers=broker.consumers,
        problems=problems,
    )
