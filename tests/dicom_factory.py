"""Small, valid DICOM images for tests, built in memory with pydicom.

    ds = make_image(study_uid)                     # a 64x64 CR image in a new series
    ds = make_image(study_uid, series_uid, rows=1024, cols=800, modality="DX",
                    sop_class=DX_FOR_PRESENTATION)
    data = to_bytes(ds)                            # a Part 10 file, as a modality sends it

Pixel values are a deterministic 12-bit pattern (a gradient with a bright square), so images
are non-trivial to display yet identical from run to run. Patient and study attributes have
fixed test values unless overridden with keyword arguments named after DICOM keywords.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

CR = ComputedRadiographyImageStorage
DX_FOR_PRESENTATION = DigitalXRayImageStorageForPresentation
SC = SecondaryCaptureImageStorage

# Identifies the "modality" that wrote the files (File Meta Implementation Class UID).
IMPLEMENTATION_UID = UID("1.2.826.0.1.3680043.10.1435.1")


def new_uid() -> str:
    """A fresh, valid UID (pydicom's root with random entropy)."""
    return str(generate_uid())


def make_image(
    study_uid: str,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    rows: int = 64,
    cols: int = 64,
    modality: str = "CR",
    sop_class: str = CR,
    **attributes: Any,
) -> Dataset:
    """A single-frame MONOCHROME2 uint16 image (12 bits stored) with file meta.

    `series_uid` and `sop_uid` are generated when not given. Extra keyword arguments set or
    override attributes by keyword, e.g. `PatientID="P2"`, `AccessionNumber="A7"`.
    """
    ds = Dataset()
    ds.SOPClassUID = UID(sop_class)
    ds.SOPInstanceUID = UID(sop_uid or new_uid())
    ds.StudyInstanceUID = UID(study_uid)
    ds.SeriesInstanceUID = UID(series_uid or new_uid())
    ds.Modality = modality
    ds.PatientName = "Test^Patient"
    ds.PatientID = "PID-0001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.AccessionNumber = "ACC-0001"
    ds.StudyID = "1"
    ds.StudyDate = "20240102"
    ds.StudyTime = "101500"
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.BodyPartExamined = "CHEST"
    ds.ImagerPixelSpacing = [0.2, 0.2]

    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = _pixels(rows, cols).tobytes()

    for keyword, value in attributes.items():
        setattr(ds, keyword, value)

    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = IMPLEMENTATION_UID
    return ds


def _pixels(rows: int, cols: int) -> np.ndarray[Any, np.dtype[np.uint16]]:
    y = np.arange(rows, dtype=np.float64)[:, np.newaxis] / max(rows - 1, 1)
    x = np.arange(cols, dtype=np.float64)[np.newaxis, :] / max(cols - 1, 1)
    image = (x + y) / 2 * 3000
    image[rows // 4 : rows // 2, cols // 4 : cols // 2] = 4095
    return np.asarray(image, dtype=np.uint16)


def to_bytes(ds: Dataset) -> bytes:
    """The dataset as a DICOM Part 10 file: preamble, file meta, then the data set."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
