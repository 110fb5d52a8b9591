"""Small, valid DICOM images for tests: pacsor.devtools.sample_study with test-sized defaults.

ds = make_image(study_uid)                     # a 64x64 CR image in a new series
ds = make_image(study_uid, series_uid, rows=1024, cols=800, modality="DX",
                sop_class=DX_FOR_PRESENTATION, PatientID="P2")
data = to_bytes(ds)                            # a Part 10 file, as a modality sends it
"""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from pacsor.devtools import sample_study
from pacsor.devtools.sample_study import to_bytes

CR = ComputedRadiographyImageStorage
DX_FOR_PRESENTATION = DigitalXRayImageStorageForPresentation
SC = SecondaryCaptureImageStorage

__all__ = ["CR", "DX_FOR_PRESENTATION", "SC", "make_image", "new_uid", "to_bytes"]


def new_uid() -> str:
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
    return sample_study.make_image(
        study_uid,
        series_uid=series_uid,
        sop_uid=sop_uid,
        rows=rows,
        columns=cols,
        modality=modality,
        sop_class_uid=sop_class,
        **attributes,
    )
