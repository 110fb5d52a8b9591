"""Pipeline benchmark: N studies of 4 instances through `pacsor up`, completion to dispatch.

Runs `pacsor up` (embedded nats-server), the API simulator answering `done` at once
(`pacsor simulator`, SIMULATOR_RUNNING_POLLS=0) and a bare pynetdicom PACS, each a process of
its own. Sends N studies of 4 small images over 4 associations, waits for every study's
Dispatched, and reports studies per minute, the median and 95th percentile from a study's
quiet period ending (its last InstanceReceived + STUDY_QUIET_SECONDS) to its Dispatched, and
the largest backlog (pending + unacknowledged, from JetStream consumer info) of each handler,
and each step's median time. Then again with a second process running the component whose
step took longest at the median.

    .venv/bin/python bench/pipeline.py [--studies 200] [--quick] [--gap 3] [--no-replica]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

import nats  # noqa: E402

from pacsor.devtools.sample_study import make_study  # noqa: E402
from pacsor.dicom.storage_scu import echo, send_files  # noqa: E402
from pacsor.domain import events as ev  # noqa: E402
from pacsor.jetstream.broker import NatsAccess, embedded_access  # noqa: E402
from pacsor.jetstream.quiet_timers import decode_elapsed  # noqa: E402
from pacsor.jetstream.subjects import (  # noqa: E402
    ALL_EVENTS,
    EVENTS_STREAM,
    QUIET_ELAPSED_FILTER,
)

QUIET = 1.0
# Which component runs each durable consumer (by the start of its name).
COMPONENT_OF = {
    "quiet-timer": "quiet-timer",
    "study-completion": "completion",
    "upload": "uploader",
    "poll": "poller",
    "dispatch": "dispatcher",
    "replay": "dispatcher",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: object, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise TimeoutError(what)


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def component_of(durable: str) -> str:
    for prefix, component in COMPONENT_OF.items():
        if durable.startswith(prefix):
            return component
    return durable


# The component whose work each step of the breakdown is (the timer fires once it is armed).
STEP_COMPONENT = {
    "timer fires": "quiet-timer",
    "to StudyComplete": "completion",
    "upload": "uploader",
    "result": "poller",
    "dispatch": "dispatcher",
}


async def watch(
    access: NatsAccess, studies: set[str], stop: asyncio.Event
) -> tuple[dict, dict, dict]:
    """Each study's quiet end and Dispatched time, each consumer's largest backlog, and each
    step's median time."""
    nc = await nats.connect(access.servers, user=access.user, password=access.password)
    js = nc.jetstream()
    last_received: dict[str, float] = {}
    # When the server fired each study's quiet timer (the stored message's time), every time.
    fired: dict[str, list[float]] = {}
    dispatched: dict[str, float] = {}
    backlog: dict[str, int] = {}
    steps: dict[str, dict[str, float]] = {}

    async def on_event(msg: nats.aio.msg.Msg) -> None:
        event = ev.decode(msg.data)
        uid = event.study_uid
        if uid not in studies:
            return
        at = event.occurred_at.timestamp()
        if isinstance(event, ev.InstanceReceived):
            last_received[uid] = max(last_received.get(uid, 0.0), at)
        elif isinstance(event, ev.StudyComplete | ev.Uploaded | ev.ResultReady):
            steps.setdefault(uid, {})[type(event).__name__] = at
        elif isinstance(event, ev.Dispatched) and uid not in dispatched:
            dispatched[uid] = at
            if len(dispatched) == len(studies):
                stop.set()

    async def on_elapsed(msg: nats.aio.msg.Msg) -> None:
        uid = decode_elapsed(msg.data, msg.subject).study_uid
        if uid in studies:
            fired.setdefault(uid, []).append(msg.metadata.timestamp.timestamp())

    sub = await js.subscribe(ALL_EVENTS, cb=on_event, ordered_consumer=True)
    timers = await js.subscribe(QUIET_ELAPSED_FILTER, cb=on_elapsed, ordered_consumer=True)
    try:
        while not stop.is_set():
            for info in await js.consumers_info(EVENTS_STREAM):
                if not info.config.durable_name:
                    continue  # a reader's ephemeral consumer, not a handler
                name = info.name
                waiting = (info.num_pending or 0) + (info.num_ack_pending or 0)
                backlog[name] = max(backlog.get(name, 0), waiting)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
    finally:
        await sub.unsubscribe()
        await timers.unsubscribe()
        await nc.close()
    latency = {uid: dispatched[uid] - (last_received[uid] + QUIET) for uid in dispatched}
    # Where the time goes, at the median: each step from the one before it.
    marks = ["StudyComplete", "Uploaded", "ResultReady"]
    parts: list[list[float]] = []
    for uid in dispatched:
        complete = steps[uid]["StudyComplete"]
        # The firing that completed the study: the last one before its StudyComplete.
        woke = max((t for t in fired.get(uid, ()) if t <= complete), default=complete)
        times = [
            last_received[uid] + QUIET,
            woke,
            *(steps[uid][m] for m in marks),
            dispatched[uid],
        ]
        parts.append([b - a for a, b in itertools.pairwise(times)])
    names = list(STEP_COMPONENT)
    medians = {n: statistics.median(p[i] for p in parts) for i, n in enumerate(names)}
    print("    median per step: " + ", ".join(f"{n} {t:.2f} s" for n, t in medians.items()))
    slowest = max(parts, key=sum)
    print(
        f"    slowest study {sum(slowest):.2f} s: "
        + ", ".join(f"{n} {t:.2f} s" for n, t in zip(names, slowest, strict=True))
    )
    return latency, backlog, {STEP_COMPONENT[n]: t for n, t in medians.items()}


