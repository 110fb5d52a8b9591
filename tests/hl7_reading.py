"""Reading an ORU^R01 back in tests.

hl7apy parses the message (with its groups), which proves it is well-formed; fields are then
read from the ER7 text and decoded with pacsor.hl7.escaping (hl7apy's own writer would escape
the escape sequences again).
"""

from __future__ import annotations

import base64

from hl7apy.core import Message

from pacsor.hl7.escaping import unescape
from pacsor.hl7.oru import parse_oru

Segment = list[str]  # the fields of one segment; [0] is its name


class ParsedOru:
    def __init__(self, text: str) -> None:
        self.er7 = text
        self.message: Message = parse_oru(text)
        self.lines = [line for line in text.split("\r") if line]
        parsed = _segment_names(self.message)
        assert parsed == self.names(), f"hl7apy read {parsed}, the text has {self.names()}"

    def names(self) -> list[str]:
        return [line.split("|", 1)[0] for line in self.lines]

    def segments(self, name: str) -> list[Segment]:
        return [line.split("|") for line in self.lines if line.split("|", 1)[0] == name]

    def field(self, segment: Segment, number: int) -> str:
        """Field `number` as ER7 (still escaped); MSH counts its field separator as MSH-1."""
        index = number - 1 if segment[0] == "MSH" else number
        return segment[index] if index < len(segment) else ""

    def text(self, segment: Segment, number: int, component: int = 1) -> str:
        """Component `component` of field `number`, unescaped."""
        parts = self.field(segment, number).split("^")
        return unescape(parts[component - 1]) if component <= len(parts) else ""

    def observations(self) -> dict[str, Segment]:
        """OBX segments by their identifier (OBX-3.1) and sub-ID (OBX-4), e.g. 'cobb_angle/2'."""
        by_id: dict[str, Segment] = {}
        for obx in self.segments("OBX"):
            key = self.text(obx, 3)
            sub = self.field(obx, 4)
            by_id[f"{key}/{sub}" if sub else key] = obx
        return by_id

    def report(self) -> tuple[str, str]:
        """The report OBX as (kind, decoded text): ED is base64-decoded, FT unescaped."""
        obx = self.observations()["REPORT"]
        kind = self.field(obx, 2)
        value = self.field(obx, 5)
        if kind == "ED":
            _, _, subtype, encoding, data = value.split("^")
            assert encoding == "Base64"
            return f"ED/{subtype}", base64.b64decode(data, validate=True).decode()
        return kind, unescape(value)


def _segment_names(message: Message) -> list[str]:
    names: list[str] = []

    def walk(element: Message) -> None:
        for child in element.children:
            if child.classname == "Segment":
                names.append(child.name)
            else:
                walk(child)

    walk(message)
    return names
