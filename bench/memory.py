"""Memory benchmark: the SCP's peak resident memory while a large study or instance arrives.

Starts a nats-server and `pacsor run scp`, sends a study of COUNT instances of SIZE MB over
one association (pynetdicom), and reads the SCP process's peak resident set (VmHWM) from
/proc. Run it for a few sizes to see what grows with what:

    .venv/bin/python bench/memory.py --count 60 --size 10     # a 600 MB study
    .venv/bin/python bench/memory.py --count 1 --size 1000    # one 1 GB instance
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))
sys.path.insert(0, str(PROJECT / "bench"))

from ingest import Files, free_port, wait_for_port  # noqa: E402

from pacsor.dicom.storage_scu import send_files  # noqa: E402
from pacsor.jetstream.broker import nats_server_binary  # noqa: E402


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--count", type=int, default=60)
    parser.add_argument("--size", type=float, default=10.0, help="MB per instance")
    args = parser.parse_args()
    rows = int((args.size * 1e6 / 2) ** 0.5)  # 16-bit pixels
    with tempfile.TemporaryDirectory(prefix="pacsor-memory-") as tmp:
        workdir = Path(tmp)
        nats_port, dicom_port = free_port(), free_port()
        nats = subprocess.Popen(
            [nats_server_binary(), "--jetstream", "--store_dir", str(workdir / "nats"),
             "--addr", "127.0.0.1", "--port", str(nats_port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        env = {
            **os.environ,
            "NATS_URL": f"nats://127.0.0.1:{nats_port}",
            "PORT": str(dicom_port),
            "LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(PROJECT),
            "SCP_STORE_TIMEOUT_SECONDS": "120",
        }
        scp = subprocess.Popen([sys.executable, "-m", "pacsor", "run", "scp"], env=env, cwd=tmp)
        try:
            wait_for_port(nats_port, nats, dicom=False)
            wait_for_port(dicom_port, scp, dicom=True)
            idle = peak_rss_mb(scp.pid)
            (workdir / "files").mkdir()
            paths = Files(workdir / "files", rows, args.count).copy()
            megabytes = sum(p.stat().st_size for p in paths) / 1e6
            started = time.perf_counter()
            statuses = send_files("127.0.0.1", dicom_port, "MILVUE", paths, timeout=300)
            elapsed = time.perf_counter() - started
            assert [s for _, s in statuses] == [0] * len(paths), statuses
            print(
                f"{args.count} x {megabytes / args.count:.0f} MB ({megabytes:.0f} MB) in "
                f"{elapsed:.1f} s: SCP peak resident {peak_rss_mb(scp.pid):.0f} MB "
                f"(idle {idle:.0f} MB)"
            )
        finally:
            scp.terminate()
            scp.wait(timeout=30)
            nats.terminate()
            nats.wait(timeout=30)


if __name__ == "__main__":
    main()
