"""The structure check bounds nesting whatever the encoding: defined or undefined lengths,
explicit or implicit VR (where only the data dictionary says a tag is a sequence)."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest

from pacsor.dicom.structure import MAX_DEPTH, Truncated, check_whole


def _item(body: bytes) -> bytes:
    return struct.pack("<HHI", 0xFFFE, 0xE000, len(body)) + body


def defined_nest_explicit(levels: int) -> bytes:
    """ReferencedImageSequence nested `levels` deep, every length defined (explicit VR)."""
    inner = struct.pack("<HH2sH", 0x0008, 0x0060, b"CS", 2) + b"CR"
    for _ in range(levels):
        inner = struct.pack("<HH2sHI", 0x0008, 0x1140, b"SQ", 0, len(_item(inner))) + _item(inner)
    return inner


def defined_nest_implicit(levels: int) -> bytes:
    """The same in implicit VR, where only the data dictionary says (0008,1140) is an SQ."""
    inner = struct.pack("<HHI", 0x0008, 0x0060, 2) + b"CR"
    for _ in range(levels):
        inner = struct.pack("<HHI", 0x0008, 0x1140, len(_item(inner))) + _item(inner)
    return inner


def is_sequence(tag: int) -> bool:
    return tag == 0x00081140


@pytest.mark.parametrize(
    ("encode", "implicit"), [(defined_nest_explicit, False), (defined_nest_implicit, True)]
)
def test_nesting_is_bounded_with_defined_lengths(
    encode: Callable[[int], bytes], implicit: bool
) -> None:
    check_whole(encode(MAX_DEPTH), implicit, is_sequence=is_sequence)  # deep, but allowed
    with pytest.raises(Truncated, match="nested deeper than"):
        check_whole(encode(MAX_DEPTH + 1), implicit, is_sequence=is_sequence)
    with pytest.raises(Truncated, match="nested deeper than"):
        check_whole(encode(10_000), implicit, is_sequence=is_sequence)


def test_an_item_cut_inside_a_defined_sequence_is_malformed() -> None:
    whole = defined_nest_explicit(3)
    # Shorten the innermost element's declared length: the item no longer ends where it says.
    broken = whole[:-4] + struct.pack("<H", 1) + whole[-2:]
    with pytest.raises(Truncated):
        check_whole(broken, False)
