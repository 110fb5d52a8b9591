"""The header of a stored instance, read from its first chunks, without its pixel data.

Filters need a few attributes of each instance and the signed-URL upload sends each instance
without its pixel data first; neither needs the pixels. The header is read from as many
leading chunks as it takes (usually one) and the rest of the object is not fetched.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Iterable

import msgspec
import pydicom
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from pacsor.errors import InvalidInput

# A prefix shorter than this is not parsed until the object ends: a header cut in the middle
# of an element would be read (and warned about) for nothing. Stored chunks are larger.
MIN_PREFIX = 64 * 1024
# (7FE0,0010) Pixel Data, as its tag is written in little and big endian encodings.
_PIXEL_DATA_TAGS = (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10")


class HeaderError(InvalidInput):
    """The stored bytes are not a readable DICOM file."""


class InstanceHeader(msgspec.Struct, frozen=True):
    dataset: Dataset
    # The instance as stored, minus its pixel data (and anything after it): a valid file.
    without_pixels: bytes


def parse_header(prefix: bytes, complete: bool) -> InstanceHeader | None:
    """The header from a prefix of the file; None when the prefix is too short to tell."""
    buffer = io.BytesIO(prefix)
    try:
        dataset = pydicom.dcmread(buffer, stop_before_pixels=True)
    except Exception as err:  # pydicom raises many types on bad or truncated input
        if complete:
            raise HeaderError(f"not a readable DICOM file: {err}") from err
        return None
    end = buffer.tell()
    if prefix[end : end + 4] in _PIXEL_DATA_TAGS:
        return InstanceHeader(dataset, prefix[:end])
    if not complete:
        return None  # the prefix may have ended between two elements
    # The whole file was read and no pixel data was found where it stopped: no pixel data,
    # or an encoding (deflate) whose bytes cannot be cut; write the header again.
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=False)
    return InstanceHeader(dataset, out.getvalue())


async def read_header(chunks: AsyncIterator[bytes]) -> InstanceHeader:
    """Read leading chunks until the header is complete; the rest is left unread.

    The caller closes `chunks` (contextlib.aclosing) to release the stream early.
    """
    prefix = bytearray()
    async for chunk in chunks:
        prefix += chunk
        if len(prefix) < MIN_PREFIX:
            continue
        found = parse_header(bytes(prefix), complete=False)
        if found is not None:
            return found
    found = parse_header(bytes(prefix), complete=True)
    assert found is not None
    return found


def tag_values(dataset: Dataset, tags: Iterable[int]) -> dict[int, str]:
    """The present attributes among `tags` as text, as DICOM filters see them.

    Multiple values are joined by a backslash; bytes are read as Latin-1; a sequence has no
    text and counts as missing.
    """
    values: dict[int, str] = {}
    for tag in tags:
        if tag not in dataset:
            continue
        element = dataset[tag]
        if element.VR == "SQ":
            continue
        value = element.value
        if value is None:
            values[tag] = ""
        elif isinstance(value, bytes):
            values[tag] = value.decode("latin-1").rstrip("\x00 ")
        elif isinstance(value, MultiValue):
            values[tag] = "\\".join(str(v) for v in value)
        else:
            values[tag] = str(value)
    return values
