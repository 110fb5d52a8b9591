"""DICOM TLS for dispatch: a destination marked `?tls` is reached over TLS, verifying the PACS
with DICOM_TLS_CA and presenting DICOM_TLS_CERT/DICOM_TLS_KEY. The PACS is DCMTK's
`storescp +tls`, which requires a client certificate; certificates are made here with openssl."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client
from pydicom import dcmread

from pacsor.devtools.simulator import SimulatorSettings, running_simulator
from pacsor.dicom.storage_scu import echo
from pacsor.dicom.tls import client_context
from pacsor.domain import events as ev
from pacsor.errors import ConfigError
from tests.certificates import OPENSSL, authority, certificate
from tests.harness import (
    TOKEN,
    dispatched_uids,
    of_type,
    pacsor_cli,
    running_gateway,
    send_study,
    site_settings,
    wait_for_event,
)
from tests.nats_server import NatsServer, free_port

STORESCP = shutil.which("storescp", path="/usr/bin:/usr/local/bin")
pytestmark = [
    pytest.mark.dcmtk,
    pytest.mark.skipif(STORESCP is None or OPENSSL is None, reason="needs DCMTK and openssl"),
]


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    """The site's CA signing the PACS's and pacsor's certificates; another CA signing a
    PACS certificate that pacsor must refuse."""
    folder = tmp_path / "certs"
    folder.mkdir()
    authority(folder, "site")
    authority(folder, "other")
    certificate(folder, "pacs", "site", "server")
    certificate(folder, "pacsor", "site", "client")
    certificate(folder, "impostor", "other", "server")
    return folder


class TlsStorescp:
    """DCMTK's storescp in TLS mode, requiring a client certificate signed by the site CA."""

    def __init__(self, certs: Path, folder: Path, server: str = "pacs") -> None:
        assert STORESCP is not None
        self.port = free_port()
        self.folder = folder
        folder.mkdir(parents=True)
        self.process = subprocess.Popen(
            [
                STORESCP, "--aetitle", "TLSPACS", "--output-directory", str(folder),
                "+tls", str(certs / f"{server}.key"), str(certs / f"{server}.pem"),
                "+cf", str(certs / "site.pem"), "--require-peer-cert", str(self.port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

    @property
    def destination(self) -> str:
        return f"TLSPACS@127.0.0.1:{self.port}?tls"

    async def ready(self, certs: Path) -> None:
        """Until it answers a C-ECHO over TLS (trusting any CA used here)."""
        context = client_context(
            str(certs / "site.pem"), str(certs / "pacsor.pem"), str(certs / "pacsor.key")
        )
        context.load_verify_locations(str(certs / "other.pem"))
        async with asyncio.timeout(30):
            while await asyncio.to_thread(
                echo, "127.0.0.1", self.port, "TLSPACS", "PROBE", 2.0, context
            ):
                assert self.process.poll() is None, "storescp exited"
                await asyncio.sleep(0.1)  # polling its readiness: it has no event to await

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture
def tls_pacs(certs: Path, tmp_path: Path) -> Iterator[TlsStorescp]:
    pacs = TlsStorescp(certs, tmp_path / "received")
    yield pacs
    pacs.stop()


@pytest.fixture
def impostor(certs: Path, tmp_path: Path) -> Iterator[TlsStorescp]:
    pacs = TlsStorescp(certs, tmp_path / "impostor", server="impostor")
    yield pacs
    pacs.stop()


def tls_env(certs: Path) -> dict[str, str]:
    return {
        "DICOM_TLS_CA": str(certs / "site.pem"),
        "DICOM_TLS_CERT": str(certs / "pacsor.pem"),
        "DICOM_TLS_KEY": str(certs / "pacsor.key"),
    }


async def test_results_are_stored_over_tls(
    nc: Client, nats_server: NatsServer, tmp_path: Path, certs: Path, tls_pacs: TlsStorescp
) -> None:
    await tls_pacs.ready(certs)
    with running_simulator(SimulatorSettings(token=TOKEN, running_polls=0)) as (api_url, _):
        settings = site_settings(
            nats_server.url, API_URL=api_url, DESTINATIONS=tls_pacs.destination, **tls_env(certs)
        )
        async with running_gateway(settings):
            study, _ = await send_study(settings, tmp_path / "study", images=2)
            done = await wait_for_event(nc, study, of_type(ev.Dispatched), 60)
    assert isinstance(done, ev.Dispatched)
    assert done.destination == f"TLSPACS@127.0.0.1:{tls_pacs.port}"
    stored = {str(dcmread(f).SOPInstanceUID) for f in tls_pacs.folder.iterdir()}
    assert stored == set(await dispatched_uids(nc, done)) and len(stored) == 4


async def test_a_pacs_certified_by_another_ca_is_refused_with_the_reason(
    nc: Client,
    nats_server: NatsServer,
    tmp_path: Path,
    certs: Path,
    impostor: TlsStorescp,
) -> None:
    await impostor.ready(certs)
    with running_simulator(SimulatorSettings(token=TOKEN, running_polls=0)) as (api_url, _):
        settings = site_settings(
            nats_server.url,
            API_URL=api_url,
            RETRY_MAX_ATTEMPTS="2",
            DESTINATIONS=impostor.destination,
            **tls_env(certs),
        )
        async with running_gateway(settings):
            study, _ = await send_study(settings, tmp_path / "study", images=1)
            failed = await wait_for_event(nc, study, of_type(ev.DispatchFailed), 60)
    assert isinstance(failed, ev.DispatchFailed)
    assert "TLS: the peer's certificate is not trusted" in failed.reason
    assert "unable to get local issuer certificate" in failed.reason
    assert list(impostor.folder.iterdir()) == []


async def test_echo_and_check_go_over_tls(
    tmp_path: Path,
    certs: Path,
    tls_pacs: TlsStorescp,
    impostor: TlsStorescp,
    nats_server: NatsServer,
) -> None:
    await tls_pacs.ready(certs)
    await impostor.ready(certs)
    echoed = await asyncio.to_thread(
        pacsor_cli, "echo", tls_pacs.destination, impostor.destination, cwd=tmp_path,
        **tls_env(certs),
    )  # fmt: skip
    assert echoed.returncode == 1
    assert echoed.stdout.splitlines() == [
        f"{tls_pacs.destination}: ok; stores Secondary Capture Image Storage",
        f"{impostor.destination}: TLS: the peer's certificate is not trusted "
        "(unable to get local issuer certificate)",
    ]
    # Without pacsor's certificate, the PACS (which requires one) ends the handshake.
    bare = await asyncio.to_thread(
        pacsor_cli, "echo", tls_pacs.destination, cwd=tmp_path,
        DICOM_TLS_CA=str(certs / "site.pem"),
    )  # fmt: skip
    assert bare.returncode == 1
    assert bare.stdout.splitlines() == [
        f"{tls_pacs.destination}: TLS handshake failed (TLSV13_ALERT_CERTIFICATE_REQUIRED)"
    ]
    checked = await asyncio.to_thread(
        pacsor_cli, "check", cwd=tmp_path, NATS_URL=nats_server.url, TOKEN=TOKEN,
        API_URL=f"http://127.0.0.1:{free_port()}", DESTINATIONS=tls_pacs.destination,
        **tls_env(certs),
    )  # fmt: skip
    assert f"ok    C-ECHO {tls_pacs.destination}: answers" in checked.stdout.splitlines()
    assert (
        f"ok    C-STORE {tls_pacs.destination}: stores Secondary Capture Image Storage"
        in checked.stdout.splitlines()
    )


def test_an_unreadable_tls_file_is_one_line_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^DICOM_TLS_CA: cannot read"):
        client_context(str(tmp_path / "missing.pem"))
    result = pacsor_cli(
        "run", "dispatcher", cwd=tmp_path, DESTINATIONS="P@127.0.0.1:2762?tls",
        DICOM_TLS_CA=str(tmp_path / "missing.pem"),
    )  # fmt: skip
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("pacsor: DICOM_TLS_CA: cannot read ")
