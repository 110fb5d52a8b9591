"""Logs a person reads: short text lines, JSON for collectors, the peer in network errors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client
from pynetdicom.events import Event as DicomEvent

from pacsor.config import ConfigError, load_settings
from pacsor.devtools.demo_pacs import start_storage_scp
from pacsor.devtools.sample_events import lifecycle
from pacsor.devtools.sample_study import make_study
from pacsor.dicom.storage_scu import echo, send_files
from pacsor.jetstream.eventlog import EventLog
from pacsor.process.logs import JsonLines, NamePeer, TextLines, chosen_format
from tests.harness import cli_env
from tests.nats_server import free_port


async def up_process(cwd: Path, nats_port: int) -> asyncio.subprocess.Process:
    """`pacsor up` with text logs, its own ports and an embedded nats-server."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pacsor",
        "up",
        cwd=cwd,
        env=cli_env(
            EMBEDDED_NATS_PORT=str(nats_port),
            PORT=str(free_port()),
            LOG_FORMAT="text",
            TOKEN="t",
            PACS_IP="127.0.0.1",
            PACS_PORT=str(free_port()),
        ),
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
    )


def killed(process: asyncio.subprocess.Process) -> None:
    """A test that failed leaves nothing running: pacsor, and its nats-server (a child in a
    session of its own, which a SIGKILL of pacsor would leave behind)."""
    if process.returncode is not None:
        return
    children = subprocess.run(
        ["pgrep", "-P", str(process.pid)], capture_output=True, text=True, check=False
    ).stdout.split()
    process.kill()
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(child), signal.SIGTERM)


STUDY = "1.2.826.0.1.3680043.8.498.12345678901234567890123456789012345678"


class Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.addFilter(NamePeer())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def kept() -> Iterator[Kept]:
    handler = Kept()
    root = logging.getLogger()
    before = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(before)


async def test_an_event_is_one_short_line_without_its_body(nc: Client, kept: Kept) -> None:
    from datetime import UTC, datetime

    history = lifecycle(STUDY, datetime.now(UTC), destinations=("PACS@10.0.0.5:104",))
    log = EventLog(nc.jetstream())
    for event in history:
        await log.publish(event)
    records = [r for r in kept.records if r.name == "pacsor.events"]
    assert [r.getMessage() for r in records] == [type(e).__name__ for e in history]
    dispatched = records[-1]
    text = TextLines().format(dispatched)
    assert "1.2.826.…345678" in text and STUDY not in text  # first 8, last 6
    assert text.endswith(
        "Dispatched        1.2.826.…345678  default attempt 1 to PACS@10.0.0.5:104, 6 objects"
    )
    assert all(len(TextLines().format(r)) < 140 for r in records)
    line = json.loads(JsonLines().format(dispatched))
    assert line["study"] == STUDY and line["core"] == "default" and line["attempt"] == 1
    assert "event" not in line and "sop_instance_uids" not in json.dumps(line)
    assert len(JsonLines().format(dispatched)) < 400


def test_pynetdicom_lines_name_the_peer(kept: Kept) -> None:
    with socket.socket() as closed:  # bound, not listening: the connection is refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        assert echo("127.0.0.1", port, "FARPACS", timeout=5) == "refused or unreachable"
    failed = [r for r in kept.records if "unable to connect" in r.getMessage()]
    assert failed, [r.getMessage() for r in kept.records]
    assert all(getattr(r, "peer", None) == f"FARPACS@127.0.0.1:{port}" for r in failed)
    assert f"peer=FARPACS@127.0.0.1:{port}" in TextLines().format(failed[0])


def test_a_peer_that_does_not_answer_in_time_is_named(kept: Kept, tmp_path: Path) -> None:
    """pynetdicom logs a DIMSE timeout from the thread that sends, not the association's:
    the line still names the peer."""
    release = threading.Event()
    port = free_port()

    def answer_late(_event: DicomEvent) -> int:
        release.wait(10)  # past the sender's 1 s timeout
        return 0x0000

    server = start_storage_scp("SLOWPACS", port, answer_late)
    try:
        [ds] = make_study(1)
        ds.save_as(tmp_path / "one.dcm", enforce_file_format=True)
        results = send_files("127.0.0.1", port, "SLOWPACS", [tmp_path / "one.dcm"], timeout=1)
    finally:
        release.set()
        server.shutdown()
    assert results == [(tmp_path / "one.dcm", -1)]
    timed_out = [r for r in kept.records if "DIMSE timeout" in r.getMessage()]
    assert timed_out, [r.getMessage() for r in kept.records]
    assert all(getattr(r, "peer", None) == f"SLOWPACS@127.0.0.1:{port}" for r in timed_out)


def test_log_format_is_a_setting() -> None:
    assert load_settings({"LOG_FORMAT": "TEXT"}, dotenv=None).log_format == "text"
    assert load_settings({}, dotenv=None).log_format is None
    with pytest.raises(ConfigError, match=r"^LOG_FORMAT: expected one of json, text, got 'xml'$"):
        load_settings({"LOG_FORMAT": "xml"}, dotenv=None)
    assert chosen_format("text") == "text"
    assert chosen_format(None) == "json"  # the tests' stderr is not a terminal


async def test_second_ctrl_c_stops_at_once(tmp_path: Path) -> None:
    nats_port = free_port()
    up = await up_process(tmp_path, nats_port)
    try:
        assert up.stderr is not None
        lines: list[str] = []
        async with asyncio.timeout(60):
            while not any("pacsor ready" in line for line in lines):
                line = (await up.stderr.readline()).decode()
                assert line, "pacsor exited:\n" + "".join(lines)
                lines.append(line)
        assert all(not line.startswith("{") for line in lines)  # LOG_FORMAT=text
        up.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            while "pacsor: stopping" not in (line := (await up.stderr.readline()).decode()):
                assert line, "pacsor exited without saying it stops"
        assert "Ctrl-C again to stop at once" in line
        up.send_signal(signal.SIGINT)
        rest = (await asyncio.wait_for(up.stderr.read(), 30)).decode()
        assert await asyncio.wait_for(up.wait(), 30) == 130
        assert "pacsor: stopping now" in rest
        # The embedded nats-server was stopped with it: its port is free again.
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", nats_port)) != 0
    finally:
        killed(up)


async def test_a_stop_signal_stops_even_when_stderr_is_gone(tmp_path: Path) -> None:
    """The terminal closed (a pipe with no reader): SIGTERM still stops pacsor and its
    embedded nats-server, instead of failing to say so."""
    nats_port = free_port()
    up = await up_process(tmp_path, nats_port)
    try:
        assert up.stderr is not None
        async with asyncio.timeout(60):
            while b"pacsor ready" not in (line := await up.stderr.readline()):
                assert line, "pacsor exited before it was ready"
        up._transport.get_pipe_transport(2).close()  # type: ignore[attr-defined]  # no reader left
        up.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(up.wait(), 30) == 0
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", nats_port)) != 0
    finally:
        killed(up)
