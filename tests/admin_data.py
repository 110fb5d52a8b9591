"""Admin settings and a fixed set of studies, shared by the admin's tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from nats.aio.client import Client

from pacsor.config import Settings
from pacsor.devtools.sample_events import lifecycle, received
from pacsor.domain import events as ev
from pacsor.jetstream.eventlog import EventLog
from tests.harness import site_settings
from tests.nats_server import free_port

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
PACS = "PACS@10.0.0.1:104"
ARCHIVE = "ARCHIVE@10.0.0.2:104"


def admin_settings(nats_url: str, tmp_path: Path, **extra: str) -> Settings:
    return site_settings(
        nats_url,
        ADMIN_PORT=str(free_port()),
        PACSOR_DATA_DIR=str(tmp_path / "data"),
        PACS_IP="10.0.0.1",
        PACS_PORT="104",
        # The fixture studies are months old: no retention sweep may add events here.
        RETENTION_HOURS="100000",
        **extra,
    )


async def publish(nc: Client, events: list[ev.Event]) -> int:
    log = EventLog(nc.jetstream())
    sequence = 0
    for event in events:
        sequence = await log.publish(event)
    return sequence


async def fixture_studies(nc: Client) -> int:
    """Twelve studies through; one failed at the archive; one still receiving."""
    events: list[ev.Event] = []
    for n in range(12):
        events += lifecycle(
            f"1.2.3.{n}",
            T0 + timedelta(minutes=n),
            destinations=(PACS, ARCHIVE) if n != 4 else (PACS,),
            accession=f"ACC{n:03d}",
        )
    events.append(
        ev.DispatchFailed(
            study_uid="1.2.3.4",
            core="default",
            attempt=1,
            destination=ARCHIVE,
            reason="association rejected",
            tries=12,
            occurred_at=T0 + timedelta(hours=1),
        )
    )
    events.append(received("1.2.3.99", 0, T0 + timedelta(hours=2), "ZZ-1"))
    return await publish(nc, events)
