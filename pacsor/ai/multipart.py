"""multipart/related bodies of DICOM instances (DICOMweb STOW-RS and WADO-RS), streamed.

Encoding never holds a whole part: each part is produced by a factory of byte chunks. Its
length is known before the first byte goes (`related_length`, from the parts' sizes), so the
request carries a Content-Length, as proxies that refuse chunked uploads need. Parsing
holds one part body at a time, never the whole message, and accepts any chunking of the input
(a boundary may be split across chunks anywhere). Both sides are pure: no I/O here.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from email.message import Message
from typing import Literal

DICOM_MEDIA_TYPE = "application/dicom"
CRLF = b"\r\n"

# RFC 2046 boundary: 1 to 70 of these characters, not ending with a space.
_BOUNDARY = re.compile(r"^[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]$")
# Characters that force quoting of a parameter value (RFC 2045 tspecials and space).
_TSPECIALS = re.compile(r'[()<>@,;:\\"/\[\]?= ]')
# Bounds what an unterminated header block or padded delimiter line may make us buffer.
MAX_HEADER_BYTES = 64 * 1024
_MAX_PADDING = 256

PartFactory = Callable[[], AsyncIterator[bytes]]


@dataclass(frozen=True)
class SizedPart:
    """A part's bytes (a factory of chunks) and how many bytes it will give."""

    body: PartFactory
    size: int

    def __post_init__(self) -> None:
        if self.size < 0:
            raise ValueError(f"a part's size cannot be negative ({self.size})")


def new_boundary() -> str:
    """A random boundary; 128 random bits make a collision with DICOM content negligible."""
    return f"pacsor-{uuid.uuid4().hex}"


def _check_boundary(boundary: str) -> None:
    if not _BOUNDARY.match(boundary):
        raise ValueError(
            f"invalid multipart boundary {boundary!r}: 1 to 70 characters of "
            "letters, digits and '()+_,-./:=? (no trailing space)"
        )


def content_type(boundary: str) -> str:
    """The Content-Type header of a multipart/related body of DICOM parts."""
    _check_boundary(boundary)
    value = f'"{boundary}"' if _TSPECIALS.search(boundary) else boundary
    return f'multipart/related; type="{DICOM_MEDIA_TYPE}"; boundary={value}'


def _framing(boundary: str) -> tuple[bytes, bytes]:
    """The bytes before each part, and the closing delimiter line."""
    _check_boundary(boundary)
    delimiter = b"--" + boundary.encode("ascii")
    head = delimiter + CRLF + b"Content-Type: " + DICOM_MEDIA_TYPE.encode() + CRLF + CRLF
    return head, delimiter + b"--" + CRLF


def related_length(sizes: Sequence[int], boundary: str) -> int:
    """The byte length of the body `encode_related` gives for parts of these sizes."""
    head, close = _framing(boundary)
    return sum(len(head) + size + len(CRLF) for size in sizes) + len(close)


async def encode_related(
    parts: Sequence[PartFactory], boundary: str, sizes: Sequence[int] | None = None
) -> AsyncIterator[bytes]:
    """Stream a multipart/related body with one `application/dicom` part per factory.

    Each factory is called only when its part is reached, so an open file is held for one
    part at a time. The body content is not scanned for the boundary: the caller picks a
    random boundary (see `new_boundary`). With `sizes` (the Content-Length was computed from
    them), a part that gives another number of bytes is a ValueError, before a byte too many.
    """
    head, close = _framing(boundary)
    if sizes is not None and len(sizes) != len(parts):
        raise ValueError(f"{len(parts)} parts but {len(sizes)} sizes")
    for n, factory in enumerate(parts):
        yield head
        given = 0
        expected = None if sizes is None else sizes[n]
        async for chunk in factory():
            if not chunk:
                continue
            given += len(chunk)
            if expected is not None and given > expected:
                raise ValueError(f"part {n + 1} gives more than its {expected} bytes")
            yield chunk
        if expected is not None and given != expected:
            raise ValueError(f"part {n + 1} gave {given} bytes, not its {expected}")
        yield CRLF
    yield close


def boundary_from_content_type(ct: str) -> str:
    """The boundary parameter of a multipart Content-Type header value.

    Raises ValueError naming the problem when the media type is not multipart or the boundary
    is missing or malformed.
    """
    message = Message()
    message["content-type"] = ct
    media_type = message.get_content_type()
    # email falls back to text/plain for an unparseable value, so check the raw text too.
    if not media_type.startswith("multipart/") or not ct.strip().lower().startswith("multipart/"):
        raise ValueError(f"expected a multipart Content-Type, got {ct!r}")
    boundary = message.get_boundary()
    if boundary is None:
        raise ValueError(f"multipart Content-Type {ct!r} has no boundary parameter")
    _check_boundary(boundary)
    return boundary


