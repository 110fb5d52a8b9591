"""The `pacsor` command as people run it: `up --demo`, `send`, `events`."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import sys
import threading
from pathlib import Path

import pytest
from nats.aio.client import Client
from pynetdicom.events import Event as DicomEvent

from pacsor.config import load_settings
from pacsor.devtools.demo_pacs import start_storage_scp
from pacsor.devtools.sample_study import make_study
from pacsor.devtools.simulator import SimulatorSettings, running_simulator
from pacsor.dicom.storage_scu import echo
from pacsor.domain import events as ev
from tests.harness import (
    ReceivingPacs,
    cli_env,
    of_type,
    pacsor_cli,
    running_gateway,
    site_settings,
    wait_for_event,
)
from tests.nats_server import NatsServer, free_port


async def test_up_demo_runs_a_sample_study_through(tmp_path: Path) -> None:
    env = cli_env(
        PORT=str(free_port()),
        EMBEDDED_NATS_PORT=str(free_port()),
        DEMO_PACS_PORT=str(free_port()),
        STUDY_QUIET_SECONDS="1",
    )
    demo = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pacsor",
        "up",
        "--demo",
        cwd=tmp_path,
        env=env,
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
    )
    assert demo.stderr is not None
    seen: list[str] = []
    try:
        async with asyncio.timeout(90):
            while not all(any(k in line for line in seen) for k in ("Dispatched", "Hl7Sent")):
                line = (await demo.stderr.readline()).decode()
                assert line, "pacsor exited:\n" + "".join(seen)
                seen.append(line)
    finally:
        demo.send_signal(signal.SIGINT)
        await asyncio.wait_for(demo.wait(), 30)
    assert demo.returncode == 0
    text = "".join(seen)
    assert "pacsor is up (demo)" in text
    for kind in ("InstanceReceived", "StudyComplete", "Uploaded", "ResultReady", "Dispatched"):
        assert kind in text
    # The demo RIS acknowledged the study's ORU^R01.
    assert "Hl7Sent" in text and ": AA (control ID" in text
    # The demo PACS wrote the 6 result objects (3 images x 2 inference commands).
    assert len(list((tmp_path / "demo-pacs").rglob("*.dcm"))) == 6
    # The embedded nats-server kept its store under PACSOR_DATA_DIR and was stopped.
    assert (tmp_path / ".pacsor" / "nats" / "jetstream").is_dir()


async def test_send_and_events(nc: Client, nats_server: NatsServer, tmp_path: Path) -> None:
    settings = load_settings({"NATS_URL": nats_server.url, "PORT": str(free_port())}, dotenv=None)
    async with running_gateway(settings, ("scp",)):
        sent = await asyncio.to_thread(
            pacsor_cli, "send", "--sample", "2", "--port", str(settings.port), cwd=tmp_path
        )
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.count("0x0000") == 2

    listing = await asyncio.to_thread(pacsor_cli, "events", cwd=tmp_path, NATS_URL=nats_server.url)
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert len(lines) == 2 and all("InstanceReceived" in line for line in lines)
    study = lines[0].split()[3]
    event = await wait_for_event(nc, study, of_type(ev.InstanceReceived))
    assert event.study_uid == study

    one = await asyncio.to_thread(
        pacsor_cli, "events", "--study", "1.2.3", cwd=tmp_path, NATS_URL=nats_server.url
    )
    assert one.returncode == 0 and one.stdout == ""


def test_send_to_nobody_says_so(tmp_path: Path) -> None:
    result = pacsor_cli("send", "--sample", "1", "--port", str(free_port()), cwd=tmp_path)
    assert result.returncode == 1
    assert "refused or unreachable" in result.stderr


def test_send_of_nothing_but_a_file_that_is_not_dicom_is_two_lines(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    result = pacsor_cli("send", str(notes), "--port", str(free_port()), cwd=tmp_path)
    assert result.returncode == 1
    skipped, nothing = result.stderr.splitlines()  # no traceback
    assert skipped == f"skipped  {notes}: not a DICOM Part 10 file (no DICOM file meta header)"
    assert nothing == "pacsor: nothing to send (1 skipped)"


async def test_send_reports_each_file_as_it_goes_and_skips_what_is_not_dicom(
    tmp_path: Path,
) -> None:
    """A folder with a stray text file: it is skipped with a line, the rest is sent, and each
    file's line is out while the next one is still waiting for its answer."""
    folder = tmp_path / "study"
    folder.mkdir()
    for n, ds in enumerate(make_study(3), start=1):
        ds.save_as(folder / f"image{n}.dcm", enforce_file_format=True)
    (folder / "notes.txt").write_text("read me")
    answered = 0
    release = threading.Event()

    def on_store(_event: DicomEvent) -> int:
        nonlocal answered
        answered += 1
        if answered == 2:  # the second C-STORE waits until the test saw the first line
            release.wait(30)
        return 0x0000

    port = free_port()
    server = start_storage_scp("SLOWPACS", port, on_store)
    try:
        send = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "pacsor",
            "send",
            str(folder),
            "--port",
            str(port),
            "--aet",
            "SLOWPACS",
            cwd=tmp_path,
            env=cli_env(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert send.stdout is not None and send.stderr is not None
        async with asyncio.timeout(30):
            first = (await send.stdout.readline()).decode()
        assert re.fullmatch(r"1/3  0x0000  image1\.dcm  [\d.]+ MB/s\n", first), first
        assert send.returncode is None  # still sending: the line came as the file was answered
        release.set()
        rest, errors = await asyncio.wait_for(send.communicate(), 30)
    finally:
        release.set()
        server.shutdown()
    assert send.returncode == 0, errors.decode()
    assert [line.split()[0] for line in rest.decode().splitlines()] == ["2/3", "3/3"]
    err = errors.decode().splitlines()
    assert err[0].startswith(f"skipped  {folder / 'notes.txt'}: not a DICOM Part 10 file")
    assert err[1].startswith("sending 3 files (") and err[1].endswith(
        " to SLOWPACS@127.0.0.1:" + str(port)
    )
    assert re.fullmatch(r"3 sent, 0 failed, 1 skipped in [\d.]+ s \([\d.]+ MB/s\)", err[-1])


async def test_waits_for_nats_and_stops_on_sigterm(tmp_path: Path) -> None:
    scp = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pacsor",
        "run",
        "scp",
        cwd=tmp_path,
        env=cli_env(NATS_URL=f"nats://127.0.0.1:{free_port()}", PORT=str(free_port())),
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
    )
    assert scp.stderr is not None
    async with asyncio.timeout(30):
        while b"waiting for NATS" not in (line := await scp.stderr.readline()):
            assert line, "pacsor exited instead of waiting for NATS"
    scp.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(scp.wait(), 15) == 0


