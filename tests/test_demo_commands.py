"""The quick start's commands against the demo it starts: `pacsor up --demo` as a process, then
`pacsor echo`, `check`, `send`, `events --follow`, `relaunch --wait` and `--version` as a
person runs them from another terminal in the same folder, with no setting of their own."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import stat
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.harness import PROJECT
from tests.nats_server import free_port


def plain_env() -> dict[str, str]:
    """This environment, the project importable, and none of the demo's ports."""
    return {**os.environ, "PYTHONPATH": str(PROJECT)}


def pacsor(*args: str, cwd: Path, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pacsor", *args],
        env=plain_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class Demo:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []

    async def until(self, *words: str) -> str:
        """Read the demo's stderr until every word has appeared; all of it so far."""
        assert self.process.stderr is not None
        async with asyncio.timeout(90):
            while not all(any(w in line for line in self.lines) for w in words):
                line = (await self.process.stderr.readline()).decode()
                assert line, "the demo exited:\n" + "".join(self.lines)
                self.lines.append(line)
        return "".join(self.lines)


@pytest.fixture
async def demo(tmp_path: Path) -> AsyncIterator[tuple[Demo, dict[str, str]]]:
    ports = {
        "PORT": str(free_port()),
        "EMBEDDED_NATS_PORT": str(free_port()),
        "DEMO_PACS_PORT": str(free_port()),
        "ADMIN_PORT": str(free_port()),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pacsor",
        "up",
        "--demo",
        cwd=tmp_path,
        env={**plain_env(), **ports, "STUDY_QUIET_SECONDS": "1"},
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
    )
    running = Demo(process)
    try:
        yield running, ports
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
            await asyncio.wait_for(process.wait(), 60)


async def test_every_quick_start_command_works_against_the_demo(
    demo: tuple[Demo, dict[str, str]], tmp_path: Path
) -> None:
    running, ports = demo
    text = await running.until("Dispatched", "Hl7Sent")
    # The banner: where the dashboard and the SCP are, and the next three things to try.
    dashboard = f"http://127.0.0.1:{ports['ADMIN_PORT']}/"
    assert f"dashboard   {dashboard}" in text
    assert f"DICOM SCP   MILVUE@127.0.0.1:{ports['PORT']}" in text
    for command in ("send --sample 3", "events --follow", "check"):
        assert re.search(rf"^  \d\. \S*pacsor {command} ", text, re.MULTILINE), command
    with urllib.request.urlopen(dashboard, timeout=10) as page:
        assert page.status == 200

    # The commands find the demo's settings: none of its ports is in their environment.
    echo = await asyncio.to_thread(pacsor, "echo", cwd=tmp_path)
    assert echo.returncode == 0, echo.stdout + echo.stderr
    assert "core default (http://127.0.0.1:" in echo.stdout and "ok, token accepted" in echo.stdout
    assert f"DEMOPACS@127.0.0.1:{ports['DEMO_PACS_PORT']}: ok" in echo.stdout

    check = await asyncio.to_thread(pacsor, "check", cwd=tmp_path)
    assert check.returncode == 0, check.stdout
    assert "FAIL" not in check.stdout
    assert f"NATS nats://127.0.0.1:{ports['EMBEDDED_NATS_PORT']}" in check.stdout
    assert "AI core default" in check.stdout and "RIS (HL7)" in check.stdout

    version = await asyncio.to_thread(pacsor, "--version", cwd=tmp_path)
    assert re.fullmatch(r"pacsor \d+\.\d+\.\d+\S*\n", version.stdout), version.stdout

    # events --follow prints what is there, then what comes: a study sent after it started.
    follower = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pacsor",
        "events",
        "--follow",
        cwd=tmp_path,
        env=plain_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert follower.stdout is not None
    try:
        first_study = ""
        async with asyncio.timeout(60):
            while not first_study:
                line = (await follower.stdout.readline()).decode()
                assert line, "events --follow ended"
                if "Dispatched" in line:
                    first_study = line.split()[3]
        sent = await asyncio.to_thread(pacsor, "send", "--sample", "2", cwd=tmp_path)
        assert sent.returncode == 0, sent.stderr
        assert re.search(r"^1/2  0x0000  sample1\.dcm  [\d.]+ MB/s$", sent.stdout, re.MULTILINE)
        assert re.search(r"^2/2  0x0000  sample2\.dcm", sent.stdout, re.MULTILINE)
        assert "2 sent, 0 failed, 0 skipped" in sent.stderr
        async with asyncio.timeout(60):
            while True:
                line = (await follower.stdout.readline()).decode()
                assert line, "events --follow ended"
                study = line.split()[3]
                if study != first_study and "Dispatched" in line:
                    break
    finally:
        follower.send_signal(signal.SIGINT)
        await asyncio.wait_for(follower.wait(), 30)
    assert follower.returncode == 0

    # relaunch --wait: only its own lines, the new attempt followed to its end.
    relaunch = await asyncio.to_thread(pacsor, "relaunch", first_study, "--wait", cwd=tmp_path)
    assert relaunch.returncode == 0, relaunch.stdout + relaunch.stderr
    assert relaunch.stderr == ""
    lines = relaunch.stdout.splitlines()
    assert lines[0].startswith(f"relaunch of {first_study} requested")
    assert any("StudyComplete" in line and "attempt 2" in line for line in lines)
    assert any("Dispatched" in line and "attempt 2" in line for line in lines)
    assert any("Hl7Sent" in line and "attempt 2" in line for line in lines)
    assert lines[-1] == "attempt 2 ended"
    assert all(not line.startswith("{") for line in lines)  # no JSON log line

    # The running demo's settings hold its API key and admin token: its owner's alone.
    assert stat.S_IMODE((tmp_path / ".pacsor" / "demo.env").stat().st_mode) == 0o600

    # Stopped, the demo says so and takes its settings file away: no command reads it again.
    running.process.send_signal(signal.SIGINT)
    assert "pacsor: stopping" in await running.until("pacsor: stopping")
    assert await asyncio.wait_for(running.process.wait(), 60) == 0
    assert not (tmp_path / ".pacsor" / "demo.env").exists()
    # Each component connected as its own NATS user; the server refused none of them anything.
    server_log = (tmp_path / ".pacsor" / "nats" / "nats-server.log").read_text()
    assert "Violation" not in server_log
    after = await asyncio.to_thread(pacsor, "echo", cwd=tmp_path)
    assert after.returncode == 1 and "no destination" in after.stdout
