"""Is the pipeline healthy? NATS connected, every stream present, each consumer's backlog;
and each AI core and destination as last seen through the studies' events."""

from __future__ import annotations

from datetime import datetime

import msgspec

from pacsor.admin.metrics import AdminMetrics
from pacsor.admin.projector import Projector
from pacsor.admin.read_model import ReadModel
from pacsor.config import Settings
from pacsor.jetstream.broker_state import BrokerState, ConsumerState, StreamState

# The names the admin API has always shown.
ConsumerHealth = ConsumerState
StreamHealth = StreamState


class PeerHealth(msgspec.Struct, frozen=True):
    """A core or destination: `ok` when its last answer worked, `failing`, or `unseen`."""

    name: str
    state: str
    last_ok_at: datetime | None = None
    last_failed_at: datetime | None = None
    last_reason: str = ""
    last_study: str = ""


class Health(msgspec.Struct, frozen=True):
    healthy: bool
    nats_connected: bool
    projection_running: bool
    applied_sequence: int
    stream_sequence: int
    streams: list[StreamHealth]
    consumers: list[ConsumerHealth]
    problems: list[str]
    cores: list[PeerHealth] = []
    destinations: list[PeerHealth] = []


def peers_as_seen(
    settings: Settings, model: ReadModel
) -> tuple[list[PeerHealth], list[PeerHealth]]:
    """Every configured core and destination (and each RIS heard of), as last seen."""
    seen = {(p.kind, p.name): p for p in model.peers()}
    cores = [c.name for c in settings.cores]
    destinations = list(dict.fromkeys(str(d) for c in settings.cores for d in c.destinations))
    destinations += [
        name for kind, name in seen if kind == "destination" and name.startswith("RIS ")
    ]

    def health(kind: str, name: str) -> PeerHealth:
        peer = seen.get((kind, name))
        if peer is None:
            return PeerHealth(name, "unseen")
        return PeerHealth(name, peer.state, peer.ok_at, peer.failed_at, peer.reason, peer.study)

    return [health("core", n) for n in cores], [health("destination", n) for n in destinations]


def judge_health(
    broker: BrokerState,
    projector: Projector,
    metrics: AdminMetrics | None = None,
    peers: tuple[list[PeerHealth], list[PeerHealth]] = ([], []),
) -> Health:
    """Healthy means the broker and the projection work; a failing destination is shown,
    not judged: the pipeline keeps its results and retries."""
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
        cores=peers[0],
        destinations=peers[1],
    )