def _parse_headers(block: bytes) -> dict[str, str]:
    """Part headers as a dict with lower-case names (RFC 822 style, folded lines joined)."""
    headers: dict[str, str] = {}
    last: str | None = None
    for line in block.decode("latin-1").split("\r\n"):
        if not line:
            continue
        if line[0] in " \t" and last is not None:
            headers[last] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"malformed multipart part header line {line[:80]!r}")
        last = name.strip().lower()
        headers[last] = value.strip()
    return headers


class _Parser:
    """Incremental multipart parser: feed chunks, collect the parts completed so far.

    The body is treated as if it started with CRLF, so that every delimiter, including the
    first one (which may have no preamble before it), reads `CRLF--boundary`.
    """

    _PREAMBLE, _HEADERS, _BODY, _DONE = range(4)

    def __init__(self, boundary: bytes) -> None:
        _check_boundary(boundary.decode("latin-1"))
        self._delimiter = CRLF + b"--" + boundary
        self._buf = bytearray(CRLF)
        self._state = self._PREAMBLE
        self._preamble_text = False  # a non-blank preamble means this is not an empty body
        self._headers: dict[str, str] = {}
        self._body = bytearray()

    @property
    def done(self) -> bool:
        return self._state == self._DONE

    def feed(self, data: bytes) -> list[tuple[dict[str, str], bytes]]:
        if self._state == self._DONE:
            return []  # epilogue, ignored
        self._buf += data
        parts: list[tuple[dict[str, str], bytes]] = []
        while self._step(parts):
            pass
        return parts

    def finish(self) -> None:
        """Check that the input ended at a sensible place."""
        if self._state == self._DONE:
            return
        if self._state == self._PREAMBLE:
            if not self._preamble_text and not bytes(self._buf).strip():
                return  # an empty (or blank) body: zero parts
            boundary = self._delimiter[2:].decode("latin-1")
            raise ValueError(f"multipart body has no {boundary!r} delimiter line")
        raise ValueError("multipart body ended before its closing boundary")

    def _delimiter_end(self, at: int) -> tuple[bool, int] | Literal[False] | None:
        """Classify what follows a candidate delimiter ending at `at`.

        (is_close, index after the delimiter line) for a real delimiter, None when more input
        is needed to tell, False when the boundary text is followed by something else.
        """
        buf = self._buf
        if len(buf) < at + 2:
            return None
        if buf[at : at + 2] == b"--":
            return True, at + 2
        i = at
        while i < len(buf) and buf[i] in b" \t":  # transport padding
            i += 1
        if i - at > _MAX_PADDING:
            return False
        if len(buf) < i + 2:
            return None
        if buf[i : i + 2] == CRLF:
            return False, i + 2
        return False

    def _find_delimiter(self) -> tuple[int, tuple[bool, int] | None]:
        """The first delimiter in the buffer: (start, (is_close, end)) for a complete one,
        (start, None) for one that needs more input, (-1, None) when there is none."""
        start = 0
        while True:
            index = self._buf.find(self._delimiter, start)
            if index < 0:
                return -1, None
            found = self._delimiter_end(index + len(self._delimiter))
            if found is not False:
                return index, found
            start = index + 1

    def _step(self, parts: list[tuple[dict[str, str], bytes]]) -> bool:
        """Advance the state machine once; False when more input is needed."""
        if self._state in (self._PREAMBLE, self._BODY):
            start, found = self._find_delimiter()
            if found is None:
                # Everything before a possible delimiter start is content (or preamble).
                cut = start if start >= 0 else max(0, len(self._buf) - len(self._delimiter) + 1)
                if self._state == self._BODY:
                    self._body += self._buf[:cut]
                elif bytes(self._buf[:cut]).strip():
                    self._preamble_text = True
                del self._buf[:cut]
                return False
            is_close, end = found
            if self._state == self._BODY:
                self._body += self._buf[:start]
                parts.append((self._headers, bytes(self._body)))
                self._headers, self._body = {}, bytearray()
            del self._buf[:end]
            if is_close:
                self._state = self._DONE
                self._buf.clear()
                return False
            self._state = self._HEADERS
            return True
        if self._state == self._HEADERS:
            if self._buf[:2] == CRLF:  # an empty header block
                del self._buf[:2]
                self._headers = {}
                self._state = self._BODY
                return True
            end = self._buf.find(CRLF + CRLF)
            if end < 0:
                if len(self._buf) > MAX_HEADER_BYTES:
                    raise ValueError(f"multipart part headers exceed {MAX_HEADER_BYTES} bytes")
                return False
            self._headers = _parse_headers(bytes(self._buf[:end]))
            del self._buf[: end + 4]
            self._state = self._BODY
            return True
        return False


async def iter_parts(
    chunks: AsyncIterator[bytes], boundary: bytes
) -> AsyncIterator[tuple[dict[str, str], bytes]]:
    """Yield (headers, body) for each part of a multipart body read from `chunks`.

    Header names are lower-cased. An empty body yields nothing. Raises ValueError on a
    malformed body, including one that ends before its closing boundary.
    """
    parser = _Parser(boundary)
    async for chunk in chunks:
        for part in parser.feed(chunk):
            yield part
        if parser.done:
            return
    parser.finish()
