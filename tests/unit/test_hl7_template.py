"""Templates: data that changes the message layout, checked before use, never code."""

from __future__ import annotations

import pytest

from pacsor.config.hl7 import Hl7Settings
from pacsor.hl7.oru import SAMPLE_HEADER, MessageError, check_template
from pacsor.hl7.template import TemplateError, parse_template
from tests.hl7_reading import ParsedOru

SITE = b"""{
  "omit": ["PV1", "ORC"],
  "fields": {
    "PID-18": "$accession_number",
    "OBR-4": "$modality^$study_description^LOCAL",
    "OBR-13": "Requested by the emergency department",
    "OBX-17": "AI^Milvue"
  }
}"""


def test_a_template_moves_fields_and_leaves_segments_out() -> None:
    oru = ParsedOru(check_template(parse_template(SITE), Hl7Settings()))
    assert oru.names() == ["MSH", "PID", "OBR", "NTE", "OBX"]
    pid = oru.segments("PID")[0]
    assert oru.field(pid, 18) == SAMPLE_HEADER.accession_number
    obr = oru.segments("OBR")[0]
    assert oru.field(obr, 4) == "CR^Sample study^LOCAL"
    assert oru.text(obr, 13) == "Requested by the emergency department"
    assert all(oru.field(obx, 17) == "AI^Milvue" for obx in oru.segments("OBX"))


def test_placeholder_values_are_escaped() -> None:
    from datetime import UTC, datetime

    import msgspec

    from pacsor.hl7.findings import StudyFindings
    from pacsor.hl7.oru import build_oru

    hostile = msgspec.structs.replace(SAMPLE_HEADER, study_description="A|B^C\rD")
    text = build_oru(
        hostile,
        StudyFindings(),
        None,
        Hl7Settings(),
        "X1",
        datetime(2026, 1, 1, tzinfo=UTC),
        parse_template(b'{"fields": {"OBR-13": "$study_description"}}'),
    )
    oru = ParsedOru(text)
    assert oru.text(oru.segments("OBR")[0], 13) == "A|B^C\rD"


@pytest.mark.parametrize(
    ("template", "error"),
    [
        (b'{"fields": {"OBR-4": "${__import__}"}}', "unknown placeholder"),
        (b'{"fields": {"OBR-4": "{study_description.__class__}"}}', None),
        (b'{"fields": {"PID-5": "a|b"}}', "no |"),
        (b'{"fields": {"PID-5": "line\\nbreak"}}', "control character"),
        (b'{"fields": {"ZZZ-1": "x"}}', "SEGMENT-NUMBER"),
        (b'{"fields": {"MSH-2": "x"}}', "encoding characters"),
        (b'{"omit": ["OBR"]}', "cannot be left out"),
        (b'{"script": "rm -rf /"}', "unknown field"),
        (b"not json", "template"),
        (b'{"fields": {"OBR-4": "cost $5"}}', "not a placeholder"),
    ],
)
def test_bad_templates_are_refused_with_the_reason(template: bytes, error: str | None) -> None:
    if error is None:
        # Braces without $ are text, never evaluated.
        oru = ParsedOru(check_template(parse_template(template), Hl7Settings()))
        assert oru.field(oru.segments("OBR")[0], 4) == "{study_description.__class__}"
        return
    with pytest.raises(TemplateError, match=error):
        parse_template(template)


@pytest.mark.parametrize(
    "fields",
    [
        '{"MSH-9": "ADT^A01^ADT_A01"}',  # not an ORU^R01 any more
        '{"MSH-12": "9.9"}',  # a version hl7apy does not know
        '{"PID-99": "x"}',  # no such field
        '{"PID-7": "$study_description"}',  # not a date
    ],
)
def test_templates_that_break_the_message_are_refused(fields: str) -> None:
    template = parse_template(f'{{"fields": {fields}}}'.encode())
    with pytest.raises(MessageError):
        check_template(template, Hl7Settings())