def one_run(
    studies: int, workdir: Path, replica: str | None, gap: float, logs: Path | None
) -> tuple[float, list[float], dict]:
    nats_port, dicom_port, api_port, pacs_port = (free_port() for _ in range(4))
    data = workdir / f"run-{replica or 'one'}"
    data.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": str(PROJECT),
        "LOG_LEVEL": "INFO" if logs else "WARNING",
        "LOG_FORMAT": "json",
        "PACSOR_DATA_DIR": str(data / "pacsor"),
        "EMBEDDED_NATS_PORT": str(nats_port),
        "PORT": str(dicom_port),
        "API_URL": f"http://127.0.0.1:{api_port}",
        "TOKEN": "bench",
        "STUDY_QUIET_SECONDS": str(QUIET),
        "PACS_IP": "127.0.0.1",
        "PACS_PORT": str(pacs_port),
        "PACS_AET": "MILVUE",
        "ADMIN_PORT": str(free_port()),
        "SIMULATOR_RUNNING_POLLS": "0",
    }
    procs = []

    def spawn(args: list[str], **extra: str) -> subprocess.Popen[bytes]:
        log: int | IO[bytes] = subprocess.DEVNULL
        if logs is not None:
            logs.mkdir(parents=True, exist_ok=True)
            name = args[3] if args[1:3] == ["-m", "pacsor"] else Path(args[1]).stem
            log = (logs / f"{data.name}-{name}.log").open("ab")
        proc = subprocess.Popen(args, env={**env, **extra}, cwd=data, stdout=log, stderr=log)
        procs.append(proc)
        return proc

    pacsor = [sys.executable, "-m", "pacsor"]
    try:
        spawn(
            [
                sys.executable,
                str(PROJECT / "bench" / "bare_scp.py"),
                str(pacs_port),
                str(data / "pacs"),
            ]
        )
        spawn([*pacsor, "simulator", "--host", "127.0.0.1", "--port", str(api_port)])
        spawn([*pacsor, "up"])
        wait_until(
            lambda: echo("127.0.0.1", dicom_port, "MILVUE", "BENCH", 2.0) is None, "pacsor's SCP"
        )
        wait_until(lambda: port_open(api_port), "the simulator")
        # The embedded server's pipeline credentials, which it wrote on its first start.
        access = embedded_access(data / "pacsor" / "nats", nats_port)
        if replica is not None:
            spawn(
                [*pacsor, "run", replica],
                NATS_URL=access.servers,
                NATS_USER=access.user,
                NATS_PASSWORD=access.password,
            )
            time.sleep(3)  # its consumers bind
        folders = []
        uids: set[str] = set()
        for n in range(studies):
            folder = data / "send" / f"{n:04d}"
            folder.mkdir(parents=True)
            study = make_study(4, rows=64, columns=64)
            uids.add(str(study[0].StudyInstanceUID))
            for i, ds in enumerate(study):
                ds.save_as(folder / f"{i}.dcm", enforce_file_format=True)
            folders.append(sorted(folder.iterdir()))

        async def measure() -> tuple[float, dict, dict, dict]:
            stop = asyncio.Event()
            watcher = asyncio.create_task(watch(access, uids, stop))
            await asyncio.sleep(1.0)
            started = time.monotonic()

            def send(share: list[list[Path]]) -> None:
                for files in share:
                    statuses = send_files("127.0.0.1", dicom_port, "MILVUE", files)
                    assert [s for _, s in statuses] == [0] * len(files), statuses

            if gap:
                # One study at a time, `gap` apart: each step's own time, without a backlog.
                for files in folders:
                    await asyncio.gather(asyncio.to_thread(send, [files]), asyncio.sleep(gap))
            else:
                await asyncio.gather(*(asyncio.to_thread(send, folders[i::4]) for i in range(4)))
            print(f"    sent in {time.monotonic() - started:.1f} s")
            stopped = asyncio.create_task(stop.wait())
            # The watcher ends early only when it failed: its error, not a timeout.
            await asyncio.wait(
                {watcher, stopped}, timeout=120 + studies, return_when="FIRST_COMPLETED"
            )
            if not stop.is_set():
                stopped.cancel()
                if watcher.done():
                    await watcher  # raises what stopped it
                watcher.cancel()
                raise TimeoutError(f"{studies} studies not all dispatched")
            elapsed = time.monotonic() - started
            latency, backlog, waited = await watcher
            return elapsed, latency, backlog, waited

        elapsed, latency, backlog, waited = asyncio.run(measure())
        return elapsed, sorted(latency.values()), backlog, waited
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(timeout=30)


