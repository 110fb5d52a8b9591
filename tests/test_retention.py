"""Retention: what is due (pure), removals against real object stores, recorded as events."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from nats.aio.client import Client
from pacsor.consumers.retention_sweeper import RetentionSweeper

from pacsor.admin.operations import Refused, request_relaunch
from pacsor.admin.projector import Projector
from pacsor.admin.read_model import ReadModel
from pacsor.config import Settings, load_settings
from pacsor.devtools.sample_events import lifecycle
from pacsor.domain import events as ev
from pacsor.domain.retention import Removal, removals_due
from pacsor.domain.study_view import fold
from pacsor.jetstream.blobs import BlobStore
from pacsor.jetstream.broker import apply_streams
from pacsor.jetstream.eventlog import EventLog
from pacsor.jetstream.liveness import liveness_file, probe
from pacsor.jetstream.subjects import (
    EVENTS_STREAM,
    INSTANCES_BUCKET,
    RESULTS_BUCKET,
    retention_max_ages,
)
from tests.harness import of_type, running_gateway, wait_for_event
from tests.nats_server import NatsServer

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
WEEK = timedelta(hours=168)
PACS = "PACS@10.0.0.1:104"
ARCHIVE = "ARCHIVE@10.0.0.2:104"
STUDY = "1.2.3.4"
TO_PACS = {"default": [PACS]}
TO_BOTH = {"default": [PACS, ARCHIVE]}


def view_of(events: list[ev.Event]):  # type: ignore[no-untyped-def]
    return fold([(n + 1, e) for n, e in enumerate(events)])[STUDY]


def test_instances_and_results_are_due_a_retention_after_they_were_made() -> None:
    view = view_of(lifecycle(STUDY, T0, destinations=(PACS,)))
    last_instance = T0 + timedelta(seconds=2)
    results_at = view.results_made[0].at
    assert (
        removals_due(view, last_instance + WEEK - timedelta(seconds=1), WEEK, TO_PACS, False) == []
    )
    assert removals_due(view, last_instance + WEEK, WEEK, TO_PACS, False) == [
        Removal("instances", "retention: last instance received over 168 h ago")
    ]
    assert [r.kind for r in removals_due(view, results_at + WEEK, WEEK, TO_PACS, False)] == [
        "instances",
        "results",
    ]


def test_output_cleaning_waits_for_every_destination() -> None:
    soon = T0 + timedelta(hours=1)
    partly = view_of(lifecycle(STUDY, T0, destinations=(PACS,)))
    assert removals_due(partly, soon, WEEK, TO_BOTH, True) == []
    assert removals_due(partly, soon, WEEK, TO_BOTH, False) == []
    everywhere = view_of(lifecycle(STUDY, T0, destinations=(PACS, ARCHIVE)))
    assert removals_due(everywhere, soon, WEEK, TO_BOTH, True) == [
        Removal("results", "output cleaning: delivered to every destination", "default", 1)
    ]
    # Another core's destinations say nothing about this core's results.
    assert removals_due(everywhere, soon, WEEK, {"other": [PACS]}, True) == []


def test_a_removal_recorded_is_not_due_again() -> None:
    events = lifecycle(STUDY, T0, destinations=(PACS,))
    late = T0 + 2 * WEEK
    events += [
        ev.ObjectsExpired(study_uid=STUDY, kind="instances", object_count=3, reason="r"),
        ev.ObjectsExpired(
            study_uid=STUDY,
            kind="results",
            object_count=6,
            reason="r",
            core="default",
            attempt=1,
        ),
    ]
    view = view_of(events)
    assert removals_due(view, late, WEEK, TO_PACS, True) == []
    assert not view.holds_objects()


def settings(**extra: str) -> Settings:
    return load_settings({"PACS_IP": "10.0.0.1", "PACS_PORT": "104", **extra}, dotenv=None)


async def test_sweep_removes_objects_records_why_and_relaunch_then_says_409(
    nc: Client, tmp_path: Path
) -> None:
    js = nc.jetstream()
    instances = BlobStore(nc, js, INSTANCES_BUCKET)
    results = BlobStore(nc, js, RESULTS_BUCKET)
    events = EventLog(js)
    history = lifecycle(STUDY, T0, destinations=(PACS,))
    for event in history:
        if isinstance(event, ev.InstanceReceived):
            await instances.put(event.object_name, b"instance " + event.sop_instance_uid.encode())
        if isinstance(event, ev.ResultObjectsListed):
            for result in event.results:
                await results.put(result.object_name, b"result " + result.sop_instance_uid.encode())
        await events.publish(event)
    keep = lifecycle("1.2.3.5", datetime.now(UTC), destinations=(PACS,))
    for event in keep:
        if isinstance(event, ev.InstanceReceived):
            await instances.put(event.object_name, b"recent")
        await events.publish(event)

    site = settings(RETENTION_HOURS="168")
    projector = Projector(EventLog(js), ReadModel(tmp_path / "rm.sqlite"))
    stop = asyncio.Event()
    task = asyncio.create_task(projector.run(stop))
    try:
        sweeper = RetentionSweeper(site, projector, events, instances, results)
        assert await sweeper.caught_up(30)
        assert await request_relaunch(events, instances, site, STUDY, (), "test")
        assert await sweeper.sweep(datetime.now(UTC)) == 2  # STUDY: instances and results

        for event in history:
            if isinstance(event, ev.InstanceReceived):
                assert await instances.info(event.object_name) is None
            if isinstance(event, ev.ResultObjectsListed):
                for result in event.results:
                    assert await results.info(result.object_name) is None
        assert await instances.info(keep[0].object_name) is not None  # type: ignore[attr-defined]

        recorded = [r.event for r in await events.history(STUDY)]
        expired = [e for e in recorded if isinstance(e, ev.ObjectsExpired)]
        assert [(e.kind, e.object_count) for e in expired] == [("instances", 3), ("results", 6)]
        assert expired[0].reason.startswith("retention")

        with pytest.raises(Refused) as refused:
            await request_relaunch(events, instances, site, STUDY, (), "test")
        assert refused.value.status == 409 and "retention" in refused.value.message

        # Once the removals are projected, nothing more is due.
        assert await sweeper.caught_up(30)
        assert await sweeper.sweep(datetime.now(UTC)) == 0
        view = projector.model.get(STUDY)
        assert view is not None and not view.instances_stored and len(view.expired) == 2
    finally:
        stop.set()
        await task


async def delivered_just_now(nc: Client) -> tuple[BlobStore, EventLog]:
    """STUDY's history up to its delivery, made now, and its result objects, stored."""
    js = nc.jetstream()
    results = BlobStore(nc, js, RESULTS_BUCKET)
    events = EventLog(js)
    history = lifecycle(STUDY, datetime.now(UTC), destinations=(PACS,))
    for event in history:
        if isinstance(event, ev.ResultObjectsListed):
            for result in event.results:
                await results.put(result.object_name, b"result")
        await events.publish(event)
    return results, events


