"""Sending one HL7 message over MLLP and reading the RIS's acknowledgements.

Framing (0x0B message 0x1C 0x0D) is python-hl7's asyncio MLLP stream; this module adds what a
sender needs on top: a timeout on the exchange, acknowledgements matched to their message by
MSA-2 (its control ID) and read as pacsor.domain.acknowledgement decides (a stale or
unsolicited one is set aside, a commit CA waits for the application answer in enhanced mode),
and a connection that is dropped after a failure and opened again by the next send, so a RIS
that restarted is reached again.

The caller decides what to do with an Ack that is not accepted (AE, AR...) and with an
MllpError (no connection, silence, garbled answer): pacsor retries both with its one retry
policy, except a refusal that cannot change (CR).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import hl7
from hl7.mllp import HL7StreamReader, HL7StreamWriter, InvalidBlockError, open_hl7_connection

from pacsor.domain.acknowledgement import (
    ACK_CODES,
    Ack,
    AckMode,
    Answered,
    AwaitApplication,
    Discard,
    on_ack,
    on_timeout,
)
from pacsor.errors import TransientError

log = logging.getLogger("pacsor.hl7.mllp")

# ACKs of other messages set aside while waiting for one message's answer: past this, the
# peer is not answering this message (and is filling the log), so the try ends.
MAX_SET_ASIDE = 32

__all__ = ["Ack", "MllpClient", "MllpError", "parse_ack", "read_ack"]


class MllpError(TransientError):
    """The message was not acknowledged: no connection, no answer in time, or garbled."""


class _StaleConnection(TransientError):
    """The connection ended before an acknowledgement."""


def _read(block: bytes) -> tuple[Ack, hl7.Message]:
    try:
        text = block.decode("utf-8")
        message = hl7.parse(text)
        msa = message.segment("MSA")
        code, acknowledged = str(msa(1)).strip(), str(msa(2)).strip()
        detail = str(msa(3)).strip() if len(msa) > 3 else ""
    except (UnicodeDecodeError, hl7.ParseException, KeyError, IndexError) as err:
        # The bytes are not quoted: an answer could carry patient data.
        raise MllpError(f"garbled acknowledgement ({len(block)} bytes): {err}") from err
    if code not in ACK_CODES:
        raise MllpError(f"garbled acknowledgement: MSA-1 is {code!r}")
    return Ack(code, acknowledged, detail), message


def read_ack(block: bytes) -> Ack:
    """The ACK in one MLLP block, whichever message it answers; MllpError when garbled."""
    return _read(block)[0]


def parse_ack(block: bytes, expected_control_id: str) -> Ack:
    """The ACK in one MLLP block; MllpError when it is not an ACK of `expected_control_id`."""
    ack = read_ack(block)
    if ack.control_id != expected_control_id:
        raise MllpError(
            f"acknowledgement of another message: MSA-2 is {ack.control_id!r}, "
            f"expected {expected_control_id!r}"
        )
    return ack


def _wants_commit(message: hl7.Message) -> bool:
    """Whether an application acknowledgement asks for a commit answer (its MSH-15)."""
    try:
        return str(message.segment("MSH")(15)).strip() in {"AL", "SU"}
    except (KeyError, IndexError):
        return False


class MllpClient:
    """One MLLP connection to the RIS, used by one message at a time."""

    def __init__(self, host: str, port: int, timeout: float, mode: AckMode = "original") -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.mode: AckMode = mode
        self._lock = asyncio.Lock()
        self._reader: HL7StreamReader | None = None
        self._writer: HL7StreamWriter | None = None

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    async def send(self, message: str, control_id: str) -> Ack:
        """Send `message` and wait up to `timeout` seconds for its acknowledgement."""
        async with self._lock:
            reused = self._writer is not None
            try:
                return await self._send_once(message, control_id)
            except _StaleConnection:
                if not reused:
                    raise MllpError(
                        f"{self}: the RIS closed the connection before acknowledging"
                    ) from None
                # The RIS dropped the connection we kept (it restarted, or closes idle ones)
                # before reading the message: send again once on a new connection.
                log.info("RIS connection was closed, reconnecting", extra={"ris": str(self)})
                try:
                    return await self._send_once(message, control_id)
                except _StaleConnection:
                    raise MllpError(
                        f"{self}: the RIS closed the connection before acknowledging"
                    ) from None

    async def _send_once(self, message: str, control_id: str) -> Ack:
        commit: Ack | None = None
        set_aside = 0
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            reader, writer = await self._connection()
            writer.writeblock(message.encode("utf-8"))
            async with asyncio.timeout(self.timeout):
                await writer.drain()
                while True:
                    ack, parsed = _read(await reader.readblock())
                    step = on_ack(self.mode, control_id, commit, ack)
                    if isinstance(step, Discard):
                        set_aside += 1
                        if set_aside > MAX_SET_ASIDE:
                            raise MllpError(
                                f"{self}: more than {MAX_SET_ASIDE} acknowledgements of other "
                                "messages while waiting for this one"
                            )
                        # Read and set aside: answering or re-sending would duplicate.
                        log.warning(
                            "acknowledgement set aside",
                            extra={"ris": str(self), "code": ack.code, "reason": step.reason},
                        )
                        continue
                    if isinstance(step, AwaitApplication):
                        commit = step.commit
                        continue
                    if not step.ack.is_commit and _wants_commit(parsed):
                        # Enhanced mode: the application answer is a message of its own.
                        writer.writeblock(str(parsed.create_ack("CA")).encode("utf-8"))
                        await writer.drain()
                    return step.ack
        except TimeoutError:
            outcome = on_timeout(commit, loop.time() - started)
            if isinstance(outcome, Answered):
                return outcome.ack  # committed: the connection stays, a late AA is stale
            await self._drop()
            raise MllpError(f"no acknowledgement from {self} within {self.timeout:g} s") from None
        except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError) as err:
            await self._drop()
            if commit is not None:
                return commit  # the RIS has it: sending again would be a second copy
            raise _StaleConnection() from err
        except (OSError, InvalidBlockError, ValueError) as err:
            # ValueError: a block longer than the stream limit.
            await self._drop()
            raise MllpError(f"{self}: {err or type(err).__name__}") from err
        except MllpError:
            await self._drop()
            raise

    async def _connection(self) -> tuple[HL7StreamReader, HL7StreamWriter]:
        if self._reader is None or self._writer is None:
            async with asyncio.timeout(self.timeout):
                self._reader, self._writer = await open_hl7_connection(self.host, self.port)
            log.info("connected to the RIS", extra={"ris": str(self)})
        elif self._writer.is_closing() or self._reader.at_eof():
            await self._drop()
            return await self._connection()
        return self._reader, self._writer

    async def _drop(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()

    async def aclose(self) -> None:
        async with self._lock:
            await self._drop()
