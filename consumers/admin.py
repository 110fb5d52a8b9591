"""The stream → the operators' read model, HTTP API, metrics and dashboard.

The admin reads: it folds the events into study views (pacsor.domain.study_view) and serves
them. The only events it writes are a person's requests (RelaunchRequested,
DispatchReplayRequested), which the pipeline's steps answer. Its code is pacsor.admin; it is
declared here, with every other component.
"""

from __future__ import annotations

from pacsor.admin import server
from pacsor.domain import events as ev
from pacsor.jetstream.nats_auth import Publishes
from pacsor.process.runtime import Component

COMPONENT = Component(
    "admin",
    "the stream -> the operators' read model, HTTP API, metrics and dashboard",
    server.run,
    publishes=Publishes(
        events=(ev.RelaunchRequested, ev.DispatchReplayRequested, ev.Hl7ConfigLoaded),
        # The operators' component applies a changed stream definition.
        manages_streams=True,
    ),
)
