"""`pacsor check` against real peers: nats-server, DICOM destinations, the API simulator, a RIS."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client
from pacsor.streams import stream_definitions

from pacsor.devtools.simulator import SimulatorSettings, running_simulator
from tests.harness import TOKEN, ReceivingPacs, pacsor_cli
from tests.nats_server import NatsServer, free_port

STREAMS = list(stream_definitions())


@pytest.fixture
def api_url() -> Iterator[str]:
    with running_simulator(SimulatorSettings(token=TOKEN)) as (url, _state):
        yield url


@pytest.fixture
def ris() -> Iterator[int]:
    """A listening TCP port standing for the RIS's MLLP port."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield int(listener.getsockname()[1])


def site(nats: NatsServer, api_url: str, pacs: ReceivingPacs, **extra: str) -> dict[str, str]:
    return {
        "NATS_URL": nats.url,
        "API_URL": api_url,
        "TOKEN": TOKEN,
        "PACS_IP": "127.0.0.1",
        "PACS_PORT": str(pacs.port),
        "PACS_AET": pacs.ae_title,
        **extra,
    }


async def check(tmp_path: Path, env: dict[str, str]) -> tuple[int, list[str]]:
    result = await asyncio.to_thread(pacsor_cli, "check", cwd=tmp_path, **env)
    assert result.stderr == ""
    return result.returncode, result.stdout.splitlines()


async def test_everything_answers(
    nc: Client,
    nats_server: NatsServer,
    api_url: str,
    pacs: ReceivingPacs,
    ris: int,
    tmp_path: Path,
) -> None:
    env = site(
        nats_server,
        api_url,
        pacs,
        HL7_ENABLE="true",
        HL7_RIS_IP="127.0.0.1",
        API_URL_1=api_url,
        TOKEN_1=TOKEN,
        CORE_NAME_1="second",
        DESTINATIONS_1="same-as-first",
    )
    code, lines = await check(tmp_path, env | {"HL7_RIS_PORT": str(ris)})
    assert code == 0, lines
    assert lines == [
        # The address without the pipeline's password, which check never prints.
        f"ok    NATS {nats_server.anonymous_url}: JetStream, {len(STREAMS)} streams",
        *(f"ok    stream {name}: 0 messages, 1 copies" for name in STREAMS),
        f"ok    C-ECHO {pacs.destination}: answers",
        f"ok    C-STORE {pacs.destination}: stores Secondary Capture Image Storage",
        f"ok    AI core default {api_url}: reachable, token accepted",
        f"ok    AI core second {api_url}: reachable, token accepted",
        f"ok    RIS (HL7) 127.0.0.1:{ris}: port open",
    ]


async def test_every_failure_is_listed_and_the_exit_is_non_zero(
    nats_server: NatsServer, api_url: str, pacs: ReceivingPacs, tmp_path: Path
) -> None:
    # Streams not created yet, a destination that does not answer, a refused token, RIS closed.
    down = free_port()
    closed = free_port()
    env = site(
        nats_server,
        api_url,
        pacs,
        API_URL_1=api_url,
        TOKEN_1="not-the-token",
        DESTINATIONS_1="same-as-first",
        DESTINATIONS=f"ARCHIVE@127.0.0.1:{down}",
        HL7_ENABLE="true",
        HL7_RIS_IP="127.0.0.1",
        HL7_RIS_PORT=str(closed),
    )
    code, lines = await check(tmp_path, env)
    assert code == 1
    failures = [line for line in lines if line.startswith("FAIL")]
    echo_failure = len(STREAMS)
    assert failures == [
        *(
            f"FAIL  stream {name}: missing: pacsor creates it when it first starts"
            for name in STREAMS
        ),
        failures[echo_failure],
        f"FAIL  AI core core1 {api_url}: token refused (HTTP 403)",
        f"FAIL  RIS (HL7) 127.0.0.1:{closed}: port closed: Connect call failed "
        f"('127.0.0.1', {closed})",
    ]
    assert failures[echo_failure].startswith(f"FAIL  C-ECHO ARCHIVE@127.0.0.1:{down}: ")
    assert f"ok    C-ECHO {pacs.destination}: answers" in lines
    assert f"ok    AI core default {api_url}: reachable, token accepted" in lines


async def test_nats_unreachable_is_one_line_and_the_rest_still_runs(
    api_url: str, pacs: ReceivingPacs, tmp_path: Path
) -> None:
    nowhere = f"nats://127.0.0.1:{free_port()}"
    env = {
        "NATS_URL": nowhere,
        "API_URL": api_url,
        "TOKEN": TOKEN,
        "PACS_IP": "127.0.0.1",
        "PACS_PORT": str(pacs.port),
        "PACS_AET": pacs.ae_title,
    }
    code, lines = await check(tmp_path, env)
    assert code == 1
    assert lines[0].startswith(f"FAIL  NATS {nowhere}: unreachable: ")
    assert lines[1:] == [
        f"ok    C-ECHO {pacs.destination}: answers",
        f"ok    C-STORE {pacs.destination}: stores Secondary Capture Image Storage",
        f"ok    AI core default {api_url}: reachable, token accepted",
    ]
