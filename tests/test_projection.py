"""The projection follows the real stream: a restart resumes, a deleted file is rebuilt."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from nats.aio.client import Client

from pacsor.admin.projector import Projector
from pacsor.admin.read_model import ReadModel, StudyFilter
from pacsor.devtools.sample_events import lifecycle
from pacsor.domain import events as ev
from pacsor.domain.study_view import StudyView, fold
from pacsor.jetstream.eventlog import EventLog

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


@contextlib.asynccontextmanager
async def projecting(nc: Client, path: Path) -> AsyncIterator[Projector]:
    projector = Projector(EventLog(nc.jetstream()), ReadModel(path))
    stop = asyncio.Event()
    task = asyncio.create_task(projector.run(stop))
    try:
        yield projector
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        projector.model.close()


async def publish(nc: Client, studies: range) -> int:
    log = EventLog(nc.jetstream())
    sequence = 0
    for n in studies:
        for event in lifecycle(f"1.2.3.{n}", T0 + timedelta(minutes=n), accession=f"A{n}"):
            sequence = await log.publish(event)
    return sequence


def everything(model: ReadModel) -> dict[str, StudyView]:
    views, _ = model.query(StudyFilter(limit=1000))
    return {v.study_uid: v for v in views}


async def test_restart_resumes_and_a_deleted_file_rebuilds_the_same_state(
    nc: Client, tmp_path: Path
) -> None:
    path = tmp_path / "admin" / "read-model.sqlite"
    first = await publish(nc, range(0, 15))
    async with projecting(nc, path) as projector:
        assert await projector.wait_for(first, 30)
        assert projector.started_from == 1
        assert projector.model.query(StudyFilter())[1] == 15

    last = await publish(nc, range(15, 25))
    async with projecting(nc, path) as projector:
        assert await projector.wait_for(last, 30)
        assert projector.started_from == first + 1  # resumed after the committed sequence
        resumed = everything(projector.model)

    path.unlink()
    async with projecting(nc, path) as projector:
        assert await projector.wait_for(last, 30)
        assert projector.started_from == 1
        rebuilt = everything(projector.model)

    recorded = await EventLog(nc.jetstream()).read()
    expected = fold([(r.sequence, r.event) for r in recorded])
    assert len(rebuilt) == 25
    assert rebuilt == resumed == expected


async def test_the_projection_follows_live_events(nc: Client, tmp_path: Path) -> None:
    async with projecting(nc, tmp_path / "rm.sqlite") as projector:
        events = lifecycle("1.2.3.77", T0)
        log = EventLog(nc.jetstream())
        sequence = 0
        for event in events[:3]:
            sequence = await log.publish(event)
        assert await projector.wait_for(sequence, 30)
        view = projector.model.get("1.2.3.77")
        assert view is not None and view.state == "receiving"
        for event in events[3:]:
            sequence = await log.publish(event)
        assert await projector.wait_for(sequence, 30)
        view = projector.model.get("1.2.3.77")
        assert view is not None and view.state == "dispatched"
        assert not await projector.wait_for(sequence + 1, 0.2)
        assert isinstance(events[0], ev.InstanceReceived)
