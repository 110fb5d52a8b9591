"""A RIS that listens on MLLP, for the demo and the tests: it frames, parses and acknowledges.

Each message is parsed with hl7apy (an ORU^R01 that does not parse is answered AR) and kept in
`received`. What it answers can be scripted, one answer per message in arrival order, then
`default`:

    AA, AE, AR, CA, CE, CR   an ACK with that MSA-1 (and MSA-2 = the message's control ID)
    CA+AA, AA+AA, ...        several ACKs in a row (a commit then an application answer, or
                             a RIS that answers twice)
    silence                  read the message, never answer
    garbled                  answer a block that is not HL7
    hang-up                  close the connection without answering

With `unsolicited=True`, each new connection first receives an ACK that answers no message.

`restart()` closes the listener and every connection, then listens again on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Iterable, Iterator

import hl7
import msgspec
from hl7.mllp import HL7StreamReader, HL7StreamWriter, start_hl7_server

from pacsor.hl7.oru import MessageError, parse_oru

log = logging.getLogger("pacsor.devtools.demo_ris")

ACK_CODES = ("AA", "AE", "AR", "CA", "CE", "CR")
ANSWERS = (*ACK_CODES, "silence", "garbled", "hang-up")


def _known(answer: str) -> bool:
    return answer in ANSWERS or all(code in ACK_CODES for code in answer.split("+"))


class ReceivedMessage(msgspec.Struct, frozen=True):
    control_id: str
    text: str
    answer: str


class DemoRis:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        answers: Iterable[str] = (),
        default: str = "AA",
        application: str = "DEMO_RIS",
        facility: str = "DEMO",
        unsolicited: bool = False,
    ) -> None:
        for answer in (*answers, default):
            if not _known(answer):
                raise ValueError(f"unknown RIS answer {answer!r}; one of {', '.join(ANSWERS)}")
        self.host = host
        self.port = port
        self.default = default
        self.application = application
        self.facility = facility
        self.unsolicited = unsolicited
        self.received: list[ReceivedMessage] = []
        self.connections = 0
        self._answers = deque(answers)
        self._changed = asyncio.Condition()
        self._server: asyncio.Server | None = None
        self._writers: set[HL7StreamWriter] = set()

    def script(self, *answers: str) -> None:
        """Answer the next messages with `answers`, then with `default`."""
        self._answers.extend(answers)

    async def start(self) -> DemoRis:
        self._server = await start_hl7_server(self._serve, self.host, self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("demo RIS listening", extra={"port": self.port})
        return self

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()
        if server is not None:
            await server.wait_closed()

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def __aenter__(self) -> DemoRis:
        return await self.start()

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    async def wait_for(self, count: int, timeout: float = 60.0) -> list[ReceivedMessage]:
        """The messages received once there are at least `count` of them."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: len(self.received) >= count)
            return list(self.received)

    async def _serve(self, reader: HL7StreamReader, writer: HL7StreamWriter) -> None:
        self._writers.add(writer)
        self.connections += 1
        try:
            if self.unsolicited:
                greeting = (
                    "MSH|^~\\&|DEMO_RIS|DEMO|||20260101000000||ACK^R01^ACK|"
                    f"U{self.connections}|P|2.5.1\rMSA|AA|UNSOLICITED-{self.connections}"
                )
                writer.writeblock(greeting.encode())
                await writer.drain()
            while True:
                try:
                    block = await reader.readblock()
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                if not await self._answer(block, writer):
                    return
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _answer(self, block: bytes, writer: HL7StreamWriter) -> bool:
        """Answer one message; False when the connection is to be closed."""
        answer = self._answers.popleft() if self._answers else self.default
        text = block.decode("utf-8", errors="replace")
        try:
            message = hl7.parse(text)
            control_id = str(message.segment("MSH")(10))
        except (hl7.ParseException, KeyError, IndexError):
            control_id, message = "", None
        detail = ""
        if message is not None and answer.split("+")[-1] in {"AA", "CA"}:
            try:
                parse_oru(text)
            except MessageError as err:
                answer, detail = "AR", str(err)
        async with self._changed:
            self.received.append(ReceivedMessage(control_id, text, answer))
            self._changed.notify_all()
        log.info("demo RIS received", extra={"control_id": control_id, "answer": answer})
        if answer == "silence":
            return True
        if answer == "hang-up":
            return False
        if answer == "garbled" or message is None:
            writer.writeblock(b"this is not an HL7 acknowledgement")
        else:
            codes = ["AR"] if detail else answer.split("+")
            for code in codes:
                ack = message.create_ack(code, application=self.application, facility=self.facility)
                if detail:
                    ack.segment("MSA").assign_field(detail.replace("|", " ")[:80], 3)
                writer.writeblock(str(ack).encode("utf-8"))
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        return True


@contextlib.contextmanager
def running_demo_ris(port: int, host: str = "127.0.0.1") -> Iterator[DemoRis]:
    """A DemoRis accepting everything, on its own event loop in a thread (for the demo)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name=f"demo-ris-{port}", daemon=True)
    thread.start()
    ris = DemoRis(host, port)
    try:
        asyncio.run_coroutine_threadsafe(ris.start(), loop).result(timeout=10)
        yield ris
    finally:
        asyncio.run_coroutine_threadsafe(ris.stop(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
