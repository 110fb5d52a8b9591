"""The AI's JSON findings (GET /v3/<command>/<study>), as much of them as the message needs.

Detections (smarturgences, detection, smartchest, trauma) give study-level findings with a
label and a score; measures (smartxpert, measures) give per-instance measures with a value and
a unit. Both carry the name in every language of the API.
"""

from __future__ import annotations

import msgspec

from pacsor.errors import InvalidInput


class FindingsError(InvalidInput):
    """The findings document cannot be read."""


class Finding(msgspec.Struct, frozen=True, kw_only=True):
    value: str
    label: str
    score: float
    translation: dict[str, str] = {}

    def name(self, language: str) -> str:
        return self.translation.get(language.lower()) or self.value


class Measure(msgspec.Struct, frozen=True, kw_only=True):
    value: str
    measure: float
    unit: str
    type: str = ""
    translation: dict[str, str] = {}

    def name(self, language: str) -> str:
        return self.translation.get(language.lower()) or self.value


class InstanceFindings(msgspec.Struct, frozen=True, kw_only=True, rename={"sop": "SOPInstanceUID"}):
    sop: str = ""
    findings: tuple[Finding, ...] = ()
    measures: tuple[Measure, ...] = ()


class FindingsDocument(
    msgspec.Struct, frozen=True, kw_only=True, rename={"study": "StudyInstanceUID"}
):
    status: str
    study: str = ""
    version: str = ""
    message: str = ""
    findings: tuple[Finding, ...] = ()
    instances: tuple[InstanceFindings, ...] = ()

    @property
    def running(self) -> bool:
        return self.status != "done"

    def measures(self) -> tuple[tuple[int, Measure], ...]:
        """Every measure with the rank (from 1) of the instance it was made on."""
        return tuple(
            (rank, measure)
            for rank, instance in enumerate(self.instances, start=1)
            for measure in instance.measures
        )


_decoder = msgspec.json.Decoder(FindingsDocument)


def decode_findings(data: bytes) -> FindingsDocument:
    try:
        return _decoder.decode(data)
    except msgspec.MsgspecError as err:
        raise FindingsError(f"findings JSON is not readable: {err}") from err


class StudyFindings(msgspec.Struct, frozen=True, kw_only=True):
    """What goes into the message: detections, measures and what is missing (and why)."""

    detections: tuple[Finding, ...] = ()
    measures: tuple[tuple[int, Measure], ...] = ()
    missing: tuple[str, ...] = ()  # inference commands whose findings were not there
