"""What the simulated AI produces: Secondary Capture result images and findings JSON.

Everything is a pure function of the inputs (study, instances, command): fetching twice gives
the same UIDs, pixels and scores, as with the real API. No clock value is written.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import uuid
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    SecondaryCaptureImageStorage,
)

from pacsor.devtools.simulator.settings import VERSION, ResultSyntax

log = logging.getLogger(__name__)

# Commands in use today (see the reference README), beyond the two in the OpenAPI enum.
INFERENCE_COMMANDS = (
    "smarturgences",
    "smartxpert",
    "detection",
    "measures",
    "smartchest",
    "trauma",
)
MAX_SIZE = 512
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_OID, "pacsor.devtools.simulator")
_IMPLEMENTATION_UID = "2.25." + str(uuid.uuid5(_NAMESPACE, "implementation").int)
_BANNER_COLOURS: dict[str, tuple[int, int, int]] = {
    "smarturgences": (255, 140, 0),
    "smartxpert": (30, 144, 255),
    "detection": (148, 0, 211),
    "measures": (50, 205, 50),
    "smartchest": (0, 206, 209),
    "trauma": (255, 215, 0),
}
_BOX_COLOUR = (255, 0, 0)
# Attributes copied from the input so the result files with the right patient and study.
_COPIED = (
    "SpecificCharacterSet",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDescription",
)
_LANGUAGES = ("en", "fr", "es", "de", "it", "pt")
_TRANSLATIONS: dict[str, tuple[str, ...]] = {
    "chest": ("Chest", "Thorax", "Tórax", "Thorax", "Torace", "Tórax"),
    "fracture": ("Fracture", "Fracture", "Fractura", "Fraktur", "Frattura", "Fratura"),
    "pleural_effusion": (
        "Pleural effusion",
        "Épanchement pleural",
        "Derrame pleural",
        "Pleuraerguss",
        "Versamento pleurico",
        "Derrame pleural",
    ),
    "pneumothorax": (
        "Pneumothorax",
        "Pneumothorax",
        "Neumotórax",
        "Pneumothorax",
        "Pneumotorace",
        "Pneumotórax",
    ),
    "nodule": ("Nodule", "Nodule", "Nódulo", "Rundherd", "Nodulo", "Nódulo"),
    "cobb_angle": (
        "Cobb angle",
        "Angle de Cobb",
        "Ángulo de Cobb",
        "Cobb-Winkel",
        "Angolo di Cobb",
        "Ângulo de Cobb",
    ),
    "leg_length": (
        "Leg length",
        "Longueur du membre",
        "Longitud de la pierna",
        "Beinlänge",
        "Lunghezza dell'arto",
        "Comprimento da perna",
    ),
    "dislocation": ("Dislocation", "Luxation", "Luxación", "Luxation", "Lussazione", "Luxação"),
    "joint_effusion": (
        "Joint effusion",
        "Épanchement articulaire",
        "Derrame articular",
        "Gelenkerguss",
        "Versamento articolare",
        "Derrame articular",
    ),
    "bone_lesion": (
        "Bone lesion",
        "Lésion osseuse",
        "Lesión ósea",
        "Knochenläsion",
        "Lesione ossea",
        "Lesão óssea",
    ),
    "consolidation": (
        "Consolidation",
        "Condensation",
        "Consolidación",
        "Konsolidierung",
        "Consolidamento",
        "Consolidação",
    ),
}
_FINDINGS = ("fracture", "pleural_effusion", "pneumothorax", "nodule")
# What each detection product looks for (GetSmarturgencesResponseV3 findings); the first is
# always abnormal, so every result shows a box. Measure products (smartxpert, measures) give
# the GetSmartxpertResponseV3 measures.
DETECTION_FINDINGS: dict[str, tuple[str, ...]] = {
    "smarturgences": _FINDINGS,
    "detection": ("fracture", "dislocation", "joint_effusion"),
    "trauma": ("fracture", "dislocation", "joint_effusion", "bone_lesion"),
    "smartchest": ("pleural_effusion", "pneumothorax", "nodule", "consolidation"),
}
MEASURE_COMMANDS = ("smartxpert", "measures")


class InputInstance(msgspec.Struct, frozen=True, kw_only=True):
    """What the findings need to know about one received image."""

    sop_instance_uid: str
    series_instance_uid: str
    rows: int
    columns: int
    pixel_spacing_mm: float | None


def derived_uid(*parts: str) -> str:
    """A UID under the 2.25 root (UUID-derived), the same for the same parts."""
    return "2.25." + str(uuid.uuid5(_NAMESPACE, "\x1f".join(parts)).int)


def result_sop_uid(input_sop_uid: str, inference_command: str) -> str:
    return derived_uid("sop", input_sop_uid, inference_command)


def result_series_uid(study_uid: str, inference_command: str) -> str:
    return derived_uid("series", study_uid, inference_command)


def _unit(*parts: str) -> float:
    """A number in [0, 1) fixed by the parts: deterministic "AI" scores and positions."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def finding_box(sop_uid: str, rows: int, columns: int) -> tuple[int, int, int, int]:
    """The simulated lesion's box (x0, y0, x1, y1) in the input image's pixel coordinates."""
    width = max(2, int(columns * (0.25 + 0.15 * _unit(sop_uid, "w"))))
    height = max(2, int(rows * (0.25 + 0.15 * _unit(sop_uid, "h"))))
    x0 = int((columns - width) * (0.2 + 0.6 * _unit(sop_uid, "x")))
    y0 = int((rows - height) * (0.2 + 0.6 * _unit(sop_uid, "y")))
    return x0, y0, min(columns - 1, x0 + width), min(rows - 1, y0 + height)


