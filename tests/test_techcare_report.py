"""The TechCare Report adapter against the simulator's report route, over real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from pacsor.ai.milvue_api import MilvueApi
from pacsor.ai.techcare_report import ReportError, ReportNotReady, TechCareReports
from tests.dicom_factory import make_image, new_uid, to_bytes
from tests.harness import TOKEN, Simulator
from tests.nats_server import free_port

pytestmark = pytest.mark.simulator(running_polls=1)


@pytest.fixture
async def reports(simulator: Simulator) -> AsyncIterator[TechCareReports]:
    source = TechCareReports(simulator.url, TOKEN, timeout=10)
    yield source
    await source.aclose()


async def upload(url: str, polls: int = 1) -> str:
    """Upload a one-image study to the simulator; poll its status `polls` times."""
    study = new_uid()
    data = to_bytes(make_image(study))

    async def part() -> AsyncIterator[bytes]:
        yield data

    async with MilvueApi(url, TOKEN) as api:
        await api.upload_study(study, [part])
        for _ in range(polls):
            await api.get_status(study)
    return study


@pytest.mark.parametrize(
    ("language", "title", "heading"),
    [("EN", "Chest radiograph", "Findings"), ("FR", "Radiographie thoracique", "Résultats")],
)
async def test_report_in_each_language(
    simulator: Simulator, reports: TechCareReports, language: str, title: str, heading: str
) -> None:
    study = await upload(simulator.url)
    report = await reports.fetch(study, language)
    assert (report.title, report.language) == (title, language)
    assert report.indication and report.technique and report.findings and report.conclusion
    assert heading in report.as_text()
    assert ("Fracture" in report.findings) and ("Fracture" in report.conclusion)


async def test_report_not_written_yet(simulator: Simulator, reports: TechCareReports) -> None:
    study = await upload(simulator.url, polls=0)
    with pytest.raises(ReportNotReady) as caught:
        await reports.fetch(study, "EN")
    assert caught.value.retryable


async def test_unknown_study_and_bad_token_are_final(
    simulator: Simulator, reports: TechCareReports
) -> None:
    with pytest.raises(ReportError, match="HTTP 404") as unknown:
        await reports.fetch(new_uid(), "EN")
    assert not unknown.value.retryable
    study = await upload(simulator.url)
    wrong = TechCareReports(simulator.url, "wrong-token", timeout=10)
    try:
        with pytest.raises(ReportError, match="HTTP 403") as refused:
            await wrong.fetch(study, "FR")
        assert not refused.value.retryable
    finally:
        await wrong.aclose()


async def test_unreachable_service_is_worth_retrying() -> None:
    source = TechCareReports(f"http://127.0.0.1:{free_port()}", TOKEN, timeout=5)
    try:
        with pytest.raises(ReportError) as caught:
            await source.fetch(new_uid(), "EN")
        assert caught.value.retryable
    finally:
        await source.aclose()
