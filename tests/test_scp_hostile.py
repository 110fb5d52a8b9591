"""Hostile traffic against `pacsor run scp` as a real process: partial-PDU floods, malformed
PDUs and datasets, oversized and over-nested instances, deflate bombs.

Asserted: a good study from another address goes through during the attack, within seconds;
nothing refused is recorded or left in PACSOR_INSTANCES; the SCP's peak resident memory stays
under RSS_BOUND; every line it writes is JSON. Loopback only: the attackers bind 127.0.0.2
and 127.0.0.3, the good sender 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import copy
import json
import random
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client
from pydicom import config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian
from pynetdicom import AE, _config

from pacsor.devtools.sample_study import make_study
from pacsor.dicom.storage_scu import send_files
from pacsor.domain import events as ev
from pacsor.jetstream.eventlog import EventLog
from pacsor.jetstream.subjects import INSTANCES_BUCKET
from tests.dicom_factory import make_image, new_uid, to_bytes
from tests.harness import cli_env, wait_for_dicom, write_study
from tests.nats_server import NatsServer, free_port
from tests.test_dcmtk import DCMTK, tool

# Peak resident memory of the SCP process under the whole attack (it is about 100 MB idle).
RSS_BOUND_MB = 200
MAX_INSTANCE = 4 * 1024 * 1024
READ_TIMEOUT = 2.0

pytestmark = pytest.mark.timeout(300)


class ScpProcess:
    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path, spool: Path):
        self.process = process
        self.port = port
        self.log = log
        self.spool = spool

    def peak_rss_mb(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))
        return kib / 1024

    def log_lines(self) -> list[str]:
        return self.log.read_text().splitlines()


@pytest.fixture
def scp(
    nats_server: NatsServer, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[ScpProcess]:
    port = free_port()
    spool = tmp_path / "spool"
    spool.mkdir()
    log = tmp_path / "scp.log"
    extra: dict[str, str] = getattr(request, "param", {})
    env = cli_env(
        NATS_URL=nats_server.url,
        PORT=str(port),
        PACSOR_DATA_DIR=str(tmp_path / "data"),
        MAX_INSTANCE_BYTES=str(MAX_INSTANCE),
        SCP_READ_TIMEOUT_SECONDS=str(READ_TIMEOUT),
        TMPDIR=str(spool),  # where received datasets are spooled
        **extra,
    )
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "pacsor", "run", "scp"],
            env=env,
            cwd=tmp_path,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        asyncio.run(wait_for_dicom(port, "MILVUE", process))
        yield ScpProcess(process, port, log, spool)
    finally:
        process.terminate()
        process.wait(30)


def connect_from(source: str, port: int) -> socket.socket:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    return sock


def partial_pdu(port: int, source: str) -> socket.socket:
    """A connection that sends 100 bytes of a 400-byte A-ASSOCIATE-RQ, then nothing."""
    sock = connect_from(source, port)
    sock.sendall(b"\x01\x00" + struct.pack(">I", 400) + b"\x00\x01" + b"\x00" * 92)
    return sock


def closed_by_peer(sock: socket.socket, within: float) -> bool:
    """Whether the SCP ended the connection (A-ABORT, A-ASSOCIATE-RJ or close) in time."""
    sock.settimeout(within)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except OSError:
        return True
    return True


def store_raw(port: int, source: str, path: Path, sop_class: str, syntax: str) -> int:
    """C-STORE a Part 10 file's dataset bytes as they are (no decoding), from `source`."""
    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title="FUZZER")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(sop_class, [syntax])
    assoc = ae.associate("127.0.0.1", port, ae_title="MILVUE", bind_address=(source, 0))
    if not assoc.is_established:
        return -2
    try:
        status = assoc.send_c_store(path)
        return int(status.Status) if "Status" in status else -1
    finally:
        if assoc.is_established:
            assoc.release()


def part10(meta_from: Dataset, syntax: str, body: bytes, folder: Path, name: str) -> Path:
    """A Part 10 file: `meta_from`'s identity, transfer syntax `syntax`, dataset bytes `body`."""
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = meta_from.SOPClassUID
    meta.MediaStorageSOPInstanceUID = meta_from.SOPInstanceUID
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.9.7433.1"
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    buffer = DicomBytesIO()
    buffer.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=False)
    path = folder / name
    path.write_bytes(buffer.getvalue() + body)
    return path


def explicit_le(ds: Dataset) -> bytes:
    from pydicom.filebase import DicomBytesIO

    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    return buffer.getvalue()


def nested(levels: int) -> bytes:
    """A private sequence nested `levels` deep, undefined lengths throughout (explicit VR)."""
    opening = struct.pack("<HH2sHI", 0x0009, 0x1010, b"SQ", 0, 0xFFFFFFFF)
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    closing = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return (opening + item) * levels + closing * levels


