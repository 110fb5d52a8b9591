"""DICOM filters (a pure decision), their parsing, and the header they read."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator

import pydicom
import pytest
from pacsor.consumers import uploader

from pacsor.config import ConfigError, load_settings
from pacsor.dicom.header import HeaderError, read_header, tag_values
from pacsor.domain.filters import FilterError, parse_filters, skipping_rule
from tests.dicom_factory import make_image, new_uid, to_bytes

PATIENT_NAME, MODALITY, PATIENT_ID = 0x00100010, 0x00080060, 0x00100020


def rule(group: str, element: str, pattern: str, should_match: bool) -> dict[str, object]:
    return {
        "tag": {"group": group, "element": element},
        "pattern": pattern,
        "should_match": should_match,
    }


ISSUE_FILTERS = json.dumps(
    [rule("0010", "0010", "^TEST.*", False), rule("0008", "0060", "^SR$", True)]
)


@pytest.mark.parametrize(
    ("values", "skipped_by"),
    [
        ({PATIENT_NAME: "TEST", MODALITY: "SR"}, 1),
        ({PATIENT_NAME: "NOT_A_TEST", MODALITY: "SR"}, None),
        ({PATIENT_NAME: "NOT_A_TEST", MODALITY: "DX"}, 2),
        ({PATIENT_NAME: "NOT_A_TEST"}, None),
        # More: every missing tag keeps; the first rule that skips is the one recorded.
        ({}, None),
        ({MODALITY: "SR"}, None),
        ({MODALITY: "CR"}, 2),
        ({PATIENT_NAME: "TEST^JOHN", MODALITY: "CR"}, 1),
        ({PATIENT_NAME: "JOHN^TEST", MODALITY: "SR"}, None),  # anchored: TEST not at start
        ({PATIENT_NAME: "", MODALITY: "SR"}, None),  # present and empty: matched as ""
        ({PATIENT_NAME: "TEST", MODALITY: "SR\\DX"}, 1),
        ({MODALITY: "SRX"}, 2),  # ^SR$ is the whole value
    ],
)
def test_the_issue_filters(values: dict[int, str], skipped_by: int | None) -> None:
    rules = parse_filters(ISSUE_FILTERS)
    skipped = skipping_rule(rules, values)
    assert (skipped.number if skipped else None) == skipped_by


def test_patterns_are_searched_and_case_matters() -> None:
    [contains] = parse_filters(json.dumps([rule("0010", "0020", "ANON", False)]))
    assert skipping_rule([contains], {PATIENT_ID: "X-ANON-1"}) == contains
    assert skipping_rule([contains], {PATIENT_ID: "x-anon-1"}) is None
    [insensitive] = parse_filters(json.dumps([rule("0010", "0020", "(?i)anon", False)]))
    assert skipping_rule([insensitive], {PATIENT_ID: "X-ANON-1"}) == insensitive
    assert str(insensitive) == "rule 1: (0010,0020) must not match (?i)anon"
    assert parse_filters("") == () == parse_filters("[]")
    assert skipping_rule((), {PATIENT_ID: "anything"}) is None


@pytest.mark.parametrize(
    ("raw", "fault"),
    [
        ("[{", "bad JSON"),
        ('{"tag": {}}', "bad JSON: expected a list of rules"),
        ("[42]", "rule 1: expected an object"),
        (json.dumps([rule("0010", "0010", "x", True), {"pattern": "x"}]), "rule 2: bad tag"),
        (json.dumps([rule("10", "0010", "x", True)]), "rule 1: bad tag: group"),
        (json.dumps([rule("0010", "00G0", "x", True)]), "rule 1: bad tag: element"),
        (json.dumps([rule("0010", "0010", "([", True)]), "rule 1: bad regex '(['"),
        (json.dumps([{**rule("0010", "0010", "x", True), "should_match": "no"}]), "should_match"),
        (json.dumps([{**rule("0010", "0010", "x", True), "shouldmatch": True}]), "unknown key"),
    ],
)
def test_a_malformed_filter_names_the_rule_and_the_fault(raw: str, fault: str) -> None:
    with pytest.raises(FilterError, match=fault.replace("(", r"\(").replace("[", r"\[")):
        parse_filters(raw)
    # Start-up of a component that uploads stops with one line naming the variable.
    ok = json.dumps([rule("0008", "0060", "^DX$", True)])
    env = {
        "TOKEN": "t",
        "API_URL_1": "http://127.0.0.1:1",
        "TOKEN_1": "t",
        "DESTINATIONS_1": "same-as-first",
    }
    for n, filters in (
        (0, {"DICOM_FILTERS": raw}),
        (1, {"DICOM_FILTERS": ok, "DICOM_FILTERS_1": raw}),
    ):
        settings = load_settings({**env, **filters}, dotenv=None)
        with pytest.raises(ConfigError) as stopped:
            uploader.COMPONENT.check(settings)
        assert str(stopped.value).startswith("DICOM_FILTERS: " if n == 0 else "DICOM_FILTERS_1: ")
        assert "\n" not in str(stopped.value)


def test_tag_values_as_filters_see_them() -> None:
    ds = make_image(new_uid(), PatientName="TEST^JOHN", modality="DX")
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    del ds.PatientID
    values = tag_values(ds, [PATIENT_NAME, MODALITY, PATIENT_ID, 0x00080008, 0x00082112])
    assert values == {PATIENT_NAME: "TEST^JOHN", MODALITY: "DX", 0x00080008: "ORIGINAL\\PRIMARY"}


async def chunks_of(data: bytes, size: int, read: list[int]) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        read.append(start)
        yield data[start : start + size]


@pytest.mark.parametrize("size", [7, 100, 1000, 1 << 20])
async def test_the_header_comes_from_the_first_chunks_without_the_pixels(size: int) -> None:
    ds = make_image(new_uid(), rows=256, cols=256, PatientName="A^B")
    data = to_bytes(ds)
    read: list[int] = []
    header = await read_header(chunks_of(data, size, read))
    assert header.dataset.SOPInstanceUID == ds.SOPInstanceUID
    assert "PixelData" not in header.dataset
    assert data.startswith(header.without_pixels)  # the bytes as stored, cut
    again = pydicom.dcmread(io.BytesIO(header.without_pixels))
    assert again.PatientName == "A^B" and "PixelData" not in again
    assert len(read) * size < len(data) or size > len(data)  # the pixels were not read
    with pytest.raises(HeaderError):
        await read_header(chunks_of(b"not DICOM at all" * 10, 7, []))
