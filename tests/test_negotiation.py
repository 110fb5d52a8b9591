"""Dispatch that negotiates: each result object offered in its own transfer syntax and the
uncompressed ones, converted when the PACS takes only another, refused for good when it takes
none. Against a real Orthanc started by the test, with uncompressed and compressed results
(RLE Lossless encoded by pydicom, JPEG 2000 Lossless by pylibjpeg-openjpeg). The decisions
themselves are tested in tests/unit/test_negotiation_decisions.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from nats.aio.client import Client
from pydicom import dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
)
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from pacsor.config import Settings
from pacsor.devtools.simulator import SimulatorSettings, running_simulator
from pacsor.devtools.simulator.settings import ResultSyntax
from pacsor.domain import events as ev
from pacsor.domain import negotiation
from pacsor.jetstream.blobs import BlobStore
from pacsor.jetstream.eventlog import EventLog
from pacsor.jetstream.subjects import RESULTS_BUCKET
from tests.harness import (
    TOKEN,
    of_type,
    pacsor_cli,
    running_gateway,
    send_study,
    site_settings,
    wait_for_event,
)
from tests.nats_server import NatsServer, free_port
from tests.orthanc import ORTHANC, Orthanc

SC = negotiation.SECONDARY_CAPTURE
PIPELINE = ("scp", "quiet-timer", "completion", "uploader", "poller", "dispatcher")
EXPLICIT, IMPLICIT = str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)

# --- against a real Orthanc ------------------------------------------------------------------

needs_orthanc = pytest.mark.skipif(ORTHANC is None, reason="Orthanc is not installed")


@pytest.fixture
def orthanc_factory(tmp_path: Path) -> Iterator[list[Orthanc]]:
    started: list[Orthanc] = []
    yield started
    for server in started:
        server.stop()


def start_orthanc(started: list[Orthanc], folder: Path, syntaxes: list[str] | None) -> Orthanc:
    server = Orthanc(folder, syntaxes)
    started.append(server)
    return server.start()


def site(nats_url: str, api_url: str, pacs: Orthanc, **extra: str) -> Settings:
    """The test site, with `pacs` (an Orthanc) as its PACS."""
    return site_settings(
        nats_url,
        API_URL=api_url,
        PACS_IP="127.0.0.1",
        PACS_PORT=str(pacs.port),
        PACS_AET=pacs.ae_title,
        **extra,
    )


async def through_the_pipeline(
    nc: Client, nats_server: NatsServer, pacs: Orthanc, syntax: ResultSyntax, folder: Path
) -> tuple[ev.ResultReady, ev.AnyEvent]:
    """One study of two images through the gateway, the simulator's results in `syntax`:
    the ResultReady and the dispatch outcome."""
    simulator = SimulatorSettings(token=TOKEN, running_polls=0, result_syntax=syntax)
    with running_simulator(simulator) as (api_url, _):
        settings = site(nats_server.url, api_url, pacs)
        async with running_gateway(settings, PIPELINE):
            study, _ = await send_study(settings, folder, images=2)
            ready = await wait_for_event(nc, study, of_type(ev.ResultReady), 60)
            outcome = await wait_for_event(
                nc, study, lambda e: isinstance(e, ev.Dispatched | ev.DispatchFailed), 60
            )
    assert isinstance(ready, ev.ResultReady)
    return ready, outcome


async def result_pixels(nc: Client, ready: ev.ResultReady) -> dict[str, np.ndarray]:
    """The pixels of each result object as the AI made it, decoded."""
    store = BlobStore(nc, nc.jetstream(), RESULTS_BUCKET)
    pixels = {}
    for result in ready.results:
        ds = dcmread(DicomBytesIO(await store.get(result.object_name)))
        pixels[result.sop_instance_uid] = ds.pixel_array
    return pixels


@needs_orthanc
@pytest.mark.parametrize(
    ("syntax", "stored_as"),
    [("explicit", EXPLICIT), ("jpeg2000", str(JPEG2000Lossless))],
)
async def test_an_orthanc_that_accepts_everything_stores_each_result_in_its_own_syntax(
    nc: Client,
    nats_server: NatsServer,
    tmp_path: Path,
    orthanc_factory: list[Orthanc],
    syntax: ResultSyntax,
    stored_as: str,
) -> None:
    pacs = start_orthanc(orthanc_factory, tmp_path / "orthanc", None)
    ready, outcome = await through_the_pipeline(nc, nats_server, pacs, syntax, tmp_path / "s")
    assert isinstance(outcome, ev.Dispatched), outcome
    stored = await asyncio.to_thread(pacs.instances)
    assert stored == {r.sop_instance_uid: stored_as for r in ready.results}
    assert len(stored) == 4


@needs_orthanc
@pytest.mark.parametrize("syntax", ["explicit", "rle", "jpeg2000"])
async def test_an_implicit_only_orthanc_gets_every_result_converted_without_loss(
    nc: Client,
    nats_server: NatsServer,
    tmp_path: Path,
    orthanc_factory: list[Orthanc],
    syntax: ResultSyntax,
) -> None:
    pacs = start_orthanc(orthanc_factory, tmp_path / "orthanc", [IMPLICIT])
    ready, outcome = await through_the_pipeline(nc, nats_server, pacs, syntax, tmp_path / "s")
    assert isinstance(outcome, ev.Dispatched), outcome
    stored = await asyncio.to_thread(pacs.instances)
    assert stored == {r.sop_instance_uid: IMPLICIT for r in ready.results}
    made = await result_pixels(nc, ready)
    for sop, pixels in made.items():
        kept = await asyncio.to_thread(pacs.dataset, sop)
        assert np.array_equal(kept.pixel_array, pixels), sop  # lossless, and the same image


@needs_orthanc
async def test_an_orthanc_refusing_compressed_syntaxes_gets_compressed_results_decompressed(
    nc: Client, nats_server: NatsServer, tmp_path: Path, orthanc_factory: list[Orthanc]
) -> None:
    pacs = start_orthanc(orthanc_factory, tmp_path / "orthanc", [EXPLICIT, IMPLICIT])
    ready, outcome = await through_the_pipeline(nc, nats_server, pacs, "jpeg2000", tmp_path / "s")
    assert isinstance(outcome, ev.Dispatched), outcome
    stored = await asyncio.to_thread(pacs.instances)
    assert stored == {r.sop_instance_uid: EXPLICIT for r in ready.results}
    made = await result_pixels(nc, ready)
    for sop, pixels in made.items():
        assert np.array_equal((await asyncio.to_thread(pacs.dataset, sop)).pixel_array, pixels)


@needs_orthanc
async def test_an_orthanc_refusing_every_syntax_offered_is_one_dispatch_failed_within_seconds(
    nc: Client, nats_server: NatsServer, tmp_path: Path, orthanc_factory: list[Orthanc]
) -> None:
    """It takes only JPEG-LS: nothing pacsor can offer for an uncompressed Secondary Capture.
    With the default 12 tries, one try and a DispatchFailed saying why, not "unreachable";
    a replay to it is refused the same way, after one try."""
    pacs = start_orthanc(orthanc_factory, tmp_path / "orthanc", [str(JPEGLSLossless)])
    simulator = SimulatorSettings(token=TOKEN, running_polls=0)
    with running_simulator(simulator) as (api_url, _):
        settings = site(nats_server.url, api_url, pacs)
        async with running_gateway(settings, PIPELINE):
            study, _ = await send_study(settings, tmp_path / "s", images=2)
            ready = await wait_for_event(nc, study, of_type(ev.ResultReady), 60)
            outcome = await wait_for_event(nc, study, of_type(ev.DispatchFailed), 60)
            assert isinstance(ready, ev.ResultReady)
            await EventLog(nc.jetstream()).publish(
                ev.DispatchReplayRequested(
                    study_uid=study,
                    core=ready.core,
                    attempt=ready.attempt,
                    destination=pacs.destination,
                    replay_id="r1",
                    requested_by="test",
                    since=ready.occurred_at,
                )
            )
            replayed = await wait_for_event(
                nc, study, lambda e: isinstance(e, ev.DispatchFailed) and e.replay_id == "r1", 60
            )
    assert isinstance(outcome, ev.DispatchFailed), outcome
    assert outcome.tries == 1
    assert (outcome.occurred_at - ready.occurred_at).total_seconds() < 5
    assert {o.status for o in outcome.refused} == {0x0122} and len(outcome.refused) == 4
    assert outcome.undelivered == () and outcome.delivered == ()
    refusal = (
        f"Secondary Capture Image Storage ({SC}) refused in every syntax proposed: "
        "Explicit VR Little Endian, Implicit VR Little Endian"
    )
    assert refusal in outcome.reason
    assert "unreachable" not in outcome.reason
    assert isinstance(replayed, ev.DispatchFailed)
    assert replayed.tries == 1 and refusal in replayed.reason
    assert await asyncio.to_thread(pacs.instances) == {}


# --- pacsor echo and pacsor check negotiate what pacsor sends ------------------------------


def only_secondary_capture_pacs(port: int) -> ThreadedAssociationServer:
    """A PACS that stores Secondary Capture and refuses every other SOP class."""
    ae = AE(ae_title="SCONLY")
    ae.add_supported_context(Verification)
    ae.add_supported_context(SC, ALL_TRANSFER_SYNTAXES)
    server = ae.start_server(("127.0.0.1", port), block=False)
    assert server is not None
    return server


@needs_orthanc
def test_echo_says_which_result_classes_a_pacs_refuses(
    tmp_path: Path, orthanc_factory: list[Orthanc]
) -> None:
    implicit_only = start_orthanc(orthanc_factory, tmp_path / "implicit", [IMPLICIT])
    jpeg_ls_only = start_orthanc(orthanc_factory, tmp_path / "jpegls", [str(JPEGLSLossless)])
    port = free_port()
    sc_only = only_secondary_capture_pacs(port)
    try:
        started = time.monotonic()
        result = pacsor_cli(
            "echo",
            implicit_only.destination,
            jpeg_ls_only.destination,
            f"SCONLY@127.0.0.1:{port}",
            cwd=tmp_path,
            OUTPUT_FORMAT="gsps",
        )
    finally:
        sc_only.shutdown()
    assert result.returncode == 1, result.stderr
    both = "(Explicit VR Little Endian, Implicit VR Little Endian)"
    assert result.stdout.splitlines() == [
        f"{implicit_only.destination}: ok; stores Secondary Capture Image Storage "
        "(Implicit VR Little Endian only: results are converted), Grayscale Softcopy "
        "Presentation State Storage (Implicit VR Little Endian only: results are converted)",
        f"{jpeg_ls_only.destination}: C-ECHO ok; refuses Secondary Capture Image Storage in "
        f"every syntax proposed {both}; Grayscale Softcopy Presentation State Storage in every "
        f"syntax proposed {both}",
        f"SCONLY@127.0.0.1:{port}: C-ECHO ok; refuses Grayscale Softcopy Presentation State "
        f"Storage in every syntax proposed {both}",
    ]
    assert time.monotonic() - started < 30


@needs_orthanc
def test_check_fails_a_destination_that_refuses_the_results(
    tmp_path: Path, orthanc_factory: list[Orthanc], nats_server: NatsServer
) -> None:
    refusing = start_orthanc(orthanc_factory, tmp_path / "jpegls", [str(JPEGLSLossless)])
    everything = start_orthanc(orthanc_factory, tmp_path / "all", None)
    result = pacsor_cli(
        "check",
        cwd=tmp_path,
        NATS_URL=nats_server.url,
        TOKEN=TOKEN,
        API_URL=f"http://127.0.0.1:{free_port()}",
        PACS_IP="127.0.0.1",
        PACS_PORT=str(refusing.port),
        PACS_AET=refusing.ae_title,
        DESTINATIONS=everything.destination,
        STRUCTURED_REPORT_FORMAT="normal",
    )
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert f"ok    C-ECHO {refusing.destination}: answers" in lines
    [refused] = [line for line in lines if line.startswith(f"FAIL  C-STORE {refusing.destination}")]
    assert "refuses Secondary Capture Image Storage in every syntax proposed" in refused
    assert "Basic Text SR Storage" in refused and "Comprehensive SR Storage" in refused
    assert (
        f"ok    C-STORE {everything.destination}: stores Secondary Capture Image Storage, "
        "Basic Text SR Storage, Comprehensive SR Storage"
    ) in lines
