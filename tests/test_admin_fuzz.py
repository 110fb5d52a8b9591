"""Fuzz the admin API from the OpenAPI document it serves (schemathesis): never a 500."""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from pathlib import Path

from nats.aio.client import Client

from tests.admin_data import admin_settings, fixture_studies
from tests.harness import running_gateway
from tests.nats_server import NatsServer

TOKEN = "fuzz-token-0123456789"


def schemathesis_command() -> str:
    beside = Path(sys.executable).parent / "schemathesis"
    found = str(beside) if beside.is_file() else shutil.which("schemathesis")
    assert found, "schemathesis is a dev dependency: pip install -e '.[dev]'"
    return found


async def test_no_request_built_from_the_served_schema_gets_a_500(
    nc: Client, nats_server: NatsServer, tmp_path: Path
) -> None:
    await fixture_studies(nc)
    settings = admin_settings(nats_server.url, tmp_path, ADMIN_TOKEN=TOKEN)
    async with running_gateway(settings, ("admin",)) as ready:
        process = await asyncio.create_subprocess_exec(
            schemathesis_command(),
            "run",
            f"{ready['admin_url']}/schema/openapi.json",
            "--checks",
            "not_a_server_error",
            "--header",
            f"Authorization: Bearer {TOKEN}",
            "--max-examples",
            "40",
            "--seed",
            "20260314",
            "--workers",
            "1",
            "--no-color",
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await asyncio.wait_for(process.communicate(), 600)
    report = output.decode()
    assert process.returncode == 0, report[-6000:]
    # Every operation of the document was tested, through the fuzzing phase.
    selected = re.search(r"Operations:\s+(\d+) selected / (\d+) total", report)
    assert selected and selected.group(1) == selected.group(2) and int(selected.group(1)) >= 9
    assert "Fuzzing" in report