async def test_output_cleaning_removes_results_delivered_everywhere(
    nc: Client, tmp_path: Path
) -> None:
    js = nc.jetstream()
    results, events = await delivered_just_now(nc)
    site = settings(OUTPUT_CLEANING="true")
    projector = Projector(EventLog(js), ReadModel(tmp_path / "rm.sqlite"))
    stop = asyncio.Event()
    task = asyncio.create_task(projector.run(stop))
    try:
        sweeper = RetentionSweeper(
            site, projector, events, BlobStore(nc, js, INSTANCES_BUCKET), results
        )
        assert await sweeper.caught_up(30)
        assert await sweeper.sweep(datetime.now(UTC)) == 1
        (expired,) = [
            r.event for r in await events.history(STUDY) if isinstance(r.event, ev.ObjectsExpired)
        ]
        assert (expired.kind, expired.object_count, expired.core) == ("results", 6, "default")
        assert expired.reason.startswith("output cleaning")
    finally:
        stop.set()
        await task


async def test_streams_take_their_max_age_from_the_settings(nc: Client) -> None:
    await apply_streams(nc, 1, retention_max_ages(30, 48))
    js = nc.jetstream()
    assert (await js.stream_info(EVENTS_STREAM)).config.max_age == 30 * 86400
    assert (await js.stream_info("OBJ_PACSOR_INSTANCES")).config.max_age == 72 * 3600
    assert (await js.stream_info("OBJ_PACSOR_RESULTS")).config.max_age == 72 * 3600


DAY = timedelta(hours=24)


def _failed_at_the_pacs(at: datetime) -> list[ev.Event]:
    history = lifecycle(STUDY, at - timedelta(minutes=5), destinations=())
    return [
        *history,
        ev.DispatchFailed(
            study_uid=STUDY,
            core="default",
            attempt=1,
            destination=PACS,
            reason="the PACS refused every object",
            occurred_at=at,
        ),
    ]


