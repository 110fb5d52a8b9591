"""Sending one HL7 message over MLLP and reading the RIS's acknowledgement.

Framing (0x0B message 0x1C 0x0D) is python-hl7's asyncio MLLP stream; this module adds what a
sender needs on top: a timeout on the acknowledgement, a check that the ACK answers *this*
message (MSA-2 is its control ID), and a connection that is dropped after any failure and
opened again by the next send, so a RIS that restarted is reached again.

The caller decides what to do with an Ack that is not accepted (AE, AR...) and with an
MllpError (no connection, silence, garbled answer): pacsor retries both with its one retry
policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import hl7
import msgspec
from hl7.mllp import HL7StreamReader, HL7StreamWriter, InvalidBlockError, open_hl7_connection

from pacsor.errors import TransientError

log = logging.getLogger("pacsor.hl7.mllp")

ACCEPTED = frozenset({"AA", "CA"})


class MllpError(TransientError):
    """The message was not acknowledged: no connection, no answer in time, or garbled."""


class _StaleConnection(TransientError):
    """The connection ended before an acknowledgement."""


class Ack(msgspec.Struct, frozen=True):
    code: str  # MSA-1: AA, AE, AR (original mode), CA, CE, CR (enhanced mode)
    control_id: str  # MSA-2: the control ID of the message acknowledged
    text: str = ""  # MSA-3, or ERR's text when there is one

    @property
    def accepted(self) -> bool:
        return self.code in ACCEPTED


def parse_ack(block: bytes, expected_control_id: str) -> Ack:
    """The ACK in one MLLP block; MllpError when it is not an ACK of `expected_control_id`."""
    try:
        text = block.decode("utf-8")
        message = hl7.parse(text)
        msa = message.segment("MSA")
        code, acknowledged = str(msa(1)).strip(), str(msa(2)).strip()
        detail = str(msa(3)).strip() if len(msa) > 3 else ""
    except (UnicodeDecodeError, hl7.ParseException, KeyError, IndexError) as err:
        # The bytes are not quoted: an answer could carry patient data.
        raise MllpError(f"garbled acknowledgement ({len(block)} bytes): {err}") from err
    if code not in {"AA", "AE", "AR", "CA", "CE", "CR"}:
        raise MllpError(f"garbled acknowledgement: MSA-1 is {code!r}")
    if acknowledged != expected_control_id:
        raise MllpError(
            f"acknowledgement of another message: MSA-2 is {acknowledged!r}, "
            f"expected {expected_control_id!r}"
        )
    return Ack(code, acknowledged, detail)


class MllpClient:
    """One MLLP connection to the RIS, used by one message at a time."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
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
                # The RIS dropped the connection we kept (it restarted, or closes idle ones):
                # send again once on a new connection.
                log.info("RIS connection was closed, reconnecting", extra={"ris": str(self)})
                try:
                    return await self._send_once(message, control_id)
                except _StaleConnection:
                    raise MllpError(
                        f"{self}: the RIS closed the connection before acknowledging"
                    ) from None

    async def _send_once(self, message: str, control_id: str) -> Ack:
        try:
            reader, writer = await self._connection()
            writer.writeblock(message.encode("utf-8"))
            async with asyncio.timeout(self.timeout):
                await writer.drain()
                block = await reader.readblock()
            return parse_ack(block, control_id)
        except TimeoutError:
            await self._drop()
            raise MllpError(f"no acknowledgement from {self} within {self.timeout:g} s") from None
        except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError) as err:
            await self._drop()
            raise _StaleConnection() from err
        except (OSError, InvalidBlockError, ValueError) as err:
            # ValueError: a block longer than the stream limit. Every failure drops the
            # connection, so a late ACK is never read as the answer to the next message.
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