def deflate_bomb(header: bytes, zeros: int) -> bytes:
    """`header` then an OB element of `zeros` zero bytes, deflated (about 1 KB per MB)."""
    squeeze = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    out = [squeeze.compress(header + struct.pack("<HH2sHI", 0x0009, 0x1020, b"OB", 0, zeros))]
    chunk = b"\0" * (1024 * 1024)
    for _ in range(zeros // len(chunk)):
        out.append(squeeze.compress(chunk))
    out.append(squeeze.flush())
    return b"".join(out)


Case = tuple[str, Path, str, str, set[int], str]


def hostile_datasets(folder: Path, study: str) -> list[Case]:
    """(what, file, SOP class, transfer syntax, statuses that refuse it, SOP Instance UID);
    an empty set of statuses: a mutation, which may happen to be valid."""
    folder.mkdir()
    cases: list[Case] = []

    def add(what: str, ds: Dataset, syntax: str, body: bytes, refused: set[int]) -> None:
        path = part10(ds, syntax, body, folder, f"{len(cases):03d}.dcm")
        sop = str(ds.get("SOPInstanceUID", ""))
        cases.append((what, path, str(ds.SOPClassUID), syntax, refused, sop))

    deep = make_image(study)
    add(
        "10,000 nested sequences",
        deep,
        ExplicitVRLittleEndian,
        explicit_le(deep) + nested(10_000),
        {0xC222},
    )
    big = make_image(study, rows=1600, cols=1600)  # 5 MB of pixels, over MAX_INSTANCE
    add("over MAX_INSTANCE_BYTES", big, ExplicitVRLittleEndian, explicit_le(big), {0xA710})
    bomb = make_image(study)
    add(
        "deflate bomb (512 MiB)",
        bomb,
        DeflatedExplicitVRLittleEndian,
        deflate_bomb(explicit_le(bomb), 512 * 1024 * 1024),
        {0xA710},
    )
    cut = make_image(study)
    add("truncated", cut, ExplicitVRLittleEndian, explicit_le(cut)[:-100], {0xC222})
    named = make_image(study)  # the command and file meta name it; the dataset does not
    no_uid = copy.deepcopy(named)
    del no_uid.SOPInstanceUID
    add("no SOP Instance UID", named, ExplicitVRLittleEndian, explicit_le(no_uid), {0xC220})
    # pydicom warns about this value, quoting it: the warning must reach the log cut short.
    wordy = make_image(study)
    with config.disable_value_validation():
        wordy.SeriesInstanceUID = "1.2." + "A" * 60_000
        wordy_body = explicit_le(wordy)
    add("60 KB invalid UID", wordy, ExplicitVRLittleEndian, wordy_body, {0xC221})
    bad = make_image(study)
    add("garbage", bad, ExplicitVRLittleEndian, b"\xff" * 600, {0xC210, 0xC222})
    # Random mutations of a valid dataset's header bytes (the pixel data left whole).
    rng = random.Random(15)
    for n in range(24):
        ds = make_image(study)
        body = bytearray(explicit_le(ds))
        for _ in range(rng.randint(1, 8)):
            body[rng.randrange(0, 400)] = rng.randrange(256)
        add(f"mutation {n}", ds, ExplicitVRLittleEndian, bytes(body), set())
    return cases


def malformed_pdus(rng: random.Random) -> list[bytes]:
    valid_rq_head = b"\x01\x00" + struct.pack(">I", 68) + b"\x00\x01\x00\x00" + b"MILVUE".ljust(16)
    pdus = [
        b"\x09\x00\x00\x00\x00\x04abcd",  # unknown PDU type
        b"\x01\x00" + struct.pack(">I", 0xFFFFFFFF),  # declares 4 GiB
        b"\x04\x00" + struct.pack(">I", 128 * 1024 * 1024) + b"\x00" * 65536,  # 128 MiB P-DATA
        b"\x01\x00" + struct.pack(">I", 4) + b"\x00\x01\x00\x00",  # A-ASSOCIATE-RQ too short
        b"GET / HTTP/1.1\r\nHost: pacsor\r\n\r\n",
    ]
    for _ in range(20):
        pdu = bytearray(valid_rq_head + b"FUZZ".ljust(16) + b"\x00" * 32 + b"\x10\x00\x00\x15")
        for _ in range(rng.randint(1, 6)):
            pdu[rng.randrange(len(pdu))] = rng.randrange(256)
        pdus.append(bytes(pdu))
    return pdus


def answered(sock: socket.socket, within: float) -> bool:
    """Whether the SCP answered (any PDU) or closed the connection in time."""
    sock.settimeout(within)
    try:
        sock.recv(4096)
    except TimeoutError:
        return False
    except OSError:
        return True
    return True


def send_pdus(port: int, pdus: list[bytes], answers: list[bool]) -> None:
    for pdu in pdus:
        sock = connect_from("127.0.0.2", port)
        try:
            sock.sendall(pdu)
            answers.append(answered(sock, READ_TIMEOUT + 5))
        except OSError:
            answers.append(True)  # reset while sending: refused as well
        finally:
            sock.close()


# This test's own sender reads the 60 KB invalid UID back, and pydicom warns here too.
@pytest.mark.filterwarnings("ignore:The value length:UserWarning")
async def test_hostile_traffic_does_not_stall_or_bloat_the_scp(
    scp: ScpProcess, nc: Client, tmp_path: Path
) -> None:
    port = scp.port
    idle = scp.peak_rss_mb()
    # 40 partial PDUs from one address, held open through the whole attack.
    flood = [partial_pdu(port, "127.0.0.2") for _ in range(40)]
    pdu_answers: list[bool] = []
    fuzzer = threading.Thread(
        target=send_pdus, args=(port, malformed_pdus(random.Random(15)), pdu_answers)
    )
    fuzzer.start()
    hostile_study = new_uid()
    cases = hostile_datasets(tmp_path / "hostile", hostile_study)
    statuses: list[int] = []

    def send_hostile() -> None:
        for _, path, sop_class, syntax, _, _ in cases:
            statuses.append(store_raw(port, "127.0.0.3", path, sop_class, syntax))

    datasets = threading.Thread(target=send_hostile)
    datasets.start()
    try:
        # During all that, a good study from another address is served within seconds.
        good = make_study(3)
        paths = write_study(tmp_path / "good", good)
        started = time.monotonic()
        results = await asyncio.to_thread(send_files, "127.0.0.1", port, "MILVUE", paths)
        good_seconds = time.monotonic() - started
        assert [status for _, status in results] == [0, 0, 0]
        assert good_seconds < 5, good_seconds
        await asyncio.to_thread(datasets.join, 120)
        await asyncio.to_thread(fuzzer.join, 120)
    finally:
        for sock in flood:
            sock.close()

    assert all(pdu_answers) and len(pdu_answers) == 25, pdu_answers
    for (what, _, _, _, refused, _), status in zip(cases, statuses, strict=True):
        if refused:
            assert status in refused, (what, hex(status))
        else:  # a mutation may still be valid: then it is stored, else refused
            assert status == 0 or status >= 0xA700, (what, status)

    # Nothing half-stored: no InstanceReceived for a refused instance, and every object in
    # the bucket is one an InstanceReceived names.
    log = EventLog(nc.jetstream())
    received = [
        r.event
        for study in (str(good[0].StudyInstanceUID), hostile_study)
        for r in await log.history(study)
        if isinstance(r.event, ev.InstanceReceived)
    ]
    refused_sops = {c[5] for c, status in zip(cases, statuses, strict=True) if c[4] and c[5]}
    assert not refused_sops & {e.sop_instance_uid for e in received}
    assert len(received) == 3 + statuses.count(0)
    bucket = await nc.jetstream().object_store(INSTANCES_BUCKET)
    objects = {info.name for info in await bucket.list()}
    assert objects == {e.object_name for e in received}

    # Bounded: memory, spool files, and every line is JSON with the sender's text cut short.
    peak = scp.peak_rss_mb()
    print(f"SCP peak RSS {peak:.0f} MB ({idle:.0f} MB idle); good study in {good_seconds:.2f} s")
    assert peak < RSS_BOUND_MB, peak
    assert list(scp.spool.iterdir()) == []
    lines = scp.log_lines()
    records = [json.loads(line) for line in lines]  # raises on a raw stderr line
    assert all(len(r.get("msg", "")) < 400 for r in records)
    assert any(r["logger"] in ("pydicom", "py.warnings") and "VR UI" in r["msg"] for r in records)
    cut = [r for r in records if r["msg"] == "connection cut off"]
    assert any("MAX_PDU_BYTES" in r["reason"] for r in cut)
    assert any("SCP_READ_TIMEOUT_SECONDS" in r["reason"] for r in cut)
    assert any(
        r["msg"] == "association rejected" and "MAX_ASSOCIATIONS_PER_HOST" in r["reason"]
        for r in records
    )


@pytest.mark.dcmtk
@pytest.mark.skipif(DCMTK is None, reason="DCMTK is not installed (apt-get install dcmtk)")
@pytest.mark.parametrize("scp", [{"MAX_ASSOCIATIONS_PER_HOST": "32"}], indirect=True)
async def test_partial_pdus_are_cut_off_and_a_storescu_is_served(scp: ScpProcess) -> None:
    """No cap per address to help: 40 partial PDUs take every association slot, and are cut
    off within SCP_READ_TIMEOUT_SECONDS; then DCMTK's storescu is served."""
    flood = [partial_pdu(scp.port, "127.0.0.2") for _ in range(40)]
    try:
        started = time.monotonic()
        cut = await asyncio.gather(
            *(asyncio.to_thread(closed_by_peer, sock, READ_TIMEOUT + 5) for sock in flood)
        )
        assert all(cut)
        assert time.monotonic() - started < READ_TIMEOUT + 5
        ds = make_image(new_uid())
        path = scp.spool.parent / "one.dcm"
        path.write_bytes(to_bytes(ds))
        stored = await asyncio.to_thread(
            subprocess.run,
            [
                tool("storescu"),
                "-aet",
                "MODALITY",
                "-aec",
                "MILVUE",
                "127.0.0.1",
                str(scp.port),
                str(path),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert stored.returncode == 0, stored.stderr
    finally:
        for sock in flood:
            sock.close()
