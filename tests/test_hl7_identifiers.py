"""Identifiers a RIS matches on (PID-3, ORC/OBR-2 and -3, OBR-4), and every kind of ORU read
by two independent parsers: hl7apy's strict validation and Medplum's (Node.js)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from hl7apy.exceptions import MaxLengthReached
from pydicom.dataset import Dataset

from pacsor.config.hl7 import Hl7Settings, load_hl7_settings
from pacsor.hl7.findings import StudyFindings
from pacsor.hl7.oru import StudyHeader, build_oru, control_id, filler_order_number
from pacsor.hl7.study_header import read_study_header
from tests.dicom_factory import make_image, new_uid, to_bytes
from tests.hl7_parsers import assert_parsers_agree, node_read, strict
from tests.unit.test_hl7_message import HOSTILE, REPORT, header, simulated_findings

WHEN = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
SITE = Hl7Settings(receiving_application="RIS", receiving_facility="HOSP")


def item(**attributes: Any) -> Dataset:
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def oru(
    study_header: StudyHeader,
    settings: Hl7Settings = SITE,
    core: str = "default",
    attempt: int = 1,
    **kwargs: Any,
) -> str:
    return build_oru(
        study_header,
        kwargs.get("findings", simulated_findings()),
        kwargs.get("report"),
        settings,
        control_id(study_header.study_uid, core, attempt),
        WHEN,
        core=core,
    )


def fields(text: str, segment: str) -> list[list[list[list[str]]]]:
    """One segment's fields as the second parser (Medplum) read them."""
    read = assert_parsers_agree(text)
    return next(s["fields"] for s in read if s["name"] == segment)


def test_identifiers_come_from_the_dicom_when_it_has_them() -> None:
    study = new_uid()
    ds = make_image(
        study,
        PatientID="4242",
        IssuerOfPatientID="CHU-NORD",
        IssuerOfPatientIDQualifiersSequence=[
            item(UniversalEntityID="1.2.250.1.71.4.2.1", UniversalEntityIDType="ISO")
        ],
        AccessionNumber="ACC-77",
        IssuerOfAccessionNumberSequence=[item(LocalNamespaceEntityID="RIS-NORD")],
        ProcedureCodeSequence=[
            item(CodeValue="36643-5", CodingSchemeDesignator="LN", CodeMeaning="XR Chest 2V")
        ],
    )
    text = oru(read_study_header(to_bytes(ds)))
    cx = fields(text, "PID")[3][0]
    assert (cx[0], cx[3], cx[4]) == (["4242"], ["CHU-NORD", "1.2.250.1.71.4.2.1", "ISO"], ["PI"])
    filler = filler_order_number(study, "default")
    for segment in ("ORC", "OBR"):
        order = fields(text, segment)
        assert order[2][0] == [["ACC-77"], ["RIS-NORD"]]  # placer: the RIS's number
        assert order[3][0] == [[filler], ["MILVUE_GATEWAY"]]  # filler: pacsor's
    obr = fields(text, "OBR")
    assert obr[4][0] == [["36643-5"], ["XR Chest 2V"], ["LN"]]


def test_site_settings_fill_what_the_dicom_lacks() -> None:
    settings = load_hl7_settings(
        {
            "HL7_RECEIVING_APPLICATION": "RIS",
            "HL7_ASSIGNING_AUTHORITY": "HOSP-PID",
            "HL7_PLACER_NAMESPACE": "ORDERS",
            "HL7_FILLER_NAMESPACE": "PACSOR-AI",
            "HL7_PROCEDURE_CODE": "AI-CXR",
            "HL7_PROCEDURE_CODING_SYSTEM": "99HOSP",
        }
    )
    bare = StudyHeader(
        study_uid=new_uid(),
        patient_id="PID4242",
        accession_number="A1",
        study_description="Thorax",
    )
    text = oru(bare, settings)
    assert fields(text, "PID")[3][0] == [["PID4242"], [""], [""], ["HOSP-PID"], ["PI"]]
    obr = fields(text, "OBR")
    assert obr[2][0] == [["A1"], ["ORDERS"]]
    assert obr[3][0][1] == ["PACSOR-AI"]
    assert obr[4][0] == [["AI-CXR"], ["Thorax"], ["99HOSP"]]


def test_the_placer_number_may_come_from_the_placer_order_number() -> None:
    settings = msgspec.structs.replace(SITE, placer_source="placer_order_number")
    ds = make_image(
        new_uid(),
        AccessionNumber="ACC-1",
        RequestAttributesSequence=[item(PlacerOrderNumberImagingServiceRequest="ORD-9")],
    )
    text = oru(read_study_header(to_bytes(ds)), settings)
    assert fields(text, "OBR")[2][0] == [["ORD-9"], ["RIS"]]


def test_the_filler_number_is_stable_per_study_and_core() -> None:
    study = header()
    first, again = oru(study, attempt=1), oru(study, attempt=2)
    other_core = oru(study, core="precert")
    number = [fields(t, "OBR")[3][0][0][0] for t in (first, again, other_core)]
    assert number[0] == number[1] != number[2]
    assert number[0] != fields(first, "OBR")[2][0][0][0]  # not the placer's


def _messages() -> dict[str, str]:
    hostile = header(
        patient_name=HOSTILE,
        patient_id="ID|1^2",
        issuer_of_patient_id="H&1",
        accession_number="A&B~C",
        study_description=HOSTILE,
    )
    coded = msgspec.structs.replace(header(), procedure_code=None)
    enhanced = msgspec.structs.replace(SITE, ack_mode="enhanced", language="FR")
    bare = Hl7Settings(include_pid=False, include_orc=False, include_study_uid=False)
    return {
        "findings": oru(header()),
        "hostile": oru(hostile),
        "no-procedure-code": oru(coded),
        "enhanced-fr": oru(header(), enhanced),
        "bare": oru(header(), bare),
        "nothing-known": oru(StudyHeader(study_uid=new_uid()), findings=StudyFindings()),
        "missing": oru(header(), findings=StudyFindings(missing=("smartxpert",))),
        **{
            f"report-{form}": oru(
                header(),
                msgspec.structs.replace(SITE, tcr_out_format=form),
                report=REPORT,
            )
            for form in ("B64", "PLAIN", "HTML")
        },
    }


MESSAGES = _messages()


@pytest.mark.parametrize("name", list(MESSAGES))
def test_every_message_passes_both_parsers(name: str) -> None:
    text = MESSAGES[name]
    strict(text)
    assert_parsers_agree(text)


def test_strict_validation_is_strict() -> None:
    """A field over its v2.5.1 length passes hl7apy's tolerant parsing, not the strict one."""
    long_id = "9" * 300
    text = MESSAGES["findings"].replace("PAT-1^^^", f"{long_id}^^^", 1)
    with pytest.raises(MaxLengthReached):
        strict(text)
    assert node_read([text])[0][1]["fields"][3][0][0] == [long_id]
