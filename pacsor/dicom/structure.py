"""Checks that an encoded dataset is whole, without decoding it.

pydicom reads a truncated value silently (a pixel data element cut in half decodes to half
the pixels), so a C-STORE cut short by a broken sender would look valid. Walking the element
headers and checking that every declared length fits in the bytes catches it.

The walk also goes into every sequence item, of defined length or not, so a dataset nested
deeper than MAX_DEPTH sequence levels is refused before pydicom (or the AI) parses it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from pacsor.errors import InvalidInput

UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
# Explicit VR: these VRs have 2 reserved bytes and a 4-byte length.
LONG_VRS = {
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"SQ",
    b"SV",
    b"UC",
    b"UN",
    b"UR",
    b"UT",
    b"UV",
}


MAX_DEPTH = 32  # sequence levels; real datasets use a handful

# In implicit VR, whether a tag of defined length is a sequence (from the data dictionary).
IsSequence = Callable[[int], bool]


class Truncated(InvalidInput):
    pass


def _never(tag: int) -> bool:
    return False


def dataset_offset(part10: bytes | memoryview) -> int:
    """Where the dataset starts in a Part 10 file: after the preamble and the file meta group."""
    if part10[128:132] != b"DICM" or part10[132:136] != b"\x02\x00\x00\x00":
        raise Truncated("no DICOM file meta group with its group length")
    (group_length,) = struct.unpack_from("<I", part10, 140)
    return 144 + int(group_length)


def check_whole(
    data: bytes | memoryview,
    implicit_vr: bool,
    little_endian: bool = True,
    is_sequence: IsSequence = _never,
) -> None:
    """Raise Truncated when an element of `data` runs past its end, or sequences nest deeper
    than MAX_DEPTH."""
    walk = _Walk(memoryview(data), implicit_vr, "<" if little_endian else ">", is_sequence)
    end = _elements(walk, 0, len(data), 0)
    if end != len(data):
        raise Truncated(f"dataset ends inside an element at byte {end}")


class _Walk:
    def __init__(self, data: memoryview, implicit: bool, order: str, is_sequence: IsSequence):
        self.data = data
        self.implicit = implicit
        self.order = order
        self.is_sequence = is_sequence


def _elements(walk: _Walk, pos: int, end: int, depth: int) -> int:
    """Walk elements from pos until end (or an item delimiter); return where the walk stopped."""
    data, implicit, order = walk.data, walk.implicit, walk.order
    if depth > MAX_DEPTH:
        raise Truncated(f"sequences nested deeper than {MAX_DEPTH} levels")
    while pos < end:
        if pos + 8 > end:
            raise Truncated(f"element header cut at byte {pos}")
        group, elem = struct.unpack_from(order + "HH", data, pos)
        tag = (group << 16) | elem
        if tag == ITEM_END:
            return pos + 8
        if implicit or group == 0xFFFE:
            (length,) = struct.unpack_from(order + "I", data, pos + 4)
            vr = b"SQ" if length == UNDEFINED else b""
            pos += 8
        else:
            vr = bytes(data[pos + 4 : pos + 6])
            if vr in LONG_VRS:
                if pos + 12 > end:
                    raise Truncated(f"element header cut at byte {pos}")
                (length,) = struct.unpack_from(order + "I", data, pos + 8)
                pos += 12
            else:
                (length,) = struct.unpack_from(order + "H", data, pos + 6)
                pos += 8
        if length == UNDEFINED:
            # An undefined-length SQ, or encapsulated pixel data (whose items are fragments).
            pos = _items(walk, pos, end, depth + 1, holds_datasets=vr == b"SQ")
        else:
            if pos + length > end:
                raise Truncated(
                    f"element ({group:04X},{elem:04X}) needs {length} bytes, {end - pos} left"
                )
            if vr == b"SQ" or (implicit and group != 0xFFFE and walk.is_sequence(tag)):
                _defined_items(walk, pos, pos + length, depth + 1)
            pos += length
    return pos


def _defined_items(walk: _Walk, pos: int, end: int, depth: int) -> None:
    """Walk the items of a sequence of defined length, which ends at `end`."""
    while pos < end:
        if pos + 8 > end:
            raise Truncated(f"item header cut at byte {pos}")
        group, elem, length = struct.unpack_from(walk.order + "HHI", walk.data, pos)
        if (group << 16) | elem != ITEM:
            raise Truncated(f"expected an item at byte {pos}")
        pos += 8
        if length == UNDEFINED:
            pos = _elements(walk, pos, end, depth)
        elif pos + length > end:
            raise Truncated(f"item needs {length} bytes, {end - pos} left")
        else:
            if _elements(walk, pos, pos + length, depth) != pos + length:
                raise Truncated(f"item ends inside an element at byte {pos + length}")
            pos += length


def _items(walk: _Walk, pos: int, end: int, depth: int, holds_datasets: bool) -> int:
    """Walk the items of an undefined-length sequence or encapsulated pixel data."""
    data, order = walk.data, walk.order
    while True:
        if pos + 8 > end:
            raise Truncated("sequence without its delimiter")
        group, elem, length = struct.unpack_from(order + "HHI", data, pos)
        tag = (group << 16) | elem
        pos += 8
        if tag == SEQUENCE_END:
            return pos
        if tag != ITEM:
            raise Truncated(f"expected an item at byte {pos - 8}")
        if length == UNDEFINED:
            pos = _elements(walk, pos, end, depth)
        elif pos + length > end:
            raise Truncated(f"item needs {length} bytes, {end - pos} left")
        else:
            if holds_datasets and _elements(walk, pos, pos + length, depth) != pos + length:
                raise Truncated(f"item ends inside an element at byte {pos + length}")
            pos += length