def report(
    label: str, studies: int, elapsed: float, latency: list[float], backlog: dict, waited: dict
) -> str:
    """Print the run's figures; return the component whose step took longest at the median
    (a backlog in messages is no measure across steps: the quiet timer has one per instance)."""
    p95 = latency[min(len(latency) - 1, int(0.95 * len(latency)))]
    print(
        f"{label}: {studies} studies in {elapsed:.1f} s, {studies * 60 / elapsed:.0f} studies/min; "
        f"quiet end -> Dispatched median {statistics.median(latency):.2f} s, p95 {p95:.2f} s"
    )
    by_component: dict[str, int] = {}
    for durable, waiting in backlog.items():
        component = component_of(durable)
        by_component[component] = max(by_component.get(component, 0), waiting)
    for component, waiting in sorted(by_component.items(), key=lambda kv: -kv[1]):
        print(f"    largest backlog {component:<12} {waiting:5d}")
    return max(waited, key=lambda c: waited[c])


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--studies", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="40 studies")
    parser.add_argument(
        "--gap", type=float, default=0.0, help="send one study every GAP seconds, not all at once"
    )
    parser.add_argument("--no-replica", action="store_true", help="only the run of pacsor up")
    parser.add_argument("--logs", type=Path, help="keep each process's log lines in this folder")
    args = parser.parse_args()
    studies = 40 if args.quick else args.studies
    gap, logs = args.gap, args.logs and args.logs.resolve()
    with tempfile.TemporaryDirectory(prefix="pacsor-pipeline-") as tmp:
        workdir = Path(tmp)
        sent = f"one every {gap:g} s" if gap else "over 4 associations at once"
        print(
            f"{studies} studies of 4 instances, {sent}, quiet period {QUIET:g} s, "
            f"{os.cpu_count()} cores"
        )
        elapsed, latency, backlog, waited = one_run(studies, workdir, None, gap, logs)
        busiest = report("pacsor up", studies, elapsed, latency, backlog, waited)
        if args.no_replica:
            return
        elapsed, latency, backlog, waited = one_run(studies, workdir, busiest, gap, logs)
        report(f"pacsor up + a second {busiest}", studies, elapsed, latency, backlog, waited)


if __name__ == "__main__":
    main()