def test_a_failed_study_is_cleaned_after_the_failure_delay() -> None:
    failed_at = T0 + timedelta(minutes=5)
    view = view_of(_failed_at_the_pacs(failed_at))
    assert view.state == "failed"
    reason = "output cleaning: the study failed over 24 h ago"
    assert (
        removals_due(view, failed_at + DAY - timedelta(seconds=1), WEEK, TO_PACS, True, DAY) == []
    )
    assert removals_due(view, failed_at + DAY, WEEK, TO_PACS, True, DAY) == [
        Removal("instances", reason),
        Removal("results", reason, "default", 1),
    ]
    # Without output cleaning, a failed study waits for the general retention.
    assert removals_due(view, failed_at + DAY, WEEK, TO_PACS, False, DAY) == []


def test_a_study_failed_at_upload_loses_its_instances_and_a_relaunch_saves_them() -> None:
    history = lifecycle(STUDY, T0, destinations=())[:4]  # 3 received, complete
    failed_at = T0 + timedelta(minutes=1)
    history.append(
        ev.UploadFailed(
            study_uid=STUDY,
            core="default",
            attempt=1,
            reason="HTTP 403: forbidden",
            http_status=403,
            occurred_at=failed_at,
        )
    )
    assert removals_due(view_of(history), failed_at + DAY, WEEK, TO_PACS, True, DAY) == [
        Removal("instances", "output cleaning: the study failed over 24 h ago")
    ]
    relaunched = ev.StudyComplete(
        study_uid=STUDY,
        attempt=2,
        instance_count=3,
        through_sequence=0,
        occurred_at=failed_at + timedelta(hours=1),
    )
    view = view_of([*history, relaunched])
    assert view.state != "failed"
    assert removals_due(view, failed_at + DAY, WEEK, TO_PACS, True, DAY) == []


async def test_the_sweep_cleans_a_failed_study_and_records_it(nc: Client, tmp_path: Path) -> None:
    js = nc.jetstream()
    instances = BlobStore(nc, js, INSTANCES_BUCKET)
    results = BlobStore(nc, js, RESULTS_BUCKET)
    events = EventLog(js)
    failed_at = datetime.now(UTC)
    for event in _failed_at_the_pacs(failed_at):
        if isinstance(event, ev.InstanceReceived):
            await instances.put(event.object_name, b"instance")
        if isinstance(event, ev.ResultObjectsListed):
            for result in event.results:
                await results.put(result.object_name, b"result")
        await events.publish(event)
    site = settings(OUTPUT_CLEANING="true", OUTPUT_CLEANING_FAILED_HOURS="2")
    projector = Projector(EventLog(js), ReadModel(tmp_path / "rm.sqlite"))
    stop = asyncio.Event()
    task = asyncio.create_task(projector.run(stop))
    try:
        sweeper = RetentionSweeper(site, projector, events, instances, results)
        assert await sweeper.caught_up(30)
        assert await sweeper.sweep(failed_at + timedelta(hours=1)) == 0  # within the delay
        assert await sweeper.sweep(failed_at + timedelta(hours=2)) == 2
        expired = [
            r.event for r in await events.history(STUDY) if isinstance(r.event, ev.ObjectsExpired)
        ]
        assert [(e.kind, e.object_count, e.reason) for e in expired] == [
            ("instances", 3, "output cleaning: the study failed over 2 h ago"),
            ("results", 6, "output cleaning: the study failed over 2 h ago"),
        ]
        for event in _failed_at_the_pacs(failed_at):
            if isinstance(event, ev.InstanceReceived):
                assert await instances.info(event.object_name) is None
            if isinstance(event, ev.ResultObjectsListed):
                for result in event.results:
                    assert await results.info(result.object_name) is None
    finally:
        stop.set()
        await task


async def test_the_retention_component_sweeps_on_its_own_and_says_it_is_alive(
    nc: Client, nats_server: NatsServer, tmp_path: Path
) -> None:
    """`pacsor run retention`: its own projection, its own sweeps, its own healthcheck; the
    admin no longer removes anything."""
    await delivered_just_now(nc)
    site = settings(
        NATS_URL=nats_server.url,
        OUTPUT_CLEANING="true",
        RETENTION_CHECK_SECONDS="0.2",
        PACSOR_DATA_DIR=str(tmp_path / "data"),
    )
    async with running_gateway(site, ("retention",)):
        expired = await wait_for_event(nc, STUDY, of_type(ev.ObjectsExpired), 30)
        assert isinstance(expired, ev.ObjectsExpired) and expired.kind == "results"
        assert await probe(nc, liveness_file(site.data_dir, "retention")) == []
    assert (tmp_path / "data" / "retention" / "read-model.sqlite").is_file()
