"""Prometheus metrics of the pipeline, as the admin sees them through the stream.

    pacsor_events_total{type}                 events applied by this admin's projection
    pacsor_studies{state}                     studies per state, from the read model
    pacsor_consumer_pending{stream,consumer}  messages not yet delivered to a handler
    pacsor_consumer_ack_pending{...}          delivered, not yet acknowledged
    pacsor_consumer_redelivered{...}          redelivered and not yet acknowledged
    pacsor_projection_lag_events              stream events the read model has not applied
    pacsor_step_seconds{step}                 receive_to_complete, upload, ai_wait, dispatch

Each admin has its own registry (tests run several in one process); the text served at
/metrics adds pacsor's counters (pacsor.process.counters.REGISTRY: handler errors, rejected
associations, ...) and the process collectors of prometheus_client's default registry.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import prometheus_client as prom
from prometheus_client import REGISTRY, CollectorRegistry, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from pacsor.admin.read_model import ReadModel
from pacsor.domain import events as ev
from pacsor.domain.study_view import STATES
from pacsor.process.counters import REGISTRY as PACSOR_REGISTRY

STEP_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 24 * 3600)


class _StudiesPerState(Collector):
    def __init__(self, model: ReadModel) -> None:
        self._model = model

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("pacsor_studies", "Studies per state", labels=["state"])
        counts = self._model.state_counts()
        for state in STATES:
            family.add_metric([state], counts.get(state, 0))
        yield family


class AdminMetrics:
    def __init__(self, model: ReadModel) -> None:
        self.registry = CollectorRegistry()
        self.events = prom.Counter(
            "pacsor_events", "Events applied by the projection", ["type"], registry=self.registry
        )
        self.steps = Histogram(
            "pacsor_step_seconds",
            "Duration of a pipeline step",
            ["step"],
            buckets=STEP_BUCKETS,
            registry=self.registry,
        )
        self._steps: dict[str, Histogram] = {}
        labels = ["stream", "consumer"]
        self.pending = Gauge(
            "pacsor_consumer_pending", "Messages not yet delivered", labels, registry=self.registry
        )
        self.ack_pending = Gauge(
            "pacsor_consumer_ack_pending",
            "Messages delivered, not yet acknowledged",
            labels,
            registry=self.registry,
        )
        self.redelivered = Gauge(
            "pacsor_consumer_redelivered",
            "Messages redelivered, not yet acknowledged",
            labels,
            registry=self.registry,
        )
        self.lag = Gauge(
            "pacsor_projection_lag_events",
            "Events in the stream not yet applied to the read model",
            registry=self.registry,
        )
        self.registry.register(_StudiesPerState(model))

    # The projector's Observer
    def events_applied(self, recorded: list[tuple[int, ev.Event]]) -> None:
        # Counted first, then one labelled increment a type: a label lookup an event was a
        # rebuild's cost.
        for name, count in Counter(type(event).__name__ for _, event in recorded).items():
            self.events.labels(name).inc(count)

    def step_took(self, name: str, seconds: float) -> None:
        step = self._steps.get(name)
        if step is None:  # kept: labels() takes a lock and builds a key, steps come by the million
            step = self._steps[name] = self.steps.labels(name)
        step.observe(seconds)

    def text(self) -> bytes:
        return (
            generate_latest(self.registry)
            + generate_latest(PACSOR_REGISTRY)
            + generate_latest(REGISTRY)
        )