# --- result images --------------------------------------------------------------------------


def _grey_to_unit8(image: npt.NDArray[Any], monochrome1: bool) -> npt.NDArray[np.uint8]:
    data = image.astype(np.float64)
    low, high = np.percentile(data, (0.5, 99.5))
    if high <= low:
        high = low + 1.0
    scaled = np.clip((data - low) / (high - low), 0.0, 1.0)
    if monochrome1:  # MONOCHROME1: high values are dark
        scaled = 1.0 - scaled
    return np.asarray(np.round(scaled * 255), dtype=np.uint8)


def _source_rgb(source: Dataset) -> npt.NDArray[np.uint8]:
    """The input image as 8-bit RGB (first frame); a gradient when it cannot be decoded."""
    try:
        pixels = source.pixel_array
    except Exception as exc:  # any decoding failure falls back to a gradient, by design
        log.info("simulator: %s not decoded (%s), using a gradient", source.SOPInstanceUID, exc)
        return _gradient(
            int(source.get("Rows", 256) or 256), int(source.get("Columns", 256) or 256)
        )
    frames = int(source.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        pixels = pixels[0]
    if pixels.ndim == 2:
        grey = _grey_to_unit8(pixels, source.get("PhotometricInterpretation") == "MONOCHROME1")
        return np.repeat(grey[:, :, np.newaxis], 3, axis=2)
    if pixels.ndim == 3 and pixels.shape[2] == 3:
        return _grey_to_unit8(pixels, monochrome1=False)
    log.info("simulator: unexpected pixel shape %s, using a gradient", pixels.shape)
    return _gradient(pixels.shape[0], pixels.shape[1])


def _gradient(rows: int, columns: int) -> npt.NDArray[np.uint8]:
    y = np.linspace(0, 1, max(rows, 1))[:, np.newaxis]
    x = np.linspace(0, 1, max(columns, 1))[np.newaxis, :]
    grey = np.asarray(np.round((x + y) / 2 * 255), dtype=np.uint8)
    return np.repeat(grey[:, :, np.newaxis], 3, axis=2)


def _downscale(image: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """Nearest-neighbour reduction so that neither side exceeds MAX_SIZE."""
    rows, columns = image.shape[:2]
    scale = min(1.0, MAX_SIZE / max(rows, columns))
    if scale == 1.0:
        return image
    new_rows, new_columns = max(1, round(rows * scale)), max(1, round(columns * scale))
    row_index = (np.arange(new_rows) * rows / new_rows).astype(np.intp)
    column_index = (np.arange(new_columns) * columns / new_columns).astype(np.intp)
    return np.asarray(image[row_index][:, column_index], dtype=np.uint8)


def output_shape(rows: int, columns: int) -> tuple[int, int, int]:
    """The (rows, columns, 3) of the result image made from an input of this size."""
    scale = min(1.0, MAX_SIZE / max(rows, columns))
    if scale == 1.0:
        return rows, columns, 3
    return max(1, round(rows * scale)), max(1, round(columns * scale)), 3


def _draw_overlay(
    image: npt.NDArray[np.uint8], box: tuple[int, int, int, int], command: str
) -> None:
    """Burn in a banner coloured per command and a red box around the "finding"."""
    rows, columns = image.shape[:2]
    banner = max(2, rows // 12)
    image[:banner, :] = _BANNER_COLOURS.get(command, (255, 255, 255))
    thickness = max(1, min(rows, columns) // 128)
    x0, y0, x1, y1 = box
    image[y0 : y1 + 1, x0 : x0 + thickness] = _BOX_COLOUR
    image[y0 : y1 + 1, max(x0, x1 - thickness + 1) : x1 + 1] = _BOX_COLOUR
    image[y0 : y0 + thickness, x0 : x1 + 1] = _BOX_COLOUR
    image[max(y0, y1 - thickness + 1) : y1 + 1, x0 : x1 + 1] = _BOX_COLOUR


_SYNTAXES: dict[ResultSyntax, UID] = {
    "explicit": ExplicitVRLittleEndian,
    "rle": RLELossless,  # encoded by pydicom itself
    "jpeg2000": JPEG2000Lossless,  # encoded by pylibjpeg-openjpeg
}


def build_result(
    path: Path, inference_command: str, instance_number: int, syntax: ResultSyntax = "explicit"
) -> bytes:
    """The Secondary Capture result for one input file, as a DICOM file (with file meta), in
    the transfer syntax `syntax` names."""
    source = pydicom.dcmread(path)
    rgb = _source_rgb(source)
    rows, columns = rgb.shape[:2]
    image = np.ascontiguousarray(_downscale(rgb))
    scale_y, scale_x = image.shape[0] / rows, image.shape[1] / columns
    x0, y0, x1, y1 = finding_box(source.SOPInstanceUID, rows, columns)
    box = (int(x0 * scale_x), int(y0 * scale_y), int(x1 * scale_x), int(y1 * scale_y))
    _draw_overlay(image, box, inference_command)

    study_uid = str(source.StudyInstanceUID)
    sop_uid = result_sop_uid(str(source.SOPInstanceUID), inference_command)
    ds = Dataset()
    for keyword in _COPIED:
        if keyword in source:
            setattr(ds, keyword, source[keyword].value)
        elif keyword not in ("SpecificCharacterSet", "StudyDescription"):
            setattr(ds, keyword, "")  # type 2 attributes: present, possibly empty
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.Manufacturer = "pacsor"
    ds.SeriesInstanceUID = result_series_uid(study_uid, inference_command)
    ds.SeriesNumber = 9000 + _command_rank(inference_command)
    ds.SeriesDescription = f"Milvue simulator - {inference_command}"
    ds.InstanceNumber = instance_number
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.BurnedInAnnotation = "YES"
    ds.DerivationDescription = f"pacsor simulator overlay ({inference_command})"
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    ds.SourceImageSequence = [reference]
    ds.set_pixel_data(
        image, photometric_interpretation="RGB", bits_stored=8, generate_instance_uid=False
    )

    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = UID(_IMPLEMENTATION_UID)
    ds.file_meta.ImplementationVersionName = "PACSOR_SIM_1"
    if syntax != "explicit":
        ds.compress(_SYNTAXES[syntax], generate_instance_uid=False)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _command_rank(command: str) -> int:
    return INFERENCE_COMMANDS.index(command) + 1 if command in INFERENCE_COMMANDS else 0


# --- findings -------------------------------------------------------------------------------


def read_input(path: Path) -> InputInstance:
    """The header facts the findings need, read without the pixel data."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    return InputInstance(
        sop_instance_uid=str(ds.SOPInstanceUID),
        series_instance_uid=str(ds.get("SeriesInstanceUID", "")),
        rows=int(ds.get("Rows", 0) or 0),
        columns=int(ds.get("Columns", 0) or 0),
        pixel_spacing_mm=float(spacing[0]) if spacing else None,
    )


def _translation(value: str) -> dict[str, str]:
    return dict(zip(_LANGUAGES, _TRANSLATIONS[value], strict=True))


def _label(score: float) -> str:
    if score >= 0.7:
        return "abnormal"
    if score >= 0.4:
        return "doubt"
    return "normal"


def _score(study_or_sop: str, value: str, first: str = _FINDINGS[0]) -> float:
    # The first finding is always abnormal, so every result shows a box.
    base = _unit(study_or_sop, value)
    return round(0.7 + 0.29 * base if value == first else 0.69 * base, 3)


def _finding(value: str, score: float) -> dict[str, Any]:
    return {
        "value": value,
        "translation": _translation(value),
        "label": _label(score),
        "score": score,
    }


def _body_parts() -> list[dict[str, Any]]:
    return [{"value": "chest", "translation": _translation("chest"), "score": 0.98}]


def smarturgences_findings(study_uid: str, instances: list[InputInstance]) -> dict[str, Any]:
    """A SmarturgencesV3 answer (status done) for these instances."""
    return detection_findings("smarturgences", study_uid, instances)


def detection_findings(
    command: str, study_uid: str, instances: list[InputInstance]
) -> dict[str, Any]:
    """A detection product's answer (the SmarturgencesV3 schema, status done)."""
    values = DETECTION_FINDINGS[command]
    per_instance = []
    best: dict[str, float] = dict.fromkeys(values, 0.0)
    for instance in instances:
        scores = {value: _score(instance.sop_instance_uid, value, values[0]) for value in values}
        for value, score in scores.items():
            best[value] = max(best[value], score)
        x0, y0, x1, y1 = finding_box(instance.sop_instance_uid, instance.rows, instance.columns)
        box = _finding(values[0], scores[values[0]])
        box.update(top_left=[x0, y0], bottom_right=[x1, y1])
        per_instance.append(
            {
                "SOPInstanceUID": instance.sop_instance_uid,
                "SeriesInstanceUID": instance.series_instance_uid,
                "body_parts": _body_parts(),
                "findings": [_finding(value, score) for value, score in scores.items()],
                "bounding_boxes": [box],
            }
        )
    findings = [_finding(value, score) for value, score in best.items()]
    top = max(findings, key=lambda finding: float(finding["score"]))
    hl7 = "\r".join(
        f"OBX|{rank}|ST|{f['value']}^{f['translation']['en']}||{f['label']}|||{f['score']}"
        for rank, f in enumerate(findings, start=1)
    )
    items = [f"{f['translation']['en']}: {f['label']} ({f['score']})" for f in findings]
    return {
        "StudyInstanceUID": study_uid,
        "status": "done",
        "version": VERSION,
        "flag": {"score": top["score"], "label": top["label"]},
        "hl7": hl7,
        "findings": findings,
        "instances": per_instance,
        "report": {
            "title": "Chest radiograph (simulated)",
            "techniques": [f"{len(instances)} view(s)"],
            "results": [{"region": "Chest", "items": items}],
        },
    }


def _angle_degrees(first: list[int], second: list[int]) -> float:
    a = math.atan2(first[3] - first[1], first[2] - first[0])
    b = math.atan2(second[3] - second[1], second[2] - second[0])
    angle = abs(math.degrees(a - b)) % 180
    return round(min(angle, 180 - angle), 1)


def smartxpert_findings(study_uid: str, instances: list[InputInstance]) -> dict[str, Any]:
    """A SmartxpertV3 answer (status done): an angle and a length per instance."""
    return measure_findings("smartxpert", study_uid, instances)


def measure_findings(
    command: str, study_uid: str, instances: list[InputInstance]
) -> dict[str, Any]:
    """A measure product's answer (the SmartxpertV3 schema, status done): an angle and a
    length per instance."""
    if command not in MEASURE_COMMANDS:
        raise ValueError(f"{command!r} is not a measure product")
    per_instance = []
    for instance in instances:
        uid, rows, columns = instance.sop_instance_uid, instance.rows, instance.columns
        x0, y0, x1, y1 = finding_box(uid, rows, columns)
        tilt = int((y1 - y0) * 0.3 * _unit(uid, "tilt"))
        first = [x0, y0, x1, y0 + tilt]
        second = [x0, y1, x1, y1 - tilt]
        segment = [x0, y0, x0, y1]
        pixels = float(y1 - y0)
        spacing = instance.pixel_spacing_mm
        measures = [
            {
                "type": "angle",
                "value": "cobb_angle",
                "translation": _translation("cobb_angle"),
                "measure": _angle_degrees(first, second),
                "unit": "deg",
                "lines": [first, second],
            },
            {
                "type": "length",
                "value": "leg_length",
                "translation": _translation("leg_length"),
                "measure": round(pixels * spacing if spacing else pixels, 1),
                "unit": "mm" if spacing else "px",
                "lines": [segment],
            },
        ]
        per_instance.append(
            {
                "SOPInstanceUID": uid,
                "SeriesInstanceUID": instance.series_instance_uid,
                "body_parts": _body_parts(),
                "measures": measures,
            }
        )
    return {
        "StudyInstanceUID": study_uid,
        "status": "done",
        "version": VERSION,
        "instances": per_instance,
    }
