"""The study views → remove stored DICOM objects that are due → ObjectsExpired.

The retention component sweeps every RETENTION_CHECK_SECONDS, from a read model of its own
(the same projection as the admin's, in its own file: the write side does not lean on the
operators' API). Which objects are due is decided by
pacsor.domain.retention from the study's view; the objects are deleted first, then
ObjectsExpired is recorded (with an idempotency key), so a crash in between only repeats a
deletion that finds nothing. Several replicas may sweep: each removal is recorded once.

The events themselves live EVENTS_RETENTION_DAYS (the PACSOR stream's max_age); the
object-store buckets keep a backstop max_age a day longer than RETENTION_HOURS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime, timedelta
from pathlib import Path

from pacsor.admin.projector import Projector
from pacsor.admin.read_model import ReadModel
from pacsor.config import Settings
from pacsor.domain import events as ev
from pacsor.domain.retention import Removal, removals_due
from pacsor.domain.study_view import StudyView
from pacsor.jetstream.blobs import BlobStore
from pacsor.jetstream.eventlog import EventLog
from pacsor.jetstream.liveness import WRITE_EVERY, Heartbeat, liveness_file
from pacsor.jetstream.nats_auth import Publishes
from pacsor.jetstream.subjects import INSTANCES_BUCKET, RESULTS_BUCKET
from pacsor.process.runtime import Component, Runtime, Started

log = logging.getLogger("pacsor.retention")

PAGE = 500


class RetentionSweeper:
    def __init__(
        self,
        settings: Settings,
        projector: Projector,
        events: EventLog,
        instances: BlobStore,
        results: BlobStore,
    ) -> None:
        self._settings = settings
        self._projector = projector
        self._model = projector.model
        self._events = events
        self._instances = instances
        self._results = results
        self.retention = timedelta(hours=settings.retention_hours)
        self.failed_delay = timedelta(hours=settings.output_cleaning_failed_hours)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                if await self.caught_up():
                    removed = await self.sweep(ev.utc_now())
                    if removed:
                        log.info("retention sweep", extra={"removals": removed})
                else:
                    log.info("retention sweep postponed: the projection is still catching up")
            except Exception:  # logged; the next sweep tries again
                log.exception("retention sweep failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._settings.retention_check_seconds)

    async def caught_up(self, patience: float = 60.0) -> bool:
        """Whether the read model holds every event recorded so far: a view still being
        rebuilt could say an instance is older than it is."""
        return await self._projector.wait_for(await self._events.last_sequence(), patience)

    async def sweep(self, now: datetime) -> int:
        """Remove everything due at `now`; returns how many removals were recorded."""
        destinations = {
            core.name: [str(d) for d in core.destinations] for core in self._settings.cores
        }
        removed = 0
        offset = 0
        while True:
            views = self._model.holding_objects(PAGE, offset)
            for view in views:
                due = removals_due(
                    view,
                    now,
                    self.retention,
                    destinations,
                    self._settings.output_cleaning,
                    self.failed_delay,
                )
                for removal in due:
                    await self._remove(view, removal, now)
                    removed += 1
            if len(views) < PAGE:
                return removed
            offset += PAGE

    async def _remove(self, view: StudyView, removal: Removal, now: datetime) -> None:
        uid = view.study_uid
        if removal.kind == "instances":
            store = self._instances
            # Every version of every instance: each is stored under its own name.
            names = [
                r.event.object_name
                for r in await self._events.history(uid)
                if isinstance(r.event, ev.InstanceReceived)
            ]
        else:
            store = self._results
            names = [
                result.object_name
                for r in await self._events.history(uid)
                if isinstance(r.event, ev.ResultReady)
                and (r.event.core, r.event.attempt) == (removal.core, removal.attempt)
                for result in await self._events.result_objects(r.event)
            ]
        count = 0
        for name in names:
            count += await store.delete(name)
        await self._events.publish(
            ev.ObjectsExpired(
                study_uid=uid,
                kind=removal.kind,
                object_count=count,
                reason=removal.reason,
                core=removal.core,
                attempt=removal.attempt,
                occurred_at=now,
            )
        )


def read_model_path(settings: Settings) -> Path:
    return settings.data_dir / "retention" / "read-model.sqlite"


async def run(rt: Runtime, started: Started) -> None:
    model = ReadModel(read_model_path(rt.settings))
    projector = Projector(rt.events, model)
    sweeper = RetentionSweeper(rt.settings, projector, rt.events, rt.instances, rt.results)
    heartbeat = Heartbeat(liveness_file(rt.settings.data_dir, rt.component), rt.nc)

    async def beat() -> None:  # for `pacsor health retention`: following the stream
        while not rt.stop.is_set():
            if projector.connected:
                heartbeat.alive()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(rt.stop.wait(), WRITE_EVERY)

    started({})
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(projector.run(rt.stop))
            group.create_task(sweeper.run(rt.stop))
            group.create_task(beat())
    finally:
        model.close()


COMPONENT = Component(
    "retention",
    "the studies' views -> remove objects past RETENTION_HOURS or OUTPUT_CLEANING -> "
    "ObjectsExpired",
    run,
    publishes=Publishes(events=(ev.ObjectsExpired,), buckets=(INSTANCES_BUCKET, RESULTS_BUCKET)),
)
