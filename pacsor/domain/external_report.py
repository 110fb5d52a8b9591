"""Accepting a report pushed by an external report provider: payload in, event or refusal out.

    {"StudyInstanceUID": "1.2.3", "report_id": "R-42", "title": "Chest radiograph",
     "indication": "...", "technique": "...", "findings": "...", "conclusion": "...",
     "language": "EN"}

`report_id` is the provider's own identifier: a report pushed twice is recorded once.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from pacsor.domain import events as ev
from pacsor.errors import InvalidInput

MAX_TEXT = 64 * 1024
Uid = Annotated[str, Meta(pattern=r"^[0-9]+(\.[0-9]+)*$", max_length=64)]
Text = Annotated[str, Meta(max_length=MAX_TEXT)]


class ReportRefused(InvalidInput):
    """The report is not accepted; `status` is the HTTP status that says why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class ReportPayload(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    forbid_unknown_fields=True,
):
    study_uid: Uid = msgspec.field(name="StudyInstanceUID")
    report_id: Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")]
    title: Annotated[str, Meta(min_length=1, max_length=512)]
    indication: Text = ""
    technique: Text = ""
    findings: Text = ""
    conclusion: Text = ""
    language: Literal["EN", "FR", "en", "fr"] = "EN"


def accept_report(
    provider: str, providers: tuple[str, ...], body: bytes
) -> ev.ExternalReportReceived:
    """The event recording `body` from `provider`, or ReportRefused with the reason."""
    if provider not in providers:
        raise ReportRefused(404, f"unknown report provider {provider[:64]!r}")
    try:
        payload = msgspec.json.decode(body, type=ReportPayload)
    except msgspec.ValidationError as err:
        raise ReportRefused(422, f"invalid report: {err}") from err
    except msgspec.DecodeError as err:
        raise ReportRefused(400, f"the report is not JSON: {err}") from err
    if not (payload.findings or payload.conclusion):
        raise ReportRefused(422, "invalid report: it has neither findings nor a conclusion")
    report = msgspec.convert(payload, ev.WrittenReport, from_attributes=True)
    return ev.ExternalReportReceived(
        study_uid=payload.study_uid,
        provider=provider,
        report_id=payload.report_id,
        report=msgspec.structs.replace(report, language=payload.language.upper()),
    )
