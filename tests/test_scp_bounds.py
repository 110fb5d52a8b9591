"""The SCP's size and nesting bounds, in process against a real nats-server and DICOM peers:
spooled instances stored byte for byte (deflated ones too), MAX_INSTANCE_BYTES refused with
its status and nothing stored, and sequences nested too deep refused however encoded."""

from __future__ import annotations

import asyncio
import struct
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
from pacsor.dicom.structure import MAX_DEPTH, Truncated, check_whole
from pacsor.domain import events as ev
from pacsor.jetstream.blobs import BlobStore
from pacsor.jetstream.eventlog import EventLog
from pacsor.jetstream.subjects import INSTANCES_BUCKET
from tests.harness import running_gateway, site_settings, write_study
from tests.nats_server import NatsServer
from tests.test_ingest import dataset_part

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
    big = make_image(study, rows=3000, columns=3000)  # 18 MB
    paths = write_study(tmp_path / "big", [big])
    settings = site_settings(nats_server.url, MAX_INSTANCE_BYTES=str(LIMIT))
    largest = 0
    sending = threading.Event()

    def watch() -> None:
        # Sampled while the instance arrives: the spool must not grow with it.
        nonlocal largest
        while not sending.wait(0.01):
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


def _item(body: bytes) -> bytes:
    return struct.pack("<HHI", 0xFFFE, 0xE000, len(body)) + body


def defined_nest_explicit(levels: int) -> bytes:
    """ReferencedImageSequence nested `levels` deep, every length defined (explicit VR)."""
    inner = struct.pack("<HH2sH", 0x0008, 0x0060, b"CS", 2) + b"CR"
    for _ in range(levels):
        inner = struct.pack("<HH2sHI", 0x0008, 0x1140, b"SQ", 0, len(_item(inner))) + _item(inner)
    return inner


def defined_nest_implicit(levels: int) -> bytes:
    """The same in implicit VR, where only the data dictionary says (0008,1140) is an SQ."""
    inner = struct.pack("<HHI", 0x0008, 0x0060, 2) + b"CR"
    for _ in range(levels):
        inner = struct.pack("<HHI", 0x0008, 0x1140, len(_item(inner))) + _item(inner)
    return inner


def is_sequence(tag: int) -> bool:
    return tag == 0x00081140


@pytest.mark.parametrize(
    ("encode", "implicit"), [(defined_nest_explicit, False), (defined_nest_implicit, True)]
)
def test_nesting_is_bounded_with_defined_lengths(encode: object, implicit: bool) -> None:
    assert callable(encode)
    check_whole(encode(MAX_DEPTH), implicit, is_sequence=is_sequence)  # deep, but allowed
    with pytest.raises(Truncated, match="nested deeper than"):
        check_whole(encode(MAX_DEPTH + 1), implicit, is_sequence=is_sequence)
    with pytest.raises(Truncated, match="nested deeper than"):
        check_whole(encode(10_000), implicit, is_sequence=is_sequence)


def test_an_item_cut_inside_a_defined_sequence_is_malformed() -> None:
    whole = defined_nest_explicit(3)
    # Shorten the innermost element's declared length: the item no longer ends where it says.
    broken = whole[:-4] + struct.pack("<H", 1) + whole[-2:]
    with pytest.raises(Truncated):
        check_whole(broken, False)


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
