"""Upload benchmark: a study in signed-URL mode, its PUTs one at a time and UPLOAD_CONCURRENCY
at a time, against the API simulator answering each request after a cloud-like latency.

Each instance of a signed-URL upload is one PUT, one round trip to the cloud: one at a time, a
study takes the sum of its round trips. This records a study of tiny instances straight into
JetStream (as the SCP would), publishes its StudyComplete and times the uploader (`pacsor`'s
own, with a real nats-server and the simulator in processes of their own) until Uploaded, once
with UPLOAD_CONCURRENCY=1 (the baseline) and once with the given concurrency.

    .venv/bin/python bench/upload.py [--instances 2000] [--latency 0.02] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nats

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from pacsor.config import load_settings  # noqa: E402
from pacsor.devtools.bulk_study import record_as_the_scp, tiny_study  # noqa: E402
from pacsor.domain import events as ev  # noqa: E402
from pacsor.jetstream.blobs import BlobStore  # noqa: E402
from pacsor.jetstream.broker import nats_server_binary  # noqa: E402
from pacsor.jetstream.eventlog import EventLog  # noqa: E402
from pacsor.jetstream.subjects import INSTANCES_BUCKET, study_core_events  # noqa: E402
from pacsor.process.gateway import run_gateway  # noqa: E402

TOKEN = "bench-token"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} did not open")


async def upload_once(
    nats_url: str, api_url: str, workdir: Path, instances: int, concurrency: int
) -> float:
    """Seconds from StudyComplete to Uploaded for a new study of `instances`."""
    settings = load_settings(
        {
            "NATS_URL": nats_url,
            "API_URL": api_url,
            "TOKEN": TOKEN,
            "UPLOAD_CONCURRENCY": str(concurrency),
            "PACSOR_DATA_DIR": str(workdir),
            "LOG_LEVEL": "WARNING",
        },
        dotenv=None,
    )
    core = settings.cores[0].name
    nc = await nats.connect(nats_url)
    stop = asyncio.Event()
    ready = asyncio.get_running_loop().create_future()
    gateway = asyncio.create_task(run_gateway(settings, ("uploader",), stop, ready.set_result))
    try:
        await asyncio.wait_for(ready, 30)
        study, images = tiny_study(instances)
        js = nc.jetstream()
        store = BlobStore(nc, js, INSTANCES_BUCKET)
        last = await record_as_the_scp(store, EventLog(js), study, images)
        done = asyncio.Event()

        async def uploaded(_msg: object) -> None:
            done.set()

        sub = await nc.subscribe(study_core_events(study, ev.Uploaded, core), cb=uploaded)
        started = time.monotonic()
        await EventLog(js).publish(
            ev.StudyComplete(
                study_uid=study,
                attempt=1,
                instance_count=instances,
                through_sequence=last,
                reason="benchmark",
            )
        )
        await asyncio.wait_for(done.wait(), 600)
        elapsed = time.monotonic() - started
        await sub.unsubscribe()
        return elapsed
    finally:
        stop.set()
        await asyncio.wait_for(gateway, 30)
        await nc.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=2000)
    parser.add_argument("--latency", type=float, default=0.02, help="seconds per API request")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="pacsor-bench-upload-"))
    nats_port, api_port = free_port(), free_port()
    nats_server = subprocess.Popen(
        [nats_server_binary(), "-js", "--store_dir", str(workdir / "nats"), "-p", str(nats_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {**os.environ, "TOKEN": TOKEN, "SIMULATOR_LATENCY_SECONDS": str(args.latency)}
    simulator = subprocess.Popen(
        [sys.executable, "-m", "pacsor.devtools.simulator", "--port", str(api_port)],
        env=env,
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(nats_port, nats_server)
        wait_for_port(api_port, simulator)
        nats_url, api_url = f"nats://127.0.0.1:{nats_port}", f"http://127.0.0.1:{api_port}"
        print(
            f"signed-URL upload of {args.instances} instances, "
            f"{args.latency * 1000:g} ms per API request"
        )
        baseline = await upload_once(nats_url, api_url, workdir / "1", args.instances, 1)
        print(f"  one PUT at a time:   {baseline:6.1f} s  {args.instances / baseline:7.1f} inst/s")
        timed = await upload_once(
            nats_url, api_url, workdir / "n", args.instances, args.concurrency
        )
        print(
            f"  {args.concurrency:2d} PUTs at a time:  {timed:6.1f} s  "
            f"{args.instances / timed:7.1f} inst/s  ({baseline / timed:.1f}x)"
        )
        print(f"  20,000 instances would take ~{20_000 / (args.instances / timed) / 60:.1f} min")
    finally:
        for process in (simulator, nats_server):
            process.terminate()
            process.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
