"""Ingest benchmark: pacsor's durable C-STORE against a bare SCP that writes files.

Sends the same DICOM files (a few hundred 0.5 MB images and a few 10 MB ones) over C-STORE
to a bare pynetdicom SCP writing to disk, and to pacsor's SCP (`pacsor run scp` with a real
nats-server, file storage), alternating, and prints instances/s, MB/s and the ratio.

    .venv/bin/python bench/ingest.py [--small 300] [--large 5] [--rounds 3] [--associations 4]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pydicom.uid import generate_uid

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from pacsor.devtools.sample_study import make_image  # noqa: E402
from pacsor.dicom.storage_scu import echo, send_files  # noqa: E402
from pacsor.jetstream.broker import nats_server_binary  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], dicom: bool) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited")
        if dicom:
            if echo("127.0.0.1", port, "MILVUE", "BENCH", 2.0) is None:
                return
        else:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} did not open")


def make_files(folder: Path, small: int, large: int) -> list[Path]:
    study = generate_uid()
    files = []
    # 512 x 512 x 16 bit = 0.5 MB; 2240 x 2240 x 16 bit = 10 MB.
    for n, (rows, count) in enumerate(((512, small), (2240, large))):
        for i in range(count):
            path = folder / f"{n}-{i:04d}.dcm"
            make_image(study, rows=rows, columns=rows, instance_number=i + 1, seed=i).save_as(
                path, enforce_file_format=True
            )
            files.append(path)
    return files


def send_all(port: int, files: list[Path], associations: int) -> float:
    """Send every file over `associations` parallel associations; returns seconds."""
    shares = [files[i::associations] for i in range(associations)]
    start = time.perf_counter()
    with ThreadPoolExecutor(associations) as pool:
        results = list(
            pool.map(lambda share: send_files("127.0.0.1", port, "MILVUE", share), shares)
        )
    elapsed = time.perf_counter() - start
    failed = [r for batch in results for r in batch if r[1] != 0]
    if failed or sum(len(b) for b in results) != len(files):
        raise RuntimeError(f"{len(failed)} C-STORE failures: {failed[:3]}")
    return elapsed


def run_bare(files: list[Path], workdir: Path, associations: int) -> float:
    port = free_port()
    out = workdir / "bare"
    proc = subprocess.Popen(
        [sys.executable, str(PROJECT / "bench" / "bare_scp.py"), str(port), str(out)]
    )
    try:
        wait_for_port(port, proc, dicom=True)
        return send_all(port, files, associations)
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(out, ignore_errors=True)


def run_pacsor(files: list[Path], workdir: Path, associations: int) -> float:
    nats_port, dicom_port = free_port(), free_port()
    store = workdir / "nats"
    nats = subprocess.Popen(
        [
            nats_server_binary(),
            "--jetstream",
            "--store_dir",
            str(store),
            "--addr",
            "127.0.0.1",
            "--port",
            str(nats_port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {
        **os.environ,
        "NATS_URL": f"nats://127.0.0.1:{nats_port}",
        "PORT": str(dicom_port),
        "LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(PROJECT),
    }
    scp = subprocess.Popen([sys.executable, "-m", "pacsor", "run", "scp"], env=env, cwd=workdir)
    try:
        wait_for_port(nats_port, nats, dicom=False)
        wait_for_port(dicom_port, scp, dicom=True)
        return send_all(dicom_port, files, associations)
    finally:
        scp.terminate()
        scp.wait()
        nats.terminate()
        nats.wait()
        shutil.rmtree(store, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", type=int, default=300, help="0.5 MB instances")
    parser.add_argument("--large", type=int, default=5, help="10 MB instances")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--associations", type=int, default=4, help="parallel senders")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="pacsor-bench-") as tmp:
        workdir = Path(tmp)
        (workdir / "files").mkdir()
        files = make_files(workdir / "files", args.small, args.large)
        megabytes = sum(f.stat().st_size for f in files) / 1e6
        print(
            f"{len(files)} instances, {megabytes:.0f} MB, {args.associations} associations, "
            f"{args.rounds} rounds (median), {os.cpu_count()} cores"
        )
        times: dict[str, list[float]] = {"bare SCP (files)": [], "pacsor SCP (JetStream)": []}
        for _ in range(args.rounds):
            times["bare SCP (files)"].append(run_bare(files, workdir, args.associations))
            times["pacsor SCP (JetStream)"].append(run_pacsor(files, workdir, args.associations))
        medians = {name: statistics.median(t) for name, t in times.items()}
        for name, seconds in medians.items():
            print(
                f"{name:<24} {len(files) / seconds:8.1f} instances/s "
                f"{megabytes / seconds:8.1f} MB/s"
                f"   ({seconds:.2f} s)"
            )
        base, ours = medians.values()
        print(f"ratio pacsor / bare: {base / ours:.2f}x")


if __name__ == "__main__":
    main()
