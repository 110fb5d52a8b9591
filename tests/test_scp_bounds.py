"""The SCP's size and nesting bounds, in process against a real nats-server and DICOM peers:
spooled instances stored byte for byte (deflated ones too), MAX_INSTANCE_BYTES refused with
its status and nothing stored, and a sequence nested too deep refused with its status."""

from __future__ import annotations

import asyncio
import tempfile
import threading
from pathlib import Path

import pytest
from nats.aio.client import Client
from pydicom import dcmread
from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid

from pacsor.config import Settings
from pacsor.devtools.sample_study import make_image
from pacsor.dicom.storage_scu import send_files
from pacsor.domain import events as ev
from pacsor.jetstream.blobs import BlobStore
from pacsor.jetstream.eventlog import EventLog
from pacsor.jetstream.subjects import INSTANCES_BUCKET
from tests.harness import running_gateway, site_settings, write_study
from tests.nats_server import NatsServer
from tests.test_ingest import dataset_part
from tests.unit.test_structure_depth import defined_nest_explicit

LIMIT = 4 * 1024 * 1024


async def send(settings: Settings, paths: list[Path]) -> list[int]:
    results = await asyncio.to_thread(
        send_files, "127.0.0.1", settings.port, settings.milvue_aet, paths
    )
    return [status for _, status in results]


async def test_spooled_instances_are_stored_byte_for_byte(
    nc: Client, nats_server: NatsServer, tmp_path: Path
) -> None:
    study = str(generate_uid())
    large = make_image(study, rows=1200, columns=1200)  # 2.9 MB: several 512 KiB chunks
    deflated = make_image(study, rows=300, columns=300)
    deflated.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    paths = write_study(tmp_path / "study", [large, deflated])
    settings = site_settings(nats_server.url, MAX_INSTANCE_BYTES=str(LIMIT))
    async with running_gateway(settings, ("scp",)):
        # One association each: one presentation context per SOP class takes one syntax.
        assert await send(settings, paths[:1]) == [0]
        assert await send(settings, paths[1:]) == [0]
    history = await EventLog(nc.jetstream()).history(study)
    received = {
        r.event.sop_instance_uid: r.event
        for r in history
        if isinstance(r.event, ev.InstanceReceived)
    }
    store = BlobStore(nc, nc.jetstream(), INSTANCES_BUCKET)
    for ds, path in zip((large, deflated), paths, strict=True):
        event = received[str(ds.SOPInstanceUID)]
        stored = await store.get(event.object_name)
        assert event.size == len(stored)
        assert dataset_part(stored) == dataset_part(path.read_bytes())  # as sent, not re-encoded
    assert received[str(deflated.SOPInstanceUID)].transfer_syntax_uid == str(
        DeflatedExplicitVRLittleEndian
    )
    assert received[str(deflated.SOPInstanceUID)].study_date == str(deflated.StudyDate)


async def test_over_max_instance_bytes_is_refused_and_not_kept(
    nc: Client, nats_server: NatsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    study = str(generate_uid())
    big = make_image(study, rows=4500, columns=4500)  # 40 MB: long enough to be watched
    paths = write_study(tmp_path / "big", [big])
    settings = site_settings(nats_server.url, MAX_INSTANCE_BYTES=str(LIMIT))
    largest = 0
    sending = threading.Event()

    def watch() -> None:
        # Sampled while the instance arrives: the spool must not grow with it.
        nonlocal largest
        while not sending.wait(0.002):
            for file in spool.iterdir():
                try:
                    largest = max(largest, file.stat().st_size)
                except FileNotFoundError:
                    continue

    watcher = threading.Thread(target=watch)
    async with running_gateway(settings, ("scp",)):
        watcher.start()
        try:
            assert await send(settings, paths) == [0xA710]
        finally:
            sending.set()
            watcher.join()
    assert 0 < largest < LIMIT + 4 * settings.max_pdu_bytes
    assert list(spool.iterdir()) == []
    history = await EventLog(nc.jetstream()).read()
    assert not [r for r in history if isinstance(r.event, ev.InstanceReceived)]
    [rejected] = [r.event for r in history if isinstance(r.event, ev.InstanceRejected)]
    assert rejected.dimse_status == 0xA710
    assert "MAX_INSTANCE_BYTES" in rejected.reason
    objects = await nc.jetstream().stream_info(f"OBJ_{INSTANCES_BUCKET}")
    assert objects.state.messages == 0


async def test_deeply_nested_defined_length_sequence_gets_its_status(
    nc: Client, nats_server: NatsServer, tmp_path: Path
) -> None:
    study = str(generate_uid())
    [path] = write_study(tmp_path / "nested", [make_image(study)])
    data = path.read_bytes()
    # Appended after the pixel data: order does not matter to the check, depth does.
    path.write_bytes(data + defined_nest_explicit(200))
    assert dcmread(path, stop_before_pixels=True).StudyInstanceUID == study
    settings = site_settings(nats_server.url, MAX_INSTANCE_BYTES=str(LIMIT))
    async with running_gateway(settings, ("scp",)):
        assert await send(settings, [path]) == [0xC222]
    history = await EventLog(nc.jetstream()).read()
    assert [(type(r.event), getattr(r.event, "dimse_status", None)) for r in history] == [
        (ev.InstanceRejected, 0xC222)
    ]
