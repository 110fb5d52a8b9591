"""The patient and order facts of a study, read from one of its stored DICOM instances."""

from __future__ import annotations

from io import BytesIO

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from pacsor.errors import InvalidInput
from pacsor.hl7.oru import StudyHeader


class HeaderError(InvalidInput):
    """The instance is not readable DICOM."""


def read_study_header(data: bytes) -> StudyHeader:
    try:
        ds = dcmread(BytesIO(data), stop_before_pixels=True, force=True)
        study_uid = str(ds.StudyInstanceUID)
    except (InvalidDicomError, AttributeError, ValueError, EOFError) as err:
        raise HeaderError(f"instance header is not readable DICOM: {err}") from err

    def text(keyword: str) -> str:
        value = ds.get(keyword)
        if value is None:
            return ""
        if isinstance(value, MultiValue):
            # A backslash in a text value reads as a value separator; keep the text whole.
            return "\\".join(str(item) for item in value)
        return str(value)

    return StudyHeader(
        study_uid=study_uid,
        patient_id=text("PatientID"),
        issuer_of_patient_id=text("IssuerOfPatientID"),
        patient_name=text("PatientName"),
        birth_date=text("PatientBirthDate"),
        sex=text("PatientSex"),
        accession_number=text("AccessionNumber"),
        study_date=text("StudyDate"),
        study_time=text("StudyTime"),
        study_description=text("StudyDescription"),
        modality=text("Modality"),
    )
