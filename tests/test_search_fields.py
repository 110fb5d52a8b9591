"""What operators search by enters the events; who the patient is never does."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx
import pytest
from nats.aio.client import Client

from pacsor.devtools.sample_study import make_study
from pacsor.dicom.storage_scu import send_files
from pacsor.jetstream.subjects import ALL_EVENTS, EVENTS_STREAM
from tests.admin_data import admin_settings
from tests.harness import running_gateway, write_study
from tests.nats_server import NatsServer, free_port

PATIENT = ("DOE^JANE", "PID-4711-X", "19011231")


async def test_accession_date_and_description_are_searchable_patients_never_recorded(
    nc: Client, nats_server: NatsServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    study = make_study(2, rows=64, columns=64)
    for ds in study:
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = PATIENT
        ds.AccessionNumber = "RX-2026-0042"
        ds.StudyDescription = "THORAX FACE"
        ds.StudyDate = "20260314"
    uid = str(study[0].StudyInstanceUID)
    paths = write_study(tmp_path / "study", study)
    settings = admin_settings(nats_server.url, tmp_path, PORT=str(free_port()), LOG_LEVEL="DEBUG")

    caplog.set_level(logging.DEBUG)
    async with (
        running_gateway(settings, ("scp", "admin")) as ready,
        httpx.AsyncClient(base_url=ready["admin_url"], timeout=30) as admin,
    ):
        results = await asyncio.to_thread(
            send_files, "127.0.0.1", settings.port, settings.milvue_aet, paths
        )
        assert [status for _, status in results] == [0, 0]
        info = await nc.jetstream().stream_info(EVENTS_STREAM)
        view = (await admin.get(f"/studies/{uid}", params={"after": info.state.last_seq})).json()
        found = await admin.get("/studies", params={"q": "RX-2026-0042"})

    assert [s["study_instance_uid"] for s in found.json()["studies"]] == [uid]
    assert (view["accession_number"], view["study_date"], view["study_description"]) == (
        "RX-2026-0042",
        "20260314",
        "THORAX FACE",
    )

    recorded = b""
    sub = await nc.jetstream().subscribe(ALL_EVENTS, ordered_consumer=True)
    for _ in range(info.state.messages):
        recorded += (await sub.next_msg(timeout=10)).data
    await sub.unsubscribe()
    assert recorded.count(b'"accession_number":"RX-2026-0042"') == 2
    assert b'"schema_version":2' in recorded
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "RX-2026-0042" in logged  # the events are logged: the check below is meaningful
    # Long enough not to turn up by chance in a timestamp or a port number.
    for text in (*PATIENT, "DOE", "JANE", "4711-X"):
        assert text.encode() not in recorded, text
        assert text not in logged, text
