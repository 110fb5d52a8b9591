"""The patient and order facts of a study, read from one of its stored DICOM instances."""

from __future__ import annotations

from io import BytesIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from pacsor.errors import InvalidInput
from pacsor.hl7.oru import ProcedureCode, StudyHeader


class HeaderError(InvalidInput):
    """The instance is not readable DICOM."""


def read_study_header(data: bytes) -> StudyHeader:
    try:
        ds = dcmread(BytesIO(data), stop_before_pixels=True, force=True)
        study_uid = str(ds.StudyInstanceUID)
    except (InvalidDicomError, AttributeError, ValueError, EOFError) as err:
        raise HeaderError(f"instance header is not readable DICOM: {err}") from err

    def text(keyword: str, source: Dataset = ds) -> str:
        value = source.get(keyword)
        if value is None:
            return ""
        if isinstance(value, MultiValue):
            # A backslash in a text value reads as a value separator; keep the text whole.
            return "\\".join(str(item) for item in value)
        return str(value)

    def first(keyword: str) -> Dataset | None:
        items = ds.get(keyword)
        try:
            return items[0] if items else None
        except (TypeError, IndexError):
            return None  # not a sequence: a malformed header keeps its other facts

    issuer = first("IssuerOfPatientIDQualifiersSequence")
    request = first("RequestAttributesSequence")
    accession_issuer = first("IssuerOfAccessionNumberSequence")
    return StudyHeader(
        study_uid=study_uid,
        patient_id=text("PatientID"),
        issuer_of_patient_id=text("IssuerOfPatientID"),
        issuer_universal_id=text("UniversalEntityID", issuer) if issuer else "",
        issuer_universal_id_type=text("UniversalEntityIDType", issuer) if issuer else "",
        placer_order_number=text("PlacerOrderNumberImagingServiceRequest")
        or (text("PlacerOrderNumberImagingServiceRequest", request) if request else ""),
        accession_issuer=(
            text("LocalNamespaceEntityID", accession_issuer) if accession_issuer else ""
        ),
        procedure_code=_procedure_code(first("ProcedureCodeSequence")),
        patient_name=text("PatientName"),
        birth_date=text("PatientBirthDate"),
        sex=text("PatientSex"),
        accession_number=text("AccessionNumber"),
        study_date=text("StudyDate"),
        study_time=text("StudyTime"),
        study_description=text("StudyDescription"),
        modality=text("Modality"),
    )


def _procedure_code(item: Dataset | None) -> ProcedureCode | None:
    """The first Procedure Code Sequence item, when it has a code and its scheme."""
    if item is None:
        return None
    value = str(
        item.get("CodeValue") or item.get("LongCodeValue") or item.get("URNCodeValue") or ""
    )
    scheme = str(item.get("CodingSchemeDesignator") or "")
    if not value.strip() or not scheme.strip():
        return None
    return ProcedureCode(value.strip(), scheme.strip(), str(item.get("CodeMeaning") or "").strip())
