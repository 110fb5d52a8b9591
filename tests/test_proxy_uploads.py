"""Uploads through a strict outbound proxy (411 for a chunked request), found by HTTP_PROXY:
every request with a body carries a Content-Length, STOW and signed-URL alike."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from nats.aio.client import Client

from pacsor.ai.milvue_api import ApiError, MilvueApi
from pacsor.ai.multipart import SizedPart, encode_related, related_length
from pacsor.devtools.simulator import SimulatorSettings, running_simulator
from pacsor.domain import events as ev
from tests.dicom_factory import make_image, new_uid, to_bytes
from tests.harness import (
    TOKEN,
    ReceivingPacs,
    gateway_settings,
    of_type,
    running_gateway,
    send_study,
    wait_for_event,
)
from tests.http_proxy import StrictProxy, strict_proxy
from tests.nats_server import NatsServer


@pytest.fixture
async def proxy() -> AsyncIterator[StrictProxy]:
    async with strict_proxy() as running:
        yield running


def use_proxy(monkeypatch: pytest.MonkeyPatch, proxy: StrictProxy) -> None:
    """HTTP_PROXY for the clients made from now on (not the simulator's own start-up check,
    which blocks the event loop the proxy runs on)."""
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", proxy.url)


@pytest.fixture
def simulator() -> Iterator[str]:
    with running_simulator(SimulatorSettings(token=TOKEN, running_polls=0)) as (url, _):
        yield url


async def _chunks(*pieces: bytes) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


async def test_the_proxy_refuses_a_chunked_upload(
    simulator: str, proxy: StrictProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_proxy(monkeypatch, proxy)
    async with httpx.AsyncClient() as client:  # trust_env: through HTTP_PROXY
        response = await client.post(f"{simulator}/v3/studies", content=_chunks(b"a", b"b"))
    assert response.status_code == 411
    assert [(s.method, s.chunked) for s in proxy.refused] == [("POST", True)]


async def test_related_length_is_the_encoded_length() -> None:
    parts = [b"x" * 10, b"", b"y" * 70_000]
    boundary = "b0und4ry"
    body = b"".join(
        [
            c
            async for c in encode_related(
                [lambda p=p: _chunks(p) for p in parts], boundary, [len(p) for p in parts]
            )
        ]
    )
    assert len(body) == related_length([len(p) for p in parts], boundary)
    with pytest.raises(ValueError, match="gave 10 bytes, not its 11"):
        async for _ in encode_related([lambda: _chunks(parts[0])], boundary, [11]):
            pass


async def test_stow_upload_carries_its_length(
    simulator: str, proxy: StrictProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_proxy(monkeypatch, proxy)
    study = new_uid()
    files = [to_bytes(make_image(study)) for _ in range(3)]
    sized = [SizedPart(lambda f=f: _chunks(f[:100], f[100:]), len(f)) for f in files]
    async with MilvueApi(simulator, TOKEN) as api:
        answer = await api.upload_study(study, sized)
        assert answer.study_uid == study
        assert (await api.get_status(study)).status in {"done", "running"}
        # Parts without their sizes can only go chunked, which this proxy refuses.
        with pytest.raises(ApiError) as refused:
            await api.upload_study(study, [part.body for part in sized])
    assert refused.value.status == 411
    posts = [s for s in proxy.seen if s.method == "POST"]
    assert [(s.chunked, s.status) for s in posts] == [(False, 200), (True, 411)]
    assert posts[0].content_length is not None
    assert posts[0].content_length > sum(len(f) for f in files)


@pytest.mark.parametrize("signed_url", ["false", "true"], ids=["stow", "signed-url"])
async def test_a_study_goes_through_the_proxy(
    nc: Client,
    nats_server: NatsServer,
    tmp_path: Path,
    pacs: ReceivingPacs,
    proxy: StrictProxy,
    monkeypatch: pytest.MonkeyPatch,
    signed_url: str,
) -> None:
    with running_simulator(SimulatorSettings(token=TOKEN, running_polls=1)) as (api_url, sim):
        use_proxy(monkeypatch, proxy)
        settings = gateway_settings(nats_server.url, api_url, pacs, SIGNED_URL=signed_url)
        async with running_gateway(settings):
            study, sops = await send_study(settings, tmp_path)
            ready = await wait_for_event(nc, study, of_type(ev.ResultReady), 60)
        snapshot = sim.study(study)
    assert isinstance(ready, ev.ResultReady)
    assert snapshot is not None and sorted(snapshot.instances) == sorted(sops)
    assert not proxy.refused
    bodies = [s for s in proxy.seen if s.method in {"POST", "PUT"}]
    assert bodies and all(s.content_length and not s.chunked for s in bodies)
    puts = [s for s in bodies if s.method == "PUT"]
    assert len(puts) == (len(sops) if signed_url == "true" else 0)
    # Results and status came through the proxy too: HTTP_PROXY is honoured for every call.
    assert any(s.method == "GET" and s.path.endswith("/status") for s in proxy.seen)
