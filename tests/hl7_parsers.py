"""Two independent readings of an ORU^R01: hl7apy's strict validation and Medplum's parser
(Node.js), which must agree field by field."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message
from hl7apy.parser import parse_components, parse_message

NODE_DIR = Path(__file__).parent / "hl7_node"
_REPORT_TYPES = {"FT", "ED"}
# hl7apy's writer escapes the backslashes of the escape sequences it does not know (\Xhh\,
# \.br\): undone before comparing, as pacsor.hl7.oru explains.
_REESCAPED = re.compile(r"\\E\\((?:X[0-9A-Fa-f]+|\.br))\\E\\")


def strict(text: str) -> Message:
    """hl7apy with VALIDATION_LEVEL.STRICT (structure, datatypes, lengths, cardinality).

    hl7apy reads OBX-5 as ST (199 characters) whatever OBX-2 says, so a report's value is
    validated strictly as the type its OBX-2 names, and the message with that value elided.
    """
    lines = []
    for line in text.split("\r"):
        fields = line.split("|")
        if fields[0] == "OBX" and len(fields) > 5 and fields[2] in _REPORT_TYPES:
            parse_components(
                fields[5],
                field_datatype=fields[2],
                version="2.5.1",
                validation_level=VALIDATION_LEVEL.STRICT,
            )
            fields[5] = "report"
        lines.append("|".join(fields))
    return parse_message(
        "\r".join(lines), validation_level=VALIDATION_LEVEL.STRICT, find_groups=True
    )


def ensure_node_parser() -> None:
    """Install the Node.js parser from its lock file, once (CI runs the same)."""
    if (NODE_DIR / "node_modules" / "@medplum" / "core").is_dir():
        return
    npm = shutil.which("npm")
    assert npm, "npm is needed for the second HL7 parser (Node.js, .ci/run installs it)"
    subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=NODE_DIR,
        check=True,
        timeout=300,
    )


Fields = list[list[list[list[str]]]]  # field -> repetition -> component -> subcomponent


def node_read(messages: list[str]) -> list[list[dict[str, Any]]]:
    """Each message as Medplum reads it: [{"name": "PID", "fields": Fields}, ...]."""
    ensure_node_parser()
    node = shutil.which("node")
    assert node, "node is needed for the second HL7 parser"
    done = subprocess.run(
        [node, str(NODE_DIR / "read_messages.js")],
        input=json.dumps(messages),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    read: list[list[dict[str, Any]]] = json.loads(done.stdout)
    return read


def er7(field: list[list[list[str]]]) -> str:
    return "~".join("^".join("&".join(c) for c in repetition) for repetition in field)


def hl7apy_fields(message: Message) -> list[tuple[str, dict[int, str]]]:
    """Each segment's name and its fields' ER7 by number, as hl7apy read them."""
    segments: list[tuple[str, dict[int, str]]] = []

    def walk(element: Message) -> None:
        for child in element.children:
            if child.classname == "Segment":
                fields: dict[int, str] = {}
                for field in child.children:
                    number = int(field.name.rsplit("_", 1)[1])
                    text = _REESCAPED.sub(r"\\\1\\", field.to_er7())
                    fields[number] = f"{fields[number]}~{text}" if number in fields else text
                segments.append((child.name, fields))
            else:
                walk(child)

    walk(message)
    return segments


def assert_parsers_agree(text: str) -> list[dict[str, Any]]:
    """Both parsers read `text` and agree on every segment and field; Medplum's reading."""
    (medplum,) = node_read([text])
    by_hl7apy = hl7apy_fields(strict(text))
    assert [s["name"] for s in medplum] == [name for name, _ in by_hl7apy]
    for segment, (name, fields) in zip(medplum, by_hl7apy, strict=True):
        # Medplum counts the segment name as field 0; MSH-1 and MSH-2 (the delimiters) are
        # read differently by the two and are checked by hl7apy alone.
        first = 3 if name == "MSH" else 1
        offset = 1 if name == "MSH" else 0
        theirs = {
            n + offset: er7(f) for n, f in enumerate(segment["fields"]) if n >= first - offset
        }
        theirs = {n: v for n, v in theirs.items() if v and n >= first}
        ours = {n: v for n, v in fields.items() if v and n >= first}
        if name == "OBX" and ours.get(2) in _REPORT_TYPES:
            ours.pop(5, None)  # elided for hl7apy (see strict); Medplum reads it below
            assert theirs.pop(5, "")
        assert theirs == ours, f"{name}: the parsers disagree"
    return medplum
