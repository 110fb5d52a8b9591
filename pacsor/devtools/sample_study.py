"""Synthetic studies for the demo, the tests and the benchmark: real DICOM, made up patients."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ComputedRadiographyImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)


def make_image(
    study_uid: str,
    *,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    rows: int = 256,
    columns: int = 256,
    modality: str = "CR",
    sop_class_uid: str = str(ComputedRadiographyImageStorage),
    patient_id: str = "PACSOR-DEMO-1",
    instance_number: int = 1,
    seed: int = 0,
    **attributes: Any,
) -> Dataset:
    """A 16-bit MONOCHROME2 radiograph with file meta, as a modality would send it.

    The pixels are deterministic for a given `seed`. Extra keyword arguments set attributes
    by DICOM keyword, e.g. `PatientID="P2"`.
    """
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid) if sop_uid else generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    now = datetime.now(UTC)
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.PatientName = "DEMO^PACSOR"
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.AccessionNumber = "ACC" + study_uid[-8:].replace(".", "")
    ds.StudyDate = now.strftime("%Y%m%d")
    ds.StudyTime = now.strftime("%H%M%S")
    ds.Modality = modality
    ds.BodyPartExamined = "CHEST"
    ds.ReferringPhysicianName = ""
    ds.ImagerPixelSpacing = [0.2, 0.2]
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:columns]
    body = np.exp(
        -(((x - columns / 2) / (columns / 3)) ** 2 + ((y - rows / 2) / (rows / 2.5)) ** 2)
    )
    pixels = (body * 3000 + rng.integers(0, 200, size=(rows, columns))).astype(np.uint16)
    ds.PixelData = pixels.tobytes()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def to_bytes(ds: Dataset) -> bytes:
    """The DICOM Part 10 file of `ds`."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def make_study(instances: int = 3, rows: int = 256, columns: int = 256) -> list[Dataset]:
    """One study of `instances` images in one series."""
    study_uid = generate_uid()
    series_uid = generate_uid()
    return [
        make_image(
            study_uid,
            series_uid=series_uid,
            rows=rows,
            columns=columns,
            instance_number=n + 1,
            seed=n,
        )
        for n in range(instances)
    ]
