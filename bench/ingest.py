"""Ingest benchmark: pacsor's durable C-STORE against two references that only write files.

Targets, all three running for the whole benchmark and sent the same files in turn, the order
rotating each round: the bare pynetdicom SCP (bench/bare_scp.py), DCMTK's `storescp --fork`
writing files, and pacsor (`pacsor run scp` with a real nats-server, file storage). Senders:
pynetdicom (pacsor's own `send_files`) and DCMTK's `storescu`; one and four associations;
0.5 MB and 10 MB instances. Every copy sent has SOP Instance UIDs of its own, so pacsor never
sees a resend. Prints instances/s per target (median of the rounds) and pacsor's ratios.

    .venv/bin/python bench/ingest.py [--quick] [--small 60] [--large 6] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

import nats  # noqa: E402

from pacsor.devtools.sample_study import make_image  # noqa: E402
from pacsor.dicom.storage_scu import echo, send_files  # noqa: E402
from pacsor.jetstream.broker import nats_server_binary  # noqa: E402

TARGETS = ("bare", "dcmtk", "pacsor")
UID_ROOT = "1.2.826.0.1.3680043.8.498."


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], dicom: bool) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited")  # type: ignore[index]
        if dicom:
            if echo("127.0.0.1", port, "MILVUE", "BENCH", 2.0) is None:
                return
        else:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} did not open")


def fresh_base() -> str:
    """A UID prefix of fixed length: every copy's UIDs have the template's length."""
    return UID_ROOT + str(secrets.randbelow(9 * 10**11) + 10**11)


class Files:
    """Template images of one size; `copy` writes them again with UIDs never sent before."""

    def __init__(self, folder: Path, rows: int, count: int) -> None:
        self.folder = folder
        self.base = fresh_base()
        self.study = f"{self.base}.1"
        self.templates: list[tuple[str, bytes]] = []
        for i in range(count):
            sop = f"{self.base}.{1_000_000 + i}"
            path = folder / "template.dcm"
            make_image(
                self.study, sop_uid=sop, rows=rows, columns=rows, instance_number=i + 1, seed=i
            ).save_as(path, enforce_file_format=True)
            self.templates.append((sop, path.read_bytes()))
        self.megabytes = sum(len(d) for _, d in self.templates) / 1e6
        self.copies = 0

    def copy(self) -> list[Path]:
        self.copies += 1
        base = fresh_base()
        out = self.folder / f"copy-{self.copies}"
        shutil.rmtree(self.folder / f"copy-{self.copies - 1}", ignore_errors=True)
        out.mkdir()
        paths = []
        for n, (_, data) in enumerate(self.templates):
            path = out / f"{n:04d}.dcm"
            path.write_bytes(data.replace(self.base.encode(), base.encode()))
            paths.append(path)
        return paths


def send_pynetdicom(port: int, files: list[Path], associations: int) -> None:
    shares = [files[i::associations] for i in range(associations) if files[i::associations]]
    with ThreadPoolExecutor(associations) as pool:
        results = list(pool.map(lambda s: send_files("127.0.0.1", port, "MILVUE", s), shares))
    failed = [r for batch in results for r in batch if r[1] != 0]
    if failed or sum(len(b) for b in results) != len(files):
        raise RuntimeError(f"{len(failed)} C-STORE failures: {failed[:3]}")


def send_dcmtk(port: int, files: list[Path], associations: int) -> None:
    procs = [
        subprocess.Popen(
            ["storescu", "-aet", "BENCH", "-aec", "MILVUE", "127.0.0.1", str(port)]
            + [str(f) for f in files[i::associations]],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for i in range(min(associations, len(files)))
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"storescu failed: {err.decode()[-500:]}")


SENDERS: dict[str, Callable[[int, list[Path], int], None]] = {
    "pynetdicom": send_pynetdicom,
    "storescu": send_dcmtk,
}


class Servers:
    """The three targets, started once; `clear` drops what they stored between runs."""

    def __init__(self, workdir: Path, nats_sync: str = "") -> None:
        self.workdir = workdir
        self.nats_sync = nats_sync
        self.procs: list[subprocess.Popen[bytes]] = []
        self.ports: dict[str, int] = {}

    def start(self) -> None:
        bare_port, dcmtk_port = free_port(), free_port()
        (self.workdir / "bare").mkdir()
        (self.workdir / "dcmtk").mkdir()
        bare = self._spawn(
            [
                sys.executable,
                str(PROJECT / "bench" / "bare_scp.py"),
                str(bare_port),
                str(self.workdir / "bare"),
            ]
        )
        dcmtk = self._spawn(
            [
                "storescp",
                "--fork",
                "-aet",
                "MILVUE",
                "-od",
                str(self.workdir / "dcmtk"),
                str(dcmtk_port),
            ]
        )
        self.nats_port, pacsor_port = free_port(), free_port()
        # The file store's sync: nats-server's default (every 2 minutes), or `always` (an fsync
        # for every message: "durable" then means "on disk").
        conf = self.workdir / "nats.conf"
        sync = f"  sync_interval: {self.nats_sync}\n" if self.nats_sync else ""
        conf.write_text(
            f'jetstream {{\n  store_dir: "{self.workdir / "nats"}"\n{sync}}}\n'
            f"host: 127.0.0.1\nport: {self.nats_port}\n"
        )
        nats_server = self._spawn([nats_server_binary(), "--config", str(conf)])
        wait_for_port(self.nats_port, nats_server, dicom=False)
        env = {
            **os.environ,
            "NATS_URL": f"nats://127.0.0.1:{self.nats_port}",
            "PORT": str(pacsor_port),
            "LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(PROJECT),
        }
        pacsor = self._spawn(
            [sys.executable, "-m", "pacsor", "run", "scp"], env=env, cwd=self.workdir
        )
        for port, proc in ((bare_port, bare), (dcmtk_port, dcmtk), (pacsor_port, pacsor)):
            wait_for_port(port, proc, dicom=True)
        self.ports = {"bare": bare_port, "dcmtk": dcmtk_port, "pacsor": pacsor_port}

    def _spawn(self, args: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            **kwargs,  # type: ignore[call-overload]
        )
        self.procs.append(proc)
        return proc

    def clear(self, target: str) -> None:
        if target in ("bare", "dcmtk"):
            folder = self.workdir / target
            for f in folder.iterdir():
                f.unlink()
        else:
            asyncio.run(self._purge())

    async def _purge(self) -> None:
        nc = await nats.connect(f"nats://127.0.0.1:{self.nats_port}")
        try:
            js = nc.jetstream()
            # The bytes only: the event stream refuses a purge (its history is kept).
            await js.purge_stream("OBJ_PACSOR_INSTANCES")
        finally:
            await nc.close()

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
            proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--small", type=int, default=60, help="0.5 MB instances per run")
    parser.add_argument("--large", type=int, default=6, help="10 MB instances per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="30 and 3 instances, 3 rounds")
    parser.add_argument(
        "--nats-sync", default="", help="nats-server's sync_interval (always: fsync each message)"
    )
    args = parser.parse_args()
    if args.quick:
        args.small, args.large, args.rounds = 30, 3, 3

    with tempfile.TemporaryDirectory(prefix="pacsor-bench-") as tmp:
        workdir = Path(tmp)
        servers = Servers(workdir, args.nats_sync)
        servers.start()
        try:
            sync = f", nats-server sync_interval {args.nats_sync}" if args.nats_sync else ""
            print(
                f"{args.rounds} rounds (median), targets in rotating order, "
                f"{os.cpu_count()} cores{sync}"
            )
            header = (
                f"{'size':>6} {'sender':<10} {'assoc':>5} "
                f"{'bare/s':>8} {'dcmtk/s':>8} {'pacsor/s':>8} {'p/bare':>7} {'p/dcmtk':>7}"
            )
            print(header)
            for label, rows, count in (("0.5MB", 512, args.small), ("10MB", 2240, args.large)):
                (workdir / label).mkdir()
                files = Files(workdir / label, rows, count)
                for sender in SENDERS:
                    for associations in (1, 4):
                        times: dict[str, list[float]] = {t: [] for t in TARGETS}
                        for n in range(args.rounds):
                            paths = files.copy()
                            for target in TARGETS[n % 3 :] + TARGETS[: n % 3]:
                                start = time.perf_counter()
                                SENDERS[sender](servers.ports[target], paths, associations)
                                times[target].append(time.perf_counter() - start)
                                servers.clear(target)
                        rate = {t: count / statistics.median(v) for t, v in times.items()}
                        print(
                            f"{label:>6} {sender:<10} {associations:>5} "
                            f"{rate['bare']:8.1f} {rate['dcmtk']:8.1f} {rate['pacsor']:8.1f} "
                            f"{rate['pacsor'] / rate['bare']:7.2f} "
                            f"{rate['pacsor'] / rate['dcmtk']:7.2f}",
                            flush=True,
                        )
        finally:
            servers.stop()


if __name__ == "__main__":
    main()
