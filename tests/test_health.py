"""`pacsor health`: the probe container healthchecks run, against a real nats-server."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from tests.harness import cli_env, pacsor_cli
from tests.nats_server import NatsServer


async def test_a_handler_is_healthy_once_its_pull_loop_turns(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    env = {"NATS_URL": nats_server.url, "PACSOR_DATA_DIR": str(tmp_path / "data")}
    before = pacsor_cli("health", "quiet-timer", cwd=tmp_path, **env)
    assert (before.returncode, before.stdout) == (1, "quiet-timer: no pull loop has fetched yet\n")
    handler = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pacsor",
        "run",
        "quiet-timer",
        cwd=tmp_path,
        env=cli_env(**env),
        stderr=asyncio.subprocess.PIPE,
    )
    assert handler.stderr is not None
    try:
        async with asyncio.timeout(60):
            while b"consumer started" not in await handler.stderr.readline():
                pass
            # The first fetch round ends within a second of the consumer starting.
            while (
                result := await asyncio.to_thread(
                    pacsor_cli, "health", "quiet-timer", cwd=tmp_path, **env
                )
            ).returncode != 0:
                assert result.stdout == "quiet-timer: no pull loop has fetched yet\n"
        assert result.stdout == "quiet-timer: ok\n"
    finally:
        handler.terminate()
        await asyncio.wait_for(handler.wait(), 30)


def test_nats_unreachable_is_one_line(tmp_path: Path) -> None:
    result = pacsor_cli("health", "uploader", cwd=tmp_path, NATS_URL="nats://127.0.0.1:9")
    assert result.returncode == 1
    assert result.stdout.startswith("uploader: NATS unreachable at nats://127.0.0.1:9: ")
    assert result.stdout.count("\n") == 1


def test_the_probe_leaves_the_gateway_unimported(tmp_path: Path) -> None:
    # It runs every few seconds in every container: no DICOM stack, no web stack, no handlers.
    script = (
        "import sys\n"
        "from pacsor.cli.launcher import main\n"
        "sys.argv = ['pacsor', 'health', 'uploader']\n"
        "main()\n"
        "heavy = {'pynetdicom', 'litestar', 'pacsor.process.gateway', 'pacsor.components'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=cli_env(NATS_URL="nats://127.0.0.1:9"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.splitlines()[-1] == "[]", result.stdout + result.stderr
