"""The one place that asks the TechCare Report (TCR) service for a study's written report.

The TCR API is not public. What pacsor sends, and all it relies on:

    GET {TCR_API_URL}/v1/reports/{StudyInstanceUID}?language=en|fr
    x-goog-meta-owner: <the core's token>          (the same key as the inference API)
    Accept: application/json

    200 {"StudyInstanceUID": ..., "status": "done",
         "report": {"title", "indication", "technique", "findings", "conclusion", "language"}}
    200 {"StudyInstanceUID": ..., "status": "running"}     not written yet: ask again later
    404                                                    no report for this study
    401/403                                                the token is refused

Any other answer is an error; transport errors, 408, 429 and 5xx may succeed later.
"""

from __future__ import annotations

from urllib.parse import quote

import httpx
import msgspec

from pacsor.domain.events import WrittenReport
from pacsor.errors import PacsorError
from pacsor.hl7.report import Report

OWNER_HEADER = "x-goog-meta-owner"


class ReportError(PacsorError):
    def __init__(self, message: str, retryable: bool) -> None:
        super().__init__(message)
        self._retryable = retryable

    @property
    def retryable(self) -> bool:
        return self._retryable


class ReportNotReady(ReportError):
    def __init__(self, study_uid: str) -> None:
        super().__init__(f"report of {study_uid} still being written", retryable=True)


class _ReportBody(WrittenReport, frozen=True, kw_only=True):
    language: str = ""  # none given: the language asked for


class _Answer(msgspec.Struct, frozen=True, rename={"study": "StudyInstanceUID"}):
    status: str
    study: str = ""
    report: _ReportBody | None = None


class TechCareReports:
    def __init__(self, base_url: str, token: str, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.AsyncClient(
            timeout=timeout, headers={OWNER_HEADER: token, "Accept": "application/json"}
        )

    async def fetch(self, study_uid: str, language: str) -> Report:
        """The report of `study_uid`; ReportNotReady while it is being written."""
        path = f"/v1/reports/{quote(study_uid, safe='')}"
        try:
            response = await self._client.get(
                self.base_url + path, params={"language": language.lower()}
            )
        except httpx.HTTPError as err:
            raise ReportError(f"TCR GET {path}: {err or type(err).__name__}", True) from err
        if response.status_code != 200:
            status = response.status_code
            retryable = status in {408, 429} or status >= 500
            raise ReportError(f"TCR GET {path}: HTTP {status}: {response.text[:200]}", retryable)
        try:
            answer = msgspec.json.decode(response.content, type=_Answer)
        except msgspec.MsgspecError as err:
            raise ReportError(f"TCR GET {path}: unreadable answer: {err}", False) from err
        if answer.status == "running":
            raise ReportNotReady(study_uid)
        if answer.status != "done" or answer.report is None:
            raise ReportError(f"TCR GET {path}: status {answer.status!r} without a report", False)
        body = answer.report
        report = msgspec.convert(body, Report, from_attributes=True)
        return msgspec.structs.replace(report, language=(body.language or language).upper())

    async def aclose(self) -> None:
        await self._client.aclose()
