"""A small forward HTTP proxy for the tests, strict like some hospitals' outbound proxies:
a request with a body must say its Content-Length; a chunked one is refused with 411.

It forwards plain-HTTP requests in absolute form (`POST http://host:port/path HTTP/1.1`, as
clients send them to a proxy) to their host, streaming the body, one request per connection,
and records what it saw.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

_MAX_HEAD = 64 * 1024
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    content_length: int | None
    chunked: bool
    status: int  # 411 when refused, else the upstream's status


class StrictProxy:
    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.url = ""
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def refused(self) -> list[Seen]:
        return [s for s in self.seen if s.status == 411]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            if len(head) > _MAX_HEAD:
                return
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            method, target, version = request_line.split(" ")
            headers = [tuple(line.split(":", 1)) for line in header_lines if ":" in line]
            names = {name.strip().lower(): value.strip() for name, value in headers}
            chunked = "chunked" in names.get("transfer-encoding", "").lower()
            length = int(names["content-length"]) if "content-length" in names else None
            url = urlsplit(target)
            path = url.path + (f"?{url.query}" if url.query else "")
            if chunked or (method in {"POST", "PUT", "PATCH"} and length is None):
                self.seen.append(Seen(method, url.path, length, chunked, 411))
                if chunked:
                    await _drain_chunked(reader)  # so that the client reads the answer
                body = b"Length Required: send a Content-Length"
                writer.write(
                    b"HTTP/1.1 411 Length Required\r\nConnection: close\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
                return
            up_reader, up_writer = await asyncio.open_connection(url.hostname, url.port or 80)
            try:
                forwarded = [
                    f"{name}:{value}"
                    for name, value in headers
                    if name.strip().lower() not in {"connection", "proxy-connection"}
                ]
                up_writer.write(
                    "\r\n".join(
                        [f"{method} {path} {version}", *forwarded, "Connection: close"]
                    ).encode("latin-1")
                    + b"\r\n\r\n"
                )
                left = length or 0
                while left:
                    chunk = await reader.read(min(left, _CHUNK))
                    if not chunk:
                        return
                    left -= len(chunk)
                    up_writer.write(chunk)
                    await up_writer.drain()
                status_line = await up_reader.readline()
                status = int(status_line.split(b" ")[1])
                self.seen.append(Seen(method, url.path, length, chunked, status))
                writer.write(status_line)
                while chunk := await up_reader.read(_CHUNK):
                    writer.write(chunk)
                    await writer.drain()
            finally:
                up_writer.close()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            return
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def start(self) -> StrictProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=_MAX_HEAD)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        # Connections a client kept open end with the proxy, not at garbage collection.
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)


async def _drain_chunked(reader: asyncio.StreamReader) -> None:
    while True:
        size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
        if size == 0:
            await reader.readline()  # the empty line after the last chunk (no trailers)
            return
        await reader.readexactly(size + 2)


@contextlib.asynccontextmanager
async def strict_proxy() -> AsyncIterator[StrictProxy]:
    proxy = await StrictProxy().start()
    try:
        yield proxy
    finally:
        await proxy.stop()
