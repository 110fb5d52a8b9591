"""HL7 v2 escape sequences for text put into a message, and their inverse.

The delimiters `|^~\\&` become `\\F\\ \\S\\ \\R\\ \\E\\ \\T\\`, and the characters that would
end a segment or corrupt a field (CR, LF, TAB) become hexadecimal escapes (`\\X0D\\`...).
Every other character, accented letters included, is kept as it is: the message declares
UTF-8 (MSH-18), so it needs no escape.

Neither hl7apy nor python-hl7 covers this whole: hl7apy escapes the delimiters only and would
escape the backslash of a hexadecimal escape again; python-hl7 writes non-ASCII characters as
one-byte hexadecimal escapes, which is wrong for UTF-8 text.
"""

from __future__ import annotations

import re

ESCAPE = "\\"
_BY_CHAR = {
    "\\": "\\E\\",
    "|": "\\F\\",
    "^": "\\S\\",
    "&": "\\T\\",
    "~": "\\R\\",
    "\r": "\\X0D\\",
    "\n": "\\X0A\\",
    "\t": "\\X09\\",
}
_SEQUENCE = re.compile(r"\\(E|F|S|T|R|X(?:[0-9A-Fa-f]{2})+|\.br)\\")
_BY_NAME = {"E": "\\", "F": "|", "S": "^", "T": "&", "R": "~", ".br": "\n"}
# Other control characters cannot be read back by most receivers; they are dropped.
_OTHER_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def escape(text: str) -> str:
    """`text` as the value of one HL7 component: no delimiter, no line break left."""
    return "".join(_BY_CHAR.get(char, char) for char in _OTHER_CONTROLS.sub("", text))


def unescape(value: str) -> str:
    """The text that `escape` turned into `value` (also reads `\\.br\\` as a line break)."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name.startswith("X"):
            return bytes.fromhex(name[1:]).decode("utf-8", errors="replace")
        return _BY_NAME[name]

    return _SEQUENCE.sub(one, value)
