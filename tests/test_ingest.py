"""The Storage SCP against real DICOM peers and a real nats-server."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import pytest
from nats.aio.client import Client
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import SecondaryCaptureImageStorage, Verification

from pacsor.config import Settings, load_settings
from pacsor.devtools.sample_study import make_image, make_study
from pacsor.dicom.storage_scu import send_files
from pacsor.domain import events as ev
from pacsor.jetstream.blobs import BlobStore, sha256_digest
from pacsor.jetstream.eventlog import EventLog
from pacsor.jetstream.subjects import INSTANCES_BUCKET
from tests.harness import of_type, running_gateway, wait_for_event, write_study
from tests.nats_server import NatsServer, free_port


def scp_settings(nats_url: str, **extra: str) -> Settings:
    return load_settings({"NATS_URL": nats_url, "PORT": str(free_port()), **extra}, dotenv=None)


def dataset_part(file_bytes: bytes) -> bytes:
    """The bytes after the file meta group of a Part 10 file."""
    assert file_bytes[128:132] == b"DICM"
    # (0002,0000) UL group length: tag 4 + VR 2 + length 2, then the 4-byte value.
    group_length = struct.unpack("<I", file_bytes[140:144])[0]
    return file_bytes[144 + group_length :]


async def send(settings: Settings, paths: list[Path]) -> list[int]:
    results = await asyncio.to_thread(
        send_files, "127.0.0.1", settings.port, settings.milvue_aet, paths
    )
    return [status for _, status in results]


async def test_study_is_stored_as_received_and_announced(
    nc: Client, nats_server: NatsServer, tmp_path: Path
) -> None:
    settings = scp_settings(nats_server.url)
    study = make_study(4)
    paths = write_study(tmp_path / "study", study)
    async with running_gateway(settings, ("scp",)):
        assert await send(settings, paths) == [0, 0, 0, 0]

    history = await EventLog(nc.jetstream()).history(str(study[0].StudyInstanceUID))
    received = [r.event for r in history if isinstance(r.event, ev.InstanceReceived)]
    assert [e.sop_instance_uid for e in received] == [str(ds.SOPInstanceUID) for ds in study]
    assert all(e.calling_ae_title == "PACSOR_SCU" for e in received)
    assert all(r.subject.endswith(".received") for r in history)

    store = BlobStore(nc, nc.jetstream(), INSTANCES_BUCKET)
    for event, path in zip(received, paths, strict=True):
        stored = await store.get(event.object_name)
        assert len(stored) == event.size
        # Hashed as pynetdicom spooled it, never read back to be named: the digest recorded
        # is that of the bytes stored.
        assert event.digest == sha256_digest(stored)
        # The dataset is byte for byte what the modality sent: no decode/re-encode.
        assert dataset_part(stored) == dataset_part(path.read_bytes())


async def test_same_instance_twice_is_stored_once(
    nc: Client, nats_server: NatsServer, tmp_path: Path
) -> None:
    settings = scp_settings(nats_server.url)
    [path] = write_study(tmp_path, [make_image(generate_uid())])
    async with running_gateway(settings, ("scp",)):
        assert await send(settings, [path]) == [0]
        assert await send(settings, [path]) == [0]
    js = nc.jetstream()
    events = await EventLog(js).read()
    assert len([e for e in events if isinstance(e.event, ev.InstanceReceived)]) == 1
    [received] = [e.event for e in events if isinstance(e.event, ev.InstanceReceived)]
    info = await BlobStore(nc, js, INSTANCES_BUCKET).info(received.object_name)
    assert info is not None
    objects = await js.stream_info(f"OBJ_{INSTANCES_BUCKET}")
    assert objects.state.messages == info.chunks + 1  # its chunks and one metadata message


def write_raw(path: Path, meta_from: Path, body: bytes) -> Path:
    """A file with valid file meta followed by `body` as its dataset."""
    source = meta_from.read_bytes()
    group_length = struct.unpack("<I", source[140:144])[0]
    path.write_bytes(source[: 144 + group_length] + body)
    return path


# pydicom warns while writing the invalid UID.
@pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")
async def test_bad_input_gets_its_failure_status_and_service_continues(
    nc: Client, nats_server: NatsServer, tmp_path: Path
) -> None:
    settings = scp_settings(nats_server.url)
    study_uid = generate_uid()
    [good] = write_study(tmp_path / "good", [make_image(study_uid)])
    no_study = make_image(generate_uid())
    del no_study.StudyInstanceUID
    [missing] = write_study(tmp_path / "missing", [no_study])
    bad_uid = make_image(generate_uid())
    bad_uid.SeriesInstanceUID = "1.2.3.not-a-uid"
    [invalid] = write_study(tmp_path / "invalid", [bad_uid])
    # Whole, but undecodable: SOP Class UID with a value representation that does not exist.
    unknown_vr = struct.pack("<HH", 0x0008, 0x0016) + b"ZZ" + struct.pack("<H", 4) + b"1.2\0"
    garbage = write_raw(tmp_path / "garbage.dcm", good, unknown_vr)
    full = dataset_part(good.read_bytes())
    truncated = write_raw(tmp_path / "truncated.dcm", good, full[: len(full) // 3])

    async with running_gateway(settings, ("scp",)):
        statuses = await send(settings, [garbage, missing, invalid, truncated])
        # PS3.4 C.4.2.1.4: 0xC000-0xCFFF "cannot understand", refined per fault.
        assert [hex(s) for s in statuses] == ["0xc210", "0xc220", "0xc221", "0xc222"]
        # Still serving, on a new association.
        assert await send(settings, [good]) == [0]

    events = [r.event for r in await EventLog(nc.jetstream()).read()]
    rejected = [e for e in events if isinstance(e, ev.InstanceRejected)]
    assert sorted(e.dimse_status for e in rejected) == [0xC210, 0xC220, 0xC221, 0xC222]
    reasons = {e.dimse_status: e.reason for e in rejected}
    assert "Unknown Value Representation 'ZZ'" in reasons[0xC210]
    assert "StudyInstanceUID is missing" in reasons[0xC220]
    assert "SeriesInstanceUID is not a valid UID" in reasons[0xC221]
    assert "malformed dataset" in reasons[0xC222]
    assert all(e.calling_ae_title == "PACSOR_SCU" for e in rejected)
    assert len([e for e in events if isinstance(e, ev.InstanceReceived)]) == 1


async def test_jetstream_down_answers_out_of_resources_then_recovers(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    settings = scp_settings(nats_server.url)
    study = make_study(2)
    paths = write_study(tmp_path, study)
    async with running_gateway(settings, ("scp",)):
        nats_server.stop()
        assert await send(settings, paths[:1]) == [0xA700]
        nats_server.start()  # same port, same store
        # The client reconnects on its own; the sender's retry then succeeds.
        for _ in range(100):
            if await send(settings, paths[:1]) == [0]:
                break
        else:
            pytest.fail("C-STORE never succeeded after NATS came back")
        assert await send(settings, paths[1:]) == [0]


async def test_concurrent_associations(nc: Client, nats_server: NatsServer, tmp_path: Path) -> None:
    settings = scp_settings(nats_server.url)
    studies = [make_study(3) for _ in range(4)]
    async with running_gateway(settings, ("scp",)):
        results = await asyncio.gather(
            *(send(settings, write_study(tmp_path / str(n), s)) for n, s in enumerate(studies))
        )
    assert results == [[0, 0, 0]] * 4
    events = [r.event for r in await EventLog(nc.jetstream()).read()]
    assert len([e for e in events if isinstance(e, ev.InstanceReceived)]) == 12


async def test_echo_and_profile(nats_server: NatsServer, tmp_path: Path) -> None:
    settings = scp_settings(nats_server.url, CONFIG_PROFILE="Default", MILVUE_AET="GATEWAY")
    async with running_gateway(settings, ("scp",)):
        ae = AE(ae_title="ECHOER")
        ae.add_requested_context(Verification)
        ae.add_requested_context(SecondaryCaptureImageStorage)
        assoc = await asyncio.to_thread(
            ae.associate, "127.0.0.1", settings.port, ae_title="GATEWAY"
        )
        assert assoc.is_established
        assert (await asyncio.to_thread(assoc.send_c_echo)).Status == 0
        # Secondary Capture is not in the Default profile: its context is refused.
        accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
        assert str(SecondaryCaptureImageStorage) not in accepted
        assoc.release()
        wrong = AE(ae_title="ECHOER")
        wrong.add_requested_context(Verification)
        other = await asyncio.to_thread(
            wrong.associate, "127.0.0.1", settings.port, ae_title="NOTME"
        )
        assert other.is_rejected


async def test_instance_event_can_be_awaited(
    nc: Client, nats_server: NatsServer, tmp_path: Path
) -> None:
    settings = scp_settings(nats_server.url)
    ds = make_image(generate_uid())
    async with running_gateway(settings, ("scp",)):
        assert await send(settings, write_study(tmp_path, [ds])) == [0]
        event = await wait_for_event(nc, str(ds.StudyInstanceUID), of_type(ev.InstanceReceived), 10)
    assert isinstance(event, ev.InstanceReceived)
    assert event.sop_class_uid == str(ds.SOPClassUID)
    assert event.transfer_syntax_uid == "1.2.840.10008.1.2.1"


async def test_resend_of_a_deleted_instance_stores_it_again(
    nc: Client, nats_server: NatsServer, tmp_path: Path
) -> None:
    settings = scp_settings(nats_server.url)
    [path] = write_study(tmp_path, [make_image(generate_uid())])
    js = nc.jetstream()
    store = BlobStore(nc, js, INSTANCES_BUCKET)
    async with running_gateway(settings, ("scp",)):
        assert await send(settings, [path]) == [0]
        [received] = [
            r.event for r in await EventLog(js).read() if isinstance(r.event, ev.InstanceReceived)
        ]
        # Removed, as retention does: the name's metadata is a deletion marker now, which a
        # metadata written only where none is (sequence 0) must not take for the object.
        assert await store.delete(received.object_name)
        assert await store.info(received.object_name) is None
        assert await send(settings, [path]) == [0]
    stored = await store.get(received.object_name)
    assert sha256_digest(stored) == received.digest
    info = await store.info(received.object_name)
    assert info is not None
    objects = await js.stream_info(f"OBJ_{INSTANCES_BUCKET}")
    assert objects.state.messages == info.chunks + 1  # the marker rolled up, no orphans
