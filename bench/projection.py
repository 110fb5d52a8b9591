"""Projection benchmark: rebuilding the admin's read model from a million recorded events.

Generates the encoded events of synthetic studies (5 instances, StudyComplete, Uploaded,
a page of its results, ResultReady, 2 Dispatched:
11 events a study), as the admin reads them from the stream, then
in one run, alternating, 3 rounds, median:
  - baseline: decoding every event (msgspec), nothing else;
  - pacsor: decoding, folding and writing the SQLite read model in batches of 1,000 events,
    each batch one transaction with its stream sequence, into a new file (a rebuild).

    .venv/bin/python bench/projection.py [--events 200000] [--rounds 3] [--stream]

With --stream, the events are first published to a real nats-server (file storage), and each
round reads them back from the PACSOR stream: the baseline through an ordered consumer that
only decodes, pacsor through the admin's own Projector, with its metrics, into a new read
model.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from pacsor.admin.metrics import AdminMetrics  # noqa: E402
from pacsor.admin.projector import BATCH_SIZE, Projector  # noqa: E402
from pacsor.admin.read_model import ReadModel  # noqa: E402
from pacsor.components import NATS_ROLES  # noqa: E402
from pacsor.devtools.sample_events import lifecycle  # noqa: E402
from pacsor.domain import events as ev  # noqa: E402
from pacsor.jetstream.broker import EmbeddedNats, apply_streams, connect  # noqa: E402
from pacsor.jetstream.eventlog import EventLog  # noqa: E402
from pacsor.jetstream.subjects import (  # noqa: E402
    ALL_EVENTS,
    EVENTS_STREAM,
    MSG_ID_HEADER,
    event_subject,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
DESTINATIONS = ("PACS@10.0.0.1:104", "ARCHIVE@10.0.0.2:104")


def history(study: int) -> list[ev.Event]:
    uid = f"1.2.826.0.1.3680043.8.498.{study}"
    return lifecycle(uid, T0 + timedelta(seconds=study), 5, DESTINATIONS, accession=f"A{study:07d}")


EVENTS_PER_STUDY = len(history(0))


def recorded_events(count: int) -> list[tuple[str, bytes, str]]:
    """(subject, encoded event, idempotency key) triples, in stream order."""
    encoded: list[tuple[str, bytes, str]] = []
    study = 0
    while len(encoded) < count:
        encoded.extend(
            (event_subject(e), ev.encode(e), e.idempotency_key()) for e in history(study)
        )
        study += 1
    return encoded[:count]


def decode_only(encoded: list[bytes]) -> float:
    start = time.perf_counter()
    for data in encoded:
        ev.decode(data)
    return time.perf_counter() - start


def rebuild(encoded: list[bytes], folder: Path) -> float:
    path = folder / "read-model.sqlite"
    for leftover in folder.glob("read-model.sqlite*"):
        leftover.unlink()
    model = ReadModel(path)
    metrics = AdminMetrics(model)
    start = time.perf_counter()
    for first in range(0, len(encoded), BATCH_SIZE):
        batch = [
            (first + n + 1, ev.decode(data))
            for n, data in enumerate(encoded[first : first + BATCH_SIZE])
        ]
        model.apply(batch, batch[-1][0], metrics.step_took)
        metrics.events_applied(batch)
    elapsed = time.perf_counter() - start
    studies = model._db.execute("SELECT count(*) FROM studies").fetchone()[0]
    model.close()
    assert studies == -(-len(encoded) // EVENTS_PER_STUDY), studies
    return elapsed


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def from_stream(
    recorded: list[tuple[str, bytes, str]], rounds: int, folder: Path
) -> tuple[list[float], list[float]]:
    server = EmbeddedNats(folder / "nats", free_port(), NATS_ROLES)
    server.start()
    try:
        nc = await connect(server.access, "projection bench")
    except BaseException:
        server.stop()  # a refused connection must not leave the server running
        raise
    try:
        await apply_streams(nc)
        js = nc.jetstream(timeout=30)
        started = time.perf_counter()
        for first in range(0, len(recorded), 5000):
            for subject, data, key in recorded[first : first + 5000]:
                # As EventLog publishes: the stored messages carry the same headers.
                await js.publish_async(
                    subject, data, stream=EVENTS_STREAM, headers={MSG_ID_HEADER: key}
                )
            await js.publish_async_completed()
        last = (await js.stream_info(EVENTS_STREAM)).state.last_seq
        print(f"published in {time.perf_counter() - started:.0f} s", flush=True)
        baseline: list[float] = []
        pacsor: list[float] = []
        for _ in range(rounds):
            started = time.perf_counter()
            sub = await js.subscribe(ALL_EVENTS, stream=EVENTS_STREAM, ordered_consumer=True)
            for _ in range(last):
                ev.decode((await sub.next_msg(timeout=30)).data)
            await sub.unsubscribe()
            baseline.append(time.perf_counter() - started)

            for leftover in folder.glob("read-model.sqlite*"):
                leftover.unlink()
            model = ReadModel(folder / "read-model.sqlite")
            projector = Projector(EventLog(js), model, AdminMetrics(model))
            stop = asyncio.Event()
            started = time.perf_counter()
            task = asyncio.create_task(projector.run(stop))
            assert await projector.wait_for(last, 600)
            pacsor.append(time.perf_counter() - started)
            stop.set()
            await task
            model.close()
        return baseline, pacsor
    finally:
        await nc.close()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000, help="1000000 for the 60 s aim")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stream", action="store_true", help="read from a real nats-server")
    args = parser.parse_args()

    started = time.perf_counter()
    recorded = recorded_events(args.events)
    encoded = [data for _, data, _ in recorded]
    size = sum(map(len, encoded))
    studies = -(-len(encoded) // EVENTS_PER_STUDY)
    print(
        f"{len(encoded):,} events ({size / 1e6:.0f} MB JSON, {studies:,} studies), "
        f"generated in {time.perf_counter() - started:.0f} s; "
        f"{args.rounds} rounds (median), {os.cpu_count()} cores",
        flush=True,
    )
    baseline: list[float] = []
    pacsor: list[float] = []
    with tempfile.TemporaryDirectory(prefix="pacsor-bench-") as folder:
        if args.stream:
            baseline, pacsor = asyncio.run(from_stream(recorded, args.rounds, Path(folder)))
            labels = ("stream, decode only", "stream, Projector")
        else:
            for _ in range(args.rounds):
                baseline.append(decode_only(encoded))
                pacsor.append(rebuild(encoded, Path(folder)))
            labels = ("decode only (baseline)", "decode + fold + SQLite")
    for label, times in zip(labels, (baseline, pacsor), strict=True):
        median = statistics.median(times)
        print(f"{label:<26} {len(recorded) / median:>10,.0f} events/s   ({median:.1f} s)")
    ratio = statistics.median(baseline) / statistics.median(pacsor)
    print(f"ratio rebuild / decode: {ratio:.2f}x")


if __name__ == "__main__":
    main()