def test_a_dicom_port_in_use_is_one_line(nats_server: NatsServer, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = pacsor_cli("run", "scp", cwd=tmp_path, NATS_URL=nats_server.url, PORT=str(port))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"pacsor: PORT: cannot listen on 0.0.0.0:{port}: Address already in use"
    ]


def test_an_address_this_host_does_not_have_is_one_line_naming_dicom_host(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    port = free_port()
    result = pacsor_cli(
        "run", "scp", cwd=tmp_path, NATS_URL=nats_server.url, DICOM_HOST="192.0.2.1", PORT=str(port)
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"pacsor: DICOM_HOST: cannot listen on 192.0.2.1:{port}: Cannot assign requested address"
    ]


async def test_the_scp_listens_only_on_dicom_host(nats_server: NatsServer) -> None:
    """Bound to 127.0.0.1, the SCP answers there and refuses a connection to 127.0.0.2, another
    address of this host."""
    settings = site_settings(nats_server.url, DICOM_HOST="127.0.0.1")
    async with running_gateway(settings, components=("scp",)):
        assert await asyncio.to_thread(echo, "127.0.0.1", settings.port, "MILVUE") is None
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.2", settings.port), timeout=5).close()


def test_a_bad_demo_setting_is_one_line(tmp_path: Path) -> None:
    result = pacsor_cli(
        "up", "--demo", cwd=tmp_path, DEMO_PACS_PORT="eleven", EMBEDDED_NATS_PORT=str(free_port())
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "pacsor: DEMO_PACS_PORT: expected a port number, got 'eleven'"
    ]


def test_echo_checks_every_core_and_every_destination(tmp_path: Path) -> None:
    pacs = ReceivingPacs("ECHOPACS").start()
    archive = ReceivingPacs("ARCHIVE").start()
    down = f"http://127.0.0.1:{free_port()}"
    try:
        with (
            running_simulator(SimulatorSettings(token="good")) as (good_url, _),
            running_simulator(SimulatorSettings(token="other")) as (refusing_url, _),
        ):
            nobody = f"NOBODY@127.0.0.1:{free_port()}"
            result = pacsor_cli(
                "echo",
                cwd=tmp_path,
                API_URL=good_url,
                TOKEN="good",
                API_URL_1=refusing_url,
                TOKEN_1="good",
                CORE_NAME_1="precert",
                DESTINATIONS_1=archive.destination,
                API_URL_2=down,
                TOKEN_2="good",
                DESTINATIONS_2="same-as-first",
                PACS_IP="127.0.0.1",
                PACS_PORT=str(pacs.port),
                PACS_AET="ECHOPACS",
                DESTINATIONS=nobody,
            )
    finally:
        pacs.stop()
        archive.stop()
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0] == f"core default ({good_url}): ok, token accepted"
    assert lines[1] == f"core precert ({refusing_url}): token refused (HTTP 403)"
    assert lines[2].startswith(f"core core2 ({down}): unreachable: ConnectError")
    stores = "ok; stores Secondary Capture Image Storage"
    assert lines[3:] == [
        f"ECHOPACS@127.0.0.1:{pacs.port}: {stores}",
        f"{nobody}: refused or unreachable",
        f"{archive.destination}: {stores}",
    ]


def test_echo_of_named_peers_only(tmp_path: Path) -> None:
    pacs = ReceivingPacs("ECHOPACS").start()
    try:
        result = pacsor_cli("echo", pacs.destination, cwd=tmp_path)
    finally:
        pacs.stop()
    assert result.returncode == 0
    assert result.stdout.splitlines() == [
        f"{pacs.destination}: ok; stores Secondary Capture Image Storage"
    ]
