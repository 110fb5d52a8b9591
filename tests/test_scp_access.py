"""Who may store: ALLOWED_CALLING_AETS, and DICOM TLS with DCMTK's storescu and openssl."""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import time
from pathlib import Path

import pytest
from nats.aio.client import Client
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from pacsor.config import ConfigError
from pacsor.devtools.sample_study import make_study
from pacsor.dicom.scp_transport import server_context
from pacsor.domain import events as ev
from pacsor.jetstream.eventlog import EventLog
from pacsor.jetstream.subjects import site_events
from pacsor.process.counters import ASSOCIATIONS_REJECTED, SCP_CONNECTIONS_DROPPED
from tests.certificates import authority, certificate
from tests.harness import running_gateway, site_settings, wait_for_event, write_study
from tests.nats_server import NatsServer, free_port
from tests.test_dcmtk import DCMTK, tool


def associate(port: int, calling: str, source: str = "127.0.0.1") -> tuple[bool, tuple[int, ...]]:
    """(established, (result, source, diagnostic) of a rejection) for one association."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="MILVUE", bind_address=(source, 0))
    if assoc.is_established:
        assoc.release()
        return True, ()
    rj = assoc.acceptor.primitive
    return False, (rj.result, rj.result_source, rj.diagnostic) if rj is not None else ()


async def test_only_listed_callers_are_accepted_and_others_recorded(
    nc: Client, nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    settings = site_settings(nats_server.url, ALLOWED_CALLING_AETS="MODALITY, CT1@127.0.0.1")
    before = ASSOCIATIONS_REJECTED.labels("calling_ae_title")._value.get()
    caplog.set_level(logging.INFO, logger="pacsor.scp")
    async with running_gateway(settings, ("scp",)):
        port = settings.port
        assert await asyncio.to_thread(associate, port, "MODALITY") == (True, ())
        assert await asyncio.to_thread(associate, port, "MODALITY", "127.0.0.2") == (True, ())
        assert await asyncio.to_thread(associate, port, "CT1") == (True, ())
        # rejected-permanent, service user, calling AE title not recognised
        assert await asyncio.to_thread(associate, port, "INTRUDER") == (False, (1, 1, 3))
        # CT1 is pinned to 127.0.0.1: the same title from another address is refused.
        assert await asyncio.to_thread(associate, port, "CT1", "127.0.0.2") == (False, (1, 1, 3))
        if DCMTK is not None:  # what a modality's operator reads
            echo = await asyncio.to_thread(
                subprocess.run,
                [tool("echoscu"), "-aet", "DCMTKCT", "-aec", "MILVUE", "127.0.0.1", str(port)],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert echo.returncode != 0
            assert "Calling AE Title Not Recognized" in echo.stderr + echo.stdout, echo.stderr

    rejected = [r for r in caplog.records if r.getMessage() == "association rejected"]
    dcmtk = [("DCMTKCT", "127.0.0.1")] if DCMTK is not None else []
    assert [(r.calling_ae_title, r.address.split(":")[0]) for r in rejected] == [  # type: ignore[attr-defined]
        ("INTRUDER", "127.0.0.1"),
        ("CT1", "127.0.0.2"),
        *dcmtk,
    ]
    assert ASSOCIATIONS_REJECTED.labels("calling_ae_title")._value.get() == before + 2 + len(dcmtk)
    assert any(r.getMessage() == "only known callers may store" for r in caplog.records)

    subject = site_events(ev.AssociationRejected)
    recorded = await EventLog(nc.jetstream()).read(subject)
    assert {r.subject for r in recorded} == {subject}
    assert [(r.event.calling_ae_title, r.event.address) for r in recorded] == [  # type: ignore[attr-defined]
        ("INTRUDER", "127.0.0.1"),
        ("CT1", "127.0.0.2"),
        *dcmtk,
    ]


async def test_unset_allow_list_accepts_everyone_and_says_so(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    settings = site_settings(nats_server.url)
    caplog.set_level(logging.INFO, logger="pacsor.scp")
    async with running_gateway(settings, ("scp",)):
        assert await asyncio.to_thread(associate, settings.port, "ANYONE") == (True, ())
    said = [r for r in caplog.records if "ALLOWED_CALLING_AETS is not set" in r.getMessage()]
    assert len(said) == 1


# --- TLS ------------------------------------------------------------------------------------


@pytest.fixture
def certificates(tmp_path: Path) -> Path:
    return site_certificates(tmp_path / "tls")


def site_certificates(folder: Path) -> Path:
    """A site CA with the SCP's certificate and a good client's, and a client of another CA."""
    folder.mkdir()
    authority(folder, "siteca")
    authority(folder, "otherca")
    certificate(folder, "scp", "siteca", "server")
    certificate(folder, "modality", "siteca", "client")
    certificate(folder, "stranger", "otherca", "client")
    return folder


def storescu_tls(
    port: int, files: list[Path], certs: Path, client: str | None
) -> subprocess.CompletedProcess[str]:
    """DCMTK's storescu over TLS, with `client`'s certificate (None: anonymous TLS)."""
    identity = ["+tla"] if client is None else ["+tls", f"{client}.key", f"{client}.pem"]
    return subprocess.run(
        [
            tool("storescu"),
            *identity,
            "+cf",
            "siteca.pem",
            "-aet",
            "MODALITY",
            "-aec",
            "MILVUE",
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
        cwd=certs,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.dcmtk
@pytest.mark.skipif(DCMTK is None, reason="DCMTK is not installed (apt-get install dcmtk)")
async def test_tls_with_client_certificates(
    nc: Client, nats_server: NatsServer, certificates: Path, tmp_path: Path
) -> None:
    tls_port = free_port()
    settings = site_settings(
        nats_server.url,
        DICOM_TLS_CERT=str(certificates / "scp.pem"),
        DICOM_TLS_KEY=str(certificates / "scp.key"),
        DICOM_TLS_CA=str(certificates / "siteca.pem"),
        DICOM_TLS_PORT=str(tls_port),
    )
    good = make_study(2)
    good_files = write_study(tmp_path / "good", good)
    refused = make_study(1)
    refused_files = write_study(tmp_path / "refused", refused)
    handshakes = SCP_CONNECTIONS_DROPPED.labels("tls_handshake")._value.get()
    async with running_gateway(settings, ("scp",)) as ready:
        assert ready["dicom_tls_port"] == tls_port
        # A plaintext client on the TLS port that connects and says nothing, held open
        # while a good client stores: it must not stall the TLS listener.
        silent = socket.create_connection(("127.0.0.1", tls_port))
        plaintext = socket.create_connection(("127.0.0.1", tls_port))
        plaintext.sendall(b"\x01\x00\x00\x00\x00\x44" + b"\x00" * 40)  # an A-ASSOCIATE-RQ start
        try:
            started = time.monotonic()
            result = await asyncio.to_thread(
                storescu_tls, tls_port, good_files, certificates, "modality"
            )
            assert result.returncode == 0, result.stderr
            assert time.monotonic() - started < 10
        finally:
            silent.close()
            plaintext.close()
        for ds in good:
            await wait_for_event(
                nc,
                str(ds.StudyInstanceUID),
                lambda e, sop=str(ds.SOPInstanceUID): (
                    isinstance(e, ev.InstanceReceived) and e.sop_instance_uid == sop
                ),
                timeout=10,
            )
        # A certificate from another CA, and none at all: refused at the handshake.
        for client in ("stranger", None):
            result = await asyncio.to_thread(
                storescu_tls, tls_port, refused_files, certificates, client
            )
            assert result.returncode != 0
        # The plaintext port still serves plaintext.
        assert await asyncio.to_thread(associate, settings.port, "MODALITY") == (True, ())

    assert SCP_CONNECTIONS_DROPPED.labels("tls_handshake")._value.get() >= handshakes + 3
    history = await EventLog(nc.jetstream()).history(str(refused[0].StudyInstanceUID))
    assert history == []


def test_bad_tls_settings_name_the_setting(certificates: Path, tmp_path: Path) -> None:
    cert, key, ca = certificates / "scp.pem", certificates / "scp.key", certificates / "siteca.pem"
    assert server_context(cert, key, ca) is not None
    assert server_context(None, None, None) is None
    unreadable = tmp_path / "unreadable.pem"
    unreadable.write_text("-----BEGIN CERTIFICATE-----\n")
    unreadable.chmod(0)
    cases = [
        ((cert, tmp_path / "missing.key", None), "DICOM_TLS_KEY: cannot read"),
        ((cert, None, None), "DICOM_TLS_KEY: not set"),
        ((None, None, ca), "DICOM_TLS_CA: set, but"),
        ((key, key, None), "DICOM_TLS_CERT: .* is not a PEM certificate"),
        ((cert, cert, None), "DICOM_TLS_KEY: .* is not a PEM private key"),
        ((cert, certificates / "modality.key", None), "DICOM_TLS_KEY: .* does not go with"),
        ((cert, key, key), "DICOM_TLS_CA: "),
    ]
    import os

    if os.geteuid() != 0:  # root reads any file
        cases.append(((unreadable, key, None), "DICOM_TLS_CERT: cannot read"))
    for args, message in cases:
        with pytest.raises(ConfigError, match=f"^{message}"):
            server_context(*args)


def test_bad_tls_setting_is_one_start_up_line(tmp_path: Path, nats_server: NatsServer) -> None:
    from tests.harness import pacsor_cli

    result = pacsor_cli(
        "run",
        "scp",
        cwd=tmp_path,
        NATS_URL=nats_server.url,
        PORT=str(free_port()),
        DICOM_TLS_CERT=str(tmp_path / "absent.pem"),
        DICOM_TLS_KEY=str(tmp_path / "absent.key"),
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("pacsor: DICOM_TLS_CERT: cannot read")


async def test_cap_per_address_rejects_with_the_standard_reason(nats_server: NatsServer) -> None:
    settings = site_settings(nats_server.url, MAX_ASSOCIATIONS="4", MAX_ASSOCIATIONS_PER_HOST="1")
    before = ASSOCIATIONS_REJECTED.labels("host_limit")._value.get()
    async with running_gateway(settings, ("scp",)):
        ae = AE(ae_title="HOLDER")
        ae.add_requested_context(Verification)
        held = await asyncio.to_thread(ae.associate, "127.0.0.1", settings.port, ae_title="MILVUE")
        assert held.is_established
        try:
            # rejected-transient, service provider (presentation), local limit exceeded
            over = await asyncio.to_thread(associate, settings.port, "SECOND")
            assert over == (False, (2, 3, 2))
            # Another address is not concerned.
            other = await asyncio.to_thread(associate, settings.port, "OTHER", "127.0.0.2")
            assert other == (True, ())
        finally:
            held.release()
        # Once the first one is closed, the address may associate again (the SCP's thread for
        # it ends just after the release: polled, as nothing outside can await it).
        async with asyncio.timeout(10):
            while await asyncio.to_thread(associate, settings.port, "SECOND") != (True, ()):
                await asyncio.sleep(0.05)
    assert ASSOCIATIONS_REJECTED.labels("host_limit")._value.get() >= before + 1
