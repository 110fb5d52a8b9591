"""MLLP to a real listener: framing, acknowledgements, silence, garbage, restarts."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import hl7
import pytest
from hl7.mllp import HL7StreamReader, HL7StreamWriter, start_hl7_server

from pacsor.config.hl7 import Hl7Settings
from pacsor.devtools.demo_ris import DemoRis
from pacsor.hl7.findings import StudyFindings
from pacsor.hl7.mllp import MAX_SET_ASIDE, MllpClient, MllpError, parse_ack
from pacsor.hl7.oru import StudyHeader, build_oru, control_id
from tests.nats_server import free_port

STUDY = "1.2.826.0.1.3680043.8.498.77"


def message(attempt: int = 1, name: str = "Lefèvre^Zoé") -> tuple[str, str]:
    cid = control_id(STUDY, "default", attempt)
    header = StudyHeader(study_uid=STUDY, patient_id="P1", patient_name=name)
    text = build_oru(header, StudyFindings(), None, Hl7Settings(), cid, datetime.now(UTC))
    return text, cid


@pytest.fixture
async def ris() -> AsyncIterator[DemoRis]:
    async with DemoRis() as peer:
        yield peer


@pytest.fixture
async def client(ris: DemoRis) -> AsyncIterator[MllpClient]:
    mllp = MllpClient("127.0.0.1", ris.port, timeout=1.0)
    yield mllp
    await mllp.aclose()


async def test_accepted_message_arrives_whole(ris: DemoRis, client: MllpClient) -> None:
    text, cid = message()
    ack = await client.send(text, cid)
    assert (ack.code, ack.control_id, ack.accepted) == ("AA", cid, True)
    (received,) = await ris.wait_for(1)
    assert received.text == text  # UTF-8 names included, no framing byte left
    assert received.control_id == cid


async def test_application_error_then_accept_same_control_id(
    ris: DemoRis, client: MllpClient
) -> None:
    ris.script("AE")
    text, cid = message()
    first = await client.send(text, cid)
    assert (first.code, first.accepted) == ("AE", False)
    second = await client.send(text, cid)
    assert second.accepted
    received = await ris.wait_for(2)
    assert [r.control_id for r in received] == [cid, cid]
    assert [r.answer for r in received] == ["AE", "AA"]
    assert ris.connections == 1  # an AE is an answer: the connection stays


async def test_silence_is_an_error_after_the_timeout(ris: DemoRis, client: MllpClient) -> None:
    ris.script("silence")
    text, cid = message()
    with pytest.raises(MllpError, match=r"no acknowledgement .* within 1 s"):
        await client.send(text, cid)
    # The next message goes on a new connection: a late ACK cannot be taken for its answer.
    assert (await client.send(text, cid)).accepted
    assert ris.connections == 2


async def test_garbled_answer_is_an_error(ris: DemoRis, client: MllpClient) -> None:
    ris.script("garbled")
    text, cid = message()
    with pytest.raises(MllpError, match="garbled acknowledgement"):
        await client.send(text, cid)
    assert (await client.send(text, cid)).accepted


async def test_hang_up_is_an_error(ris: DemoRis, client: MllpClient) -> None:
    ris.script("hang-up")
    text, cid = message()
    with pytest.raises(MllpError, match="closed the connection"):
        await client.send(text, cid)
    assert (await client.send(text, cid)).accepted


async def test_reconnects_after_the_ris_restarts(ris: DemoRis, client: MllpClient) -> None:
    text, cid = message()
    assert (await client.send(text, cid)).accepted
    await ris.restart()
    assert (await client.send(text, cid)).accepted  # the kept connection was dead
    assert ris.connections == 2
    assert len(await ris.wait_for(2)) == 2


async def test_nobody_listening_is_an_error() -> None:
    client = MllpClient("127.0.0.1", free_port(), timeout=1.0)
    text, cid = message()
    with pytest.raises(MllpError, match=r"127\.0\.0\.1"):
        await client.send(text, cid)


async def test_unparseable_message_is_rejected_by_the_ris(ris: DemoRis, client: MllpClient) -> None:
    bad = "MSH|^~\\&|A|B|C|D|20260101||ADT^A01^ADT_A01|X2|P|2.5.1\rPID|1"
    ack = await client.send(bad, "X2")
    assert (ack.code, ack.accepted) == ("AR", False)
    assert "ORU_R01" in ack.text


def test_ack_must_answer_this_message() -> None:
    ack = b"MSH|^~\\&|RIS|H|A|B|20260101||ACK^R01^ACK|9|P|2.5.1\rMSA|AA|OTHER"
    with pytest.raises(MllpError, match="another message"):
        parse_ack(ack, "MINE")
    with pytest.raises(MllpError, match="MSA-1"):
        parse_ack(ack.replace(b"MSA|AA", b"MSA|OK"), "OTHER")
    with pytest.raises(MllpError, match="garbled"):
        parse_ack(b"\xff\xfe", "OTHER")
    with pytest.raises(MllpError, match="garbled"):
        parse_ack(b"MSH|^~\\&|RIS|H|A|B|20260101||ACK^R01^ACK|9|P|2.5.1", "OTHER")
    assert parse_ack(ack.replace(b"MSA|AA", b"MSA|CA"), "OTHER").accepted


@pytest.mark.parametrize(("mode", "code"), [("original", "CA"), ("enhanced", "AA")])
async def test_a_commit_then_an_application_ack_is_one_answer(mode: str, code: str) -> None:
    async with DemoRis(default="CA+AA") as ris:
        client = MllpClient("127.0.0.1", ris.port, timeout=5.0, mode=mode)  # type: ignore[arg-type]
        try:
            answers = []
            for attempt in (1, 2, 3):
                text, cid = message(attempt)
                answers.append(await client.send(text, cid))
        finally:
            await client.aclose()
    # Original mode answers at the commit; the AA that follows is stale and set aside.
    assert [a.code for a in answers] == [code] * 3
    assert [r.control_id for r in ris.received] == [message(n)[1] for n in (1, 2, 3)]
    assert ris.connections == 1


async def test_a_ris_answering_twice_gets_each_message_once() -> None:
    async with DemoRis(default="AA+AA") as ris:
        client = MllpClient("127.0.0.1", ris.port, timeout=5.0)
        try:
            for attempt in (1, 2, 3):
                text, cid = message(attempt)
                assert (await client.send(text, cid)).control_id == cid
        finally:
            await client.aclose()
    assert [r.control_id for r in ris.received] == [message(n)[1] for n in (1, 2, 3)]
    assert ris.connections == 1


async def test_an_unsolicited_ack_is_set_aside() -> None:
    async with DemoRis(unsolicited=True) as ris:
        client = MllpClient("127.0.0.1", ris.port, timeout=5.0)
        try:
            text, cid = message()
            ack = await client.send(text, cid)
        finally:
            await client.aclose()
    assert (ack.code, ack.control_id) == ("AA", cid)
    assert len(ris.received) == 1 and ris.connections == 1


async def test_a_commit_alone_is_delivered_after_the_wait_in_enhanced_mode() -> None:
    async with DemoRis(default="CA") as ris:
        client = MllpClient("127.0.0.1", ris.port, timeout=2.0, mode="enhanced")
        try:
            text, cid = message()
            ack = await client.send(text, cid)
        finally:
            await client.aclose()
    assert (ack.code, ack.accepted) == ("CA", True)
    assert "no application acknowledgement within" in ack.text
    assert len(ris.received) == 1


async def test_an_application_ack_asking_for_a_commit_gets_one() -> None:
    """Enhanced mode: the RIS's application ACK is a message of its own (MSH-15 AL)."""
    replies: asyncio.Queue[bytes] = asyncio.Queue()

    async def serve(reader: HL7StreamReader, writer: HL7StreamWriter) -> None:
        oru = hl7.parse((await reader.readblock()).decode())
        writer.writeblock(str(oru.create_ack("CA", message_id="RIS-C1")).encode())
        application = oru.create_ack("AA", message_id="RIS-A1")
        application.segment("MSH").assign_field("AL", 15)
        writer.writeblock(str(application).encode())
        await writer.drain()
        await replies.put(await reader.readblock())
        writer.close()

    server = await start_hl7_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = MllpClient("127.0.0.1", port, timeout=5.0, mode="enhanced")
    try:
        text, cid = message()
        assert (await client.send(text, cid)).code == "AA"
        async with asyncio.timeout(5):
            reply = await replies.get()
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()
    msa = hl7.parse(reply.decode()).segment("MSA")
    assert (str(msa(1)), str(msa(2))) == ("CA", "RIS-A1")


async def test_a_flood_of_acks_of_other_messages_ends_the_try() -> None:
    async def serve(reader: HL7StreamReader, writer: HL7StreamWriter) -> None:
        await reader.readblock()
        for n in range(MAX_SET_ASIDE + 5):
            ack = f"MSH|^~\\&|RIS|H|A|B|20260101||ACK^R01^ACK|F{n}|P|2.5.1\rMSA|AA|OTHER-{n}"
            writer.writeblock(ack.encode())
        await writer.drain()
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await reader.readblock()  # until pacsor hangs up

    server = await start_hl7_server(serve, "127.0.0.1", 0)
    client = MllpClient("127.0.0.1", server.sockets[0].getsockname()[1], timeout=5.0)
    try:
        text, cid = message()
        with pytest.raises(MllpError, match="acknowledgements of other messages"):
            await client.send(text, cid)
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()
