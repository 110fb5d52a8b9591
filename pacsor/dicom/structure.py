"""Checks that an encoded dataset is whole, without decoding it.

pydicom reads a truncated value silently (a pixel data element cut in half decodes to half
the pixels), so a C-STORE cut short by a broken sender would look valid. Walking the element
headers and checking that every declared length fits in the bytes catches it.
"""

from __future__ import annotations

import struct

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


class Truncated(InvalidInput):
    pass


def dataset_offset(part10: bytes) -> int:
    """Where the dataset starts in a Part 10 file: after the preamble and the file meta group."""
    if part10[128:132] != b"DICM" or part10[132:136] != b"\x02\x00\x00\x00":
        raise Truncated("no DICOM file meta group with its group length")
    (group_length,) = struct.unpack_from("<I", part10, 140)
    return 144 + int(group_length)


def check_whole(data: bytes | memoryview, implicit_vr: bool, little_endian: bool = True) -> None:
    """Raise Truncated when an element of `data` runs past its end."""
    end = _elements(memoryview(data), 0, len(data), implicit_vr, "<" if little_endian else ">", 0)
    if end != len(data):
        raise Truncated(f"dataset ends inside an element at byte {end}")


def _elements(data: memoryview, pos: int, end: int, implicit: bool, order: str, depth: int) -> int:
    """Walk elements from pos until end (or an item delimiter); return where the walk stopped."""
    if depth > 32:
        raise Truncated("sequences nested too deep")
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
            pos = _items(data, pos, end, implicit, order, depth + 1)
        else:
            if pos + length > end:
                raise Truncated(
                    f"element ({group:04X},{elem:04X}) needs {length} bytes, {end - pos} left"
                )
            pos += length
    return pos


def _items(data: memoryview, pos: int, end: int, implicit: bool, order: str, depth: int) -> int:
    """Walk the items of an undefined-length sequence or encapsulated pixel data."""
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
            pos = _elements(data, pos, end, implicit, order, depth)
        elif pos + length > end:
            raise Truncated(f"item needs {length} bytes, {end - pos} left")
        else:
            pos += length
