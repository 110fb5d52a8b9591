"""The Milvue API client against the simulator over real HTTP, and the multipart codec."""

from __future__ import annotations

import io
import json
import random
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pydicom
import pytest
from pydicom.uid import SecondaryCaptureImageStorage

from pacsor.ai.milvue_api import (
    ApiError,
    MilvueApi,
    ResultsNotReady,
    ResultsRefused,
    StudyStatus,
)
from pacsor.ai.multipart import (
    boundary_from_content_type,
    content_type,
    encode_related,
    iter_parts,
)
from pacsor.devtools.simulator import SimulatorSettings, running_simulator
from pacsor.devtools.simulator.results import result_sop_uid
from tests.dicom_factory import make_image, new_uid, to_bytes
from tests.harness import TOKEN, Simulator

pytestmark = pytest.mark.simulator(running_polls=1)

# --- helpers ---------------------------------------------------------------------------------


def chunked(data: bytes, size: int) -> Callable[[], AsyncIterator[bytes]]:
    """A part factory yielding `data` in chunks of `size` bytes."""

    async def produce() -> AsyncIterator[bytes]:
        for start in range(0, len(data), size):
            yield data[start : start + size]

    return produce


async def from_chunks(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def random_split(data: bytes, rng: random.Random) -> list[bytes]:
    """`data` cut at random places, including 1-byte and empty chunks."""
    cuts = sorted(rng.randint(0, len(data)) for _ in range(rng.randint(0, 40)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


async def encode(parts: list[bytes], boundary: str) -> bytes:
    factories = [chunked(part, 7) for part in parts]
    return b"".join([chunk async for chunk in encode_related(factories, boundary)])


async def parse(chunks: list[bytes], boundary: bytes) -> list[tuple[dict[str, str], bytes]]:
    return [part async for part in iter_parts(from_chunks(chunks), boundary)]


async def results_of(objects: AsyncIterator[AsyncIterator[bytes]]) -> list[bytes]:
    """Every result object of an iter_results answer, read one after the other."""
    return [b"".join([chunk async for chunk in body]) async for body in objects]


def study_files(study: str, count: int) -> list[bytes]:
    return [to_bytes(make_image(study, rows=32, cols=48)) for _ in range(count)]


@pytest.fixture
async def api(simulator: Simulator) -> AsyncIterator[MilvueApi]:
    async with MilvueApi(simulator[0], TOKEN, timeout=10) as client:
        yield client


async def upload_and_finish(api: MilvueApi, files: list[bytes]) -> str:
    study = str(pydicom.dcmread(io.BytesIO(files[0])).StudyInstanceUID)
    await api.upload_study(study, [chunked(data, 1000) for data in files])
    for _ in range(10):  # the simulator turns done after a fixed number of polls
        if (await api.get_status(study)).status == "done":
            return study
    raise AssertionError(f"study {study} never done")


# --- multipart codec -------------------------------------------------------------------------


PARTS = [
    b"",
    b"x",
    b"\r\n",
    b"--not-the-boundary\r\n",
    b"\r\n--pacsor-test-boundaryX\r\n",  # the boundary text followed by something else
    b"\r\n--pacsor-test-boundary \tz",  # ... or by padding and no CRLF
    bytes(range(256)) * 40,
]


async def test_round_trip_survives_any_chunking() -> None:
    boundary = "pacsor-test-boundary"
    body = await encode(PARTS, boundary)
    rng = random.Random(1234)
    for _ in range(300):
        parts = await parse(random_split(body, rng), boundary.encode())
        assert [part for _, part in parts] == PARTS
        assert all(headers == {"content-type": "application/dicom"} for headers, _ in parts)
    one_byte_chunks = [body[i : i + 1] for i in range(len(body))]
    assert [part for _, part in await parse(one_byte_chunks, boundary.encode())] == PARTS


async def test_parser_handles_preamble_epilogue_padding_and_headers() -> None:
    body = (
        b"This is a preamble.\r\n--b  \t\r\n"
        b"Content-Type: application/dicom\r\nContent-Location: /x\r\n"
        b" folded\r\n\r\nfirst\r\n"
        b"--b\r\n\r\nno headers\r\n"
        b"--b--  \r\nepilogue, ignored\r\n--b\r\n"
    )
    rng = random.Random(99)
    for _ in range(50):
        parts = await parse(random_split(body, rng), b"b")
        assert parts == [
            ({"content-type": "application/dicom", "content-location": "/x folded"}, b"first"),
            ({}, b"no headers"),
        ]


@pytest.mark.parametrize("body", [b"", b"\r\n", b"--b--", b"--b--\r\n", b"preamble\r\n--b--\r\n"])
async def test_empty_multipart_has_no_parts(body: bytes) -> None:
    assert await parse([body], b"b") == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"--b\r\nContent-Type: application/dicom\r\n\r\nabc", "before its closing boundary"),
        (b"--b\r\nContent-Type: application/dicom\r\n\r\nabc\r\n--b\r\n", "closing boundary"),
        (b"no delimiter anywhere", "no '--b' delimiter line"),
        (b"--b\r\nnot a header\r\n\r\nabc\r\n--b--", "malformed multipart part header"),
    ],
)
async def test_malformed_multipart_raises_value_error(body: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        await parse([body], b"b")


async def test_encoder_calls_each_factory_only_when_its_part_is_sent() -> None:
    opened: list[int] = []

    def factory(number: int) -> Callable[[], AsyncIterator[bytes]]:
        async def produce() -> AsyncIterator[bytes]:
            opened.append(number)
            yield b"part %d" % number

        return produce

    stream = encode_related([factory(1), factory(2)], "b")
    assert await anext(stream) == b"--b\r\nContent-Type: application/dicom\r\n\r\n"
    assert opened == []
    assert await anext(stream) == b"part 1"
    assert opened == [1]
    rest = b"".join([chunk async for chunk in stream])
    assert opened == [1, 2]
    assert rest == b"\r\n--b\r\nContent-Type: application/dicom\r\n\r\npart 2\r\n--b--\r\n"
    assert await encode([], "b") == b"--b--\r\n"


def test_content_type_round_trips_through_boundary_parsing() -> None:
    assert content_type("abc") == 'multipart/related; type="application/dicom"; boundary=abc'
    assert boundary_from_content_type(content_type("abc")) == "abc"
    assert content_type("a:b c") == 'multipart/related; type="application/dicom"; boundary="a:b c"'
    assert boundary_from_content_type(content_type("a:b c")) == "a:b c"
    assert boundary_from_content_type("Multipart/Related; Boundary=XyZ; type=x") == "XyZ"
    with pytest.raises(ValueError, match="invalid multipart boundary"):
        content_type("x" * 71)


@pytest.mark.parametrize(
    ("ct", "message"),
    [
        ("application/json", "expected a multipart Content-Type"),
        ("", "expected a multipart Content-Type"),
        ('multipart/related; type="application/dicom"', "has no boundary parameter"),
        ("multipart/related; boundary=", "has no boundary parameter|invalid multipart boundary"),
    ],
)
def test_boundary_from_content_type_explains_what_is_wrong(ct: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        boundary_from_content_type(ct)


# --- client against the simulator ------------------------------------------------------------


async def test_upload_is_streamed_and_recorded(
    api: MilvueApi, simulator: Simulator
) -> None:
    study = new_uid()
    files = study_files(study, 3)
    produced: list[int] = []

    def tracked(number: int, data: bytes) -> Callable[[], AsyncIterator[bytes]]:
        async def produce() -> AsyncIterator[bytes]:
            produced.append(number)
            for start in range(0, len(data), 512):
                yield data[start : start + 512]

        return produce

    response = await api.upload_study(study, [tracked(n, d) for n, d in enumerate(files)])
    assert response.study_uid == study
    assert "3" in response.message
    assert produced == [0, 1, 2]
    snapshot = simulator[1].study(study)
    assert snapshot is not None
    sops = [str(pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID) for data in files]
    assert list(snapshot.instances) == sops


async def test_status_goes_from_running_to_done(api: MilvueApi) -> None:
    study = new_uid()
    await api.upload_study(study, [chunked(data, 4096) for data in study_files(study, 1)])
    first, second = await api.get_status(study), await api.get_status(study)
    assert (first.status, second.status) == ("running", "done")
    assert isinstance(first, StudyStatus) and first.version


async def test_results_before_done_raise_results_not_ready(api: MilvueApi) -> None:
    study = new_uid()
    await api.upload_study(study, [chunked(data, 4096) for data in study_files(study, 1)])
    with pytest.raises(ResultsNotReady) as raised:
        _ = await results_of(api.iter_results(study, "smarturgences"))
    assert raised.value.retryable
    with pytest.raises(ResultsNotReady):
        await api.get_findings(study, "smartxpert")


async def test_iter_results_gives_one_secondary_capture_per_image_and_command(
    api: MilvueApi,
) -> None:
    study = new_uid()
    files = study_files(study, 2)
    sops = [str(pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID) for data in files]
    await upload_and_finish(api, files)
    for command in ("smarturgences", "smartxpert"):
        objects = [
            pydicom.dcmread(io.BytesIO(obj))
            for obj in await results_of(api.iter_results(study, command))
        ]
        assert [ds.SOPInstanceUID for ds in objects] == [result_sop_uid(s, command) for s in sops]
        assert {ds.SOPClassUID for ds in objects} == {SecondaryCaptureImageStorage}
        assert {ds.StudyInstanceUID for ds in objects} == {study}
    nothing = api.iter_results(study, "smarturgences", {"output_selection": "none"})
    assert await results_of(nothing) == []


async def test_get_findings(api: MilvueApi) -> None:
    study = new_uid()
    files = study_files(study, 1)
    await upload_and_finish(api, files)
    findings = json.loads(await api.get_findings(study, "smarturgences", {"language": "fr"}))
    assert findings["status"] == "done" and findings["StudyInstanceUID"] == study
    assert findings["instances"][0]["bounding_boxes"]
    measures = json.loads(await api.get_findings(study, "smartxpert"))["instances"][0]["measures"]
    assert {m["type"] for m in measures} == {"angle", "length"}
    # Every detection and measure product has its findings, as smarturgences and smartxpert
    # do; a command pacsor does not know has none.
    assert json.loads(await api.get_findings(study, "detection"))["findings"]
    with pytest.raises(ValueError, match="not 'smartfoo'"):
        await api.get_findings(study, "smartfoo")


async def test_not_ready_after_done_then_ready() -> None:
    settings = SimulatorSettings(running_polls=0, not_ready_results=1)
    with running_simulator(settings) as (url, _):
        async with MilvueApi(url, "any") as api:
            study = await upload_and_finish(api, study_files(new_uid(), 1))
            with pytest.raises(ResultsNotReady, match="not ready"):
                _ = await results_of(api.iter_results(study, "smartxpert"))
            assert len(await results_of(api.iter_results(study, "smartxpert"))) == 1


async def test_quota_and_server_errors_are_retryable() -> None:
    settings = SimulatorSettings(running_polls=0, upload_faults=(429,), result_faults=(500,))
    with running_simulator(settings) as (url, _):
        async with MilvueApi(url, "any") as api:
            study = new_uid()
            parts = [chunked(data, 4096) for data in study_files(study, 1)]
            with pytest.raises(ApiError) as quota:
                await api.upload_study(study, parts)
            assert quota.value.status == 429
            assert quota.value.retryable and quota.value.retry_after == 1.0
            assert str(quota.value) == "HTTP 429 from POST /v3/studies: Exceeded quota"
            await api.upload_study(study, parts)  # the factories can be called again

            await api.get_status(study)
            with pytest.raises(ApiError) as failure:
                _ = await results_of(api.iter_results(study, "smarturgences"))
            assert failure.value.status == 500 and failure.value.retryable
            assert failure.value.retry_after is None
            assert len(await results_of(api.iter_results(study, "smarturgences"))) == 1


async def test_wrong_token_unknown_study_and_bad_command_are_not_retryable(
    simulator: Simulator, api: MilvueApi
) -> None:
    study = new_uid()
    async with MilvueApi(simulator[0], "not-the-token") as intruder:
        with pytest.raises(ApiError) as forbidden:
            await intruder.upload_study(study, [chunked(d, 4096) for d in study_files(study, 1)])
    assert forbidden.value.status == 403 and not forbidden.value.retryable
    assert "x-goog-meta-owner" in forbidden.value.message
    assert simulator[1].study(study) is None

    with pytest.raises(ApiError) as unknown:
        await api.get_status(study)
    assert unknown.value.status == 404 and not unknown.value.retryable
    assert (
        str(unknown.value)
        == f"HTTP 404 from GET /v3/studies/{study}/status: {unknown.value.message}"
    )

    await api.upload_study(study, [chunked(d, 4096) for d in study_files(study, 1)])
    with pytest.raises(ApiError) as invalid:
        _ = await results_of(api.iter_results(study, "no-such-command"))
    assert invalid.value.status == 422 and not invalid.value.retryable
    assert "query.inference_command" in invalid.value.message


async def test_part_factory_errors_propagate_unchanged(api: MilvueApi) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"DICM"
        raise FileNotFoundError("instance file vanished")

    with pytest.raises(FileNotFoundError, match="vanished"):
        await api.upload_study(new_uid(), [broken])


async def test_connection_refused_is_a_retryable_transport_error() -> None:
    # A bound socket that does not listen: connecting to it is refused, reliably.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
        async with MilvueApi(url, TOKEN) as api:
            with pytest.raises(ApiError) as refused:
                await api.get_status("1.2.3")
            with pytest.raises(ApiError) as refused_results:
                _ = await results_of(api.iter_results("1.2.3", "smarturgences"))
    for error in (refused.value, refused_results.value):
        assert error.status is None and error.retryable
        # No answer: the message names the peer, the whole URL.
        assert str(error).startswith(f"transport error from GET {url}/v3/studies/1.2.3")
        assert "ConnectError" in error.message
        assert not error.answer_lost  # never sent: the API cannot have acted on it


async def test_timeout_is_a_retryable_transport_error() -> None:
    # Listening but never accepting: the request is sent into the backlog, no answer comes.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        async with MilvueApi(url, TOKEN, timeout=0.2) as api:
            with pytest.raises(ApiError) as timed_out:
                await api.get_status("1.2.3")
    assert timed_out.value.status is None and timed_out.value.retryable
    assert "Timeout" in timed_out.value.message
    assert timed_out.value.answer_lost  # sent, then no answer: the API may have acted on it


@contextmanager
def canned_server(content_type: str, body: bytes) -> Iterator[str]:
    """A plain HTTP server answering every GET with this body: for answers the simulator
    never gives (the real API may), over real HTTP all the same."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep test output quiet

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize(
    ("content_type", "body", "expected"),
    [
        ("application/json", b'{"StudyInstanceUID": "1.2", "status": "running"}', ResultsNotReady),
        ("application/json", b'{"StudyInstanceUID": "1.2", "status": "empty"}', None),
        ("application/json", b'{"status": "forbidden", "message": "licence"}', ApiError),
        ("application/json", b"[]", ApiError),
        ("multipart/related; boundary=b", b"--b\r\n\r\ntruncated", ApiError),
        ("text/html", b"<html>proxy error page</html>", ApiError),
    ],
)
async def test_iter_results_reads_the_other_answer_forms(
    content_type: str, body: bytes, expected: type[ApiError] | None
) -> None:
    with canned_server(content_type, body) as url:
        async with MilvueApi(url, TOKEN) as api:
            if expected is None:
                assert await results_of(api.iter_results("1.2", "smarturgences")) == []
                return
            with pytest.raises(expected) as raised:
                _ = await results_of(api.iter_results("1.2", "smarturgences"))
    assert raised.value.retryable == (expected is ResultsNotReady)
    assert raised.value.status == 200


def test_retryable_classification() -> None:
    assert [ApiError(s, "x").retryable for s in (408, 429, 500, 502, 503, 504)] == [True] * 6
    assert [ApiError(s, "x").retryable for s in (400, 401, 403, 404, 409, 422)] == [False] * 6
    assert ApiError(None, "x").retryable
    assert ResultsNotReady(200, "running").retryable


# --- signed URLs and the simulator's switches -------------------------------------------------


def without_pixels(data: bytes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    del ds.PixelData
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


async def signed_upload(api: MilvueApi, files: list[bytes]) -> str:
    study = str(pydicom.dcmread(io.BytesIO(files[0])).StudyInstanceUID)
    urls = await api.upload_without_pixels(
        study, [chunked(without_pixels(data), 1000) for data in files]
    )
    for data in files:
        sop = str(pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID)
        await api.put_instance(urls[sop], chunked(data, 777), len(data))
    return study


async def test_signed_url_upload_and_results() -> None:
    settings = SimulatorSettings(token=TOKEN, running_polls=1, signed_url="require")
    with running_simulator(settings) as (url, state):
        async with MilvueApi(url, TOKEN, signed_url=True) as api:
            study = new_uid()
            files = study_files(study, 3)
            sops = [str(pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID) for data in files]
            urls = await api.upload_without_pixels(
                study, [chunked(without_pixels(data), 1000) for data in files]
            )
            assert sorted(urls) == sorted(sops)
            assert all(u.startswith(f"{url}/signed/upload/") for u in urls.values())
            # Until every instance is PUT, the study is not done.
            assert (await api.get_status(study)).status == "running"
            for data, sop in zip(files, sops, strict=True):
                await api.put_instance(urls[sop], chunked(data, 777), len(data))
            snapshot = state.study(study)
            assert snapshot is not None and snapshot.awaiting_put == ()
            assert snapshot.headers_received == 3 and list(snapshot.instances) == sops
            [(_, stored)] = [p for p in state.instance_paths(study) if p[0] == sops[0]]
            assert stored.read_bytes() == files[0]  # the instance as it was sent
            statuses = [(await api.get_status(study)).status for _ in range(2)]
            assert statuses == ["running", "done"]
            objects = await results_of(api.iter_results(study, "smartxpert"))
            assert [pydicom.dcmread(io.BytesIO(o)).SOPInstanceUID for o in objects] == [
                result_sop_uid(sop, "smartxpert") for sop in sops
            ]
            # A full instance in the POST is refused: the pixels go by PUT.
            with pytest.raises(ApiError) as full:
                await api.upload_without_pixels(study, [chunked(files[0], 1000)])
            assert full.value.status == 400 and "pixel data" in full.value.message
            # The plain STOW is refused by an environment that requires signed URLs.
            with pytest.raises(ApiError) as stow:
                await api.upload_study(study, [chunked(files[0], 1000)])
            assert stow.value.status == 400 and "signed_url=true" in stow.value.message


async def test_signed_put_faults_and_a_put_of_the_wrong_instance() -> None:
    settings = SimulatorSettings(running_polls=0, put_faults=(503,))
    with running_simulator(settings) as (url, _):
        async with MilvueApi(url, TOKEN, signed_url=True) as api:
            study = new_uid()
            first, second = study_files(study, 2)
            urls = await api.upload_without_pixels(
                study, [chunked(without_pixels(d), 1000) for d in (first, second)]
            )
            sop = str(pydicom.dcmread(io.BytesIO(first)).SOPInstanceUID)
            with pytest.raises(ApiError) as unavailable:
                await api.put_instance(urls[sop], chunked(first, 1000))
            assert unavailable.value.status == 503 and unavailable.value.retryable
            assert "?" not in str(unavailable.value)  # no signature in messages
            with pytest.raises(ApiError) as wrong:
                await api.put_instance(urls[sop], chunked(second, 1000))
            assert wrong.value.status == 400 and not wrong.value.retryable
            await api.put_instance(urls[sop], chunked(first, 1000))
            with pytest.raises(ApiError) as expired:
                await api.put_instance(f"{url}/signed/upload/forged", chunked(first, 1000))
            assert expired.value.status == 403


@pytest.mark.parametrize("signed", [False, True])
async def test_empty_and_forbidden_outcomes(signed: bool) -> None:
    for outcome in ("empty", "forbidden"):
        settings = SimulatorSettings(running_polls=0, outcome=outcome)  # type: ignore[arg-type]
        with running_simulator(settings) as (url, _):
            async with MilvueApi(url, TOKEN, signed_url=signed) as api:
                files = study_files(new_uid(), 1)
                study = await (
                    signed_upload(api, files) if signed else upload_and_finish(api, files)
                )
                assert (await api.get_status(study)).status == "done"
                if outcome == "empty":
                    assert await results_of(api.iter_results(study, "smarturgences")) == []
                    assert json.loads(await api.get_findings(study, "smarturgences"))["findings"]
                    continue
                with pytest.raises(ResultsRefused) as refused:
                    await results_of(api.iter_results(study, "smarturgences"))
                assert "forbidden" in str(refused.value) and "licence" in str(refused.value)
                assert not refused.value.retryable
                with pytest.raises(ResultsRefused):
                    await api.get_findings(study, "smartxpert")


async def test_error_outcome_is_in_the_status() -> None:
    with running_simulator(SimulatorSettings(running_polls=1, outcome="error")) as (url, _):
        async with MilvueApi(url, TOKEN) as api:
            study = await upload_and_finish_or_error(api, study_files(new_uid(), 1))
            status = await api.get_status(study)
            assert status.status == "error" and "Simulated" in status.message


async def upload_and_finish_or_error(api: MilvueApi, files: list[bytes]) -> str:
    study = str(pydicom.dcmread(io.BytesIO(files[0])).StudyInstanceUID)
    await api.upload_study(study, [chunked(data, 1000) for data in files])
    assert (await api.get_status(study)).status == "running"
    return study


@pytest.mark.parametrize("signed", [False, True])
async def test_a_dropped_connection_is_a_retryable_transport_error(signed: bool) -> None:
    with running_simulator(SimulatorSettings(running_polls=0, drop_connections=1)) as (url, st):
        async with MilvueApi(url, TOKEN, signed_url=signed) as api:
            files = study_files(new_uid(), 1)
            with pytest.raises(ApiError) as dropped:
                await (signed_upload(api, files) if signed else upload_and_finish(api, files))
            assert dropped.value.status is None and dropped.value.retryable
            study = await (signed_upload(api, files) if signed else upload_and_finish(api, files))
            snapshot = st.study(study)
            assert snapshot is not None and list(snapshot.instances.values()) == [1]


async def test_latency_and_always_failing() -> None:
    with running_simulator(SimulatorSettings(latency_seconds=0.3)) as (url, _):
        async with MilvueApi(url, TOKEN, timeout=0.1) as api:
            with pytest.raises(ApiError) as slow:
                await api.get_status("1.2.3")
            assert slow.value.status is None and "Timeout" in slow.value.message
    with running_simulator(SimulatorSettings(always_fail=503)) as (url, _):
        async with MilvueApi(url, TOKEN) as api:
            for _ in range(3):
                with pytest.raises(ApiError) as down:
                    await api.get_status("1.2.3")
                assert down.value.status == 503
