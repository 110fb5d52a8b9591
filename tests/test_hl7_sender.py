"""The hl7 component end to end: real nats-server, real MLLP listener, stored findings.

Each test records what the poller records (the instance, StudyComplete, the findings JSON
and ResultReady), runs the hl7 component, and reads what the RIS received and what pacsor
recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client

from pacsor.ai.techcare_report import TechCareReports
from pacsor.config import Settings, load_settings
from pacsor.config.hl7 import Hl7Settings, as_variables
from pacsor.devtools.demo_ris import DemoRis
from pacsor.devtools.sample_study import make_study
from pacsor.devtools.simulator import SimulatorSettings, running_simulator
from pacsor.dicom.storage_scu import send_files
from pacsor.domain import events as ev
from pacsor.domain.retry import RetryPolicy
from pacsor.hl7.oru import control_id
from pacsor.hl7.report import Report
from pacsor.jetstream.blobs import BlobStore, sha256_digest
from pacsor.jetstream.eventlog import EventLog
from pacsor.jetstream.subjects import (
    RESULTS_BUCKET,
    events_filter,
    webps_subject,
)
from tests.dicom_factory import make_image, new_uid, to_bytes
from tests.harness import (
    ReceivingPacs,
    Simulator,
    gateway_settings,
    running_gateway,
    to_the_ris,
    wait_for_event,
    write_study,
)
from tests.hl7_fixtures import (
    CORE,
    TOKEN,
    external_report,
    outcome,
    record_results,
    sent_messages,
)
from tests.hl7_parsers import assert_parsers_agree
from tests.hl7_reading import ParsedOru
from tests.nats_server import NatsServer

pytestmark = pytest.mark.simulator(running_polls=0)

POLICY = RetryPolicy(initial_seconds=0.1, max_seconds=0.5, max_attempts=3)
HOSTILE = "Smith|Jones ~x\\y&z\r\nnext line\tTAB"


@pytest.fixture
async def reports(simulator: Simulator) -> AsyncIterator[TechCareReports]:
    source = TechCareReports(simulator.url, TOKEN, timeout=10)
    yield source
    await source.aclose()


@pytest.fixture
async def ris() -> AsyncIterator[DemoRis]:
    async with DemoRis() as peer:
        yield peer


@contextlib.asynccontextmanager
async def running_hl7(
    nc: Client,
    ris: DemoRis,
    policy: RetryPolicy = POLICY,
    ris_timeout_seconds: float = 1.0,
    **settings: Any,
) -> AsyncIterator[Settings]:
    """`pacsor run hl7`, in this process, sending to `ris`, until the block ends.

    `settings` are Hl7Settings fields, given to the component as their variables.
    """
    hl7 = Hl7Settings(
        enable=True,
        ris_ip="127.0.0.1",
        ris_port=ris.port,
        ris_timeout_seconds=ris_timeout_seconds,
        **settings,
    )
    config = load_settings(
        {
            "NATS_URL": nc.connected_url.geturl() if nc.connected_url else "",
            "TOKEN": TOKEN,
            "RETRY_INITIAL_SECONDS": str(policy.initial_seconds),
            "RETRY_MAX_SECONDS": str(policy.max_seconds),
            "RETRY_MAX_ATTEMPTS": str(policy.max_attempts),
            **{name: value for name, value in as_variables(hl7).items() if value},
        },
        dotenv=None,
    )
    # Its consumers exist once it is ready: they start at "new", after this point.
    async with running_gateway(config, ("hl7",)):
        yield config


@pytest.mark.parametrize(
    ("language", "effusion", "angle"),
    [("EN", "Pleural effusion", "Cobb angle"), ("FR", "Épanchement pleural", "Angle de Cobb")],
)
async def test_findings_and_measures_reach_the_ris(
    nc: Client, ris: DemoRis, language: str, effusion: str, angle: str
) -> None:
    async with running_hl7(nc, ris, language=language):
        ready = await record_results(
            nc, PatientName="Durand^Anaïs", PatientID="P-77", AccessionNumber="ACC-77"
        )
        sent = await outcome(nc, ready)
    assert isinstance(sent, ev.Hl7Sent)
    assert (sent.ack_code, sent.missing_findings, sent.ris) == ("AA", (), f"127.0.0.1:{ris.port}")
    assert sent.control_id == control_id(ready.study_uid, CORE, 1)
    (oru,) = sent_messages(ris, ready)
    pid = oru.segments("PID")[0]
    assert (oru.text(pid, 5, 1), oru.text(pid, 5, 2), oru.text(pid, 3)) == (
        "Durand",
        "Anaïs",
        "P-77",
    )
    assert oru.text(oru.segments("OBR")[0], 2) == "ACC-77"
    observations = oru.observations()
    assert oru.text(observations["110180"], 5) == ready.study_uid
    for finding in ("fracture", "pleural_effusion", "pneumothorax", "nodule"):
        assert finding in observations
    assert oru.text(observations["pleural_effusion"], 3, 2) == effusion
    assert oru.text(observations["cobb_angle/1"], 3, 2) == angle
    assert oru.text(observations["cobb_angle/1"], 6) == "deg"
    assert oru.text(observations["leg_length/1"], 6) == "mm"
    assert oru.text(oru.segments("MSH")[0], 19) == language.lower()


async def test_hostile_text_arrives_escaped(nc: Client, ris: DemoRis) -> None:
    async with running_hl7(nc, ris):
        ready = await record_results(
            nc, PatientName=f"{HOSTILE}^Given", StudyDescription=HOSTILE, AccessionNumber="A|1"
        )
        assert isinstance(await outcome(nc, ready), ev.Hl7Sent)
    (oru,) = sent_messages(ris, ready)
    assert oru.names()[:5] == ["MSH", "PID", "PV1", "ORC", "OBR"]
    assert oru.text(oru.segments("PID")[0], 5, 1) == HOSTILE
    assert oru.text(oru.segments("OBR")[0], 4, 2) == HOSTILE
    assert oru.text(oru.segments("OBR")[0], 2) == "A|1"


async def test_application_error_then_accept_resends_the_same_message(
    nc: Client, ris: DemoRis
) -> None:
    ris.script("AE")
    async with running_hl7(nc, ris):
        ready = await record_results(nc)
        sent = await outcome(nc, ready)
    assert isinstance(sent, ev.Hl7Sent)
    assert (sent.ack_code, sent.tries) == ("AA", 2)
    first, second = sent_messages(ris, ready)
    assert first.er7 == second.er7  # same control ID, same bytes
    assert [r.answer for r in ris.received] == ["AE", "AA"]


async def test_a_ris_that_never_answers_fails_and_the_next_study_goes_through(
    nc: Client, ris: DemoRis
) -> None:
    ris.default = "silence"
    async with running_hl7(nc, ris, policy=POLICY):
        ready = await record_results(nc)
        failed = await outcome(nc, ready)
        assert isinstance(failed, ev.Hl7Failed)
        assert failed.tries == POLICY.max_attempts
        assert "no acknowledgement" in failed.reason
        assert len(sent_messages(ris, ready)) == POLICY.max_attempts
        ris.default = "AA"
        later = await record_results(nc)
        assert isinstance(await outcome(nc, later), ev.Hl7Sent)
    history = [r.event for r in await EventLog(nc.jetstream()).history(ready.study_uid)]
    assert [type(e).__name__ for e in history] == [
        "InstanceReceived",
        "StudyComplete",
        "ResultReady",
        "Hl7Failed",
    ]


async def test_rejections_are_retried_then_failed_with_the_last_answer(
    nc: Client, ris: DemoRis
) -> None:
    ris.default = "AR"
    async with running_hl7(nc, ris):
        ready = await record_results(nc)
        failed = await outcome(nc, ready)
    assert isinstance(failed, ev.Hl7Failed)
    assert (failed.ack_code, failed.tries) == ("AR", POLICY.max_attempts)
    assert "the RIS answered AR" in failed.reason


async def test_a_ris_restarting_mid_message_gets_it_again(nc: Client, ris: DemoRis) -> None:
    async with running_hl7(nc, ris):
        first = await record_results(nc)
        assert isinstance(await outcome(nc, first), ev.Hl7Sent)
        ris.script("silence")
        second = await record_results(nc)
        await ris.wait_for(2)  # the second message is in, unanswered
        await ris.restart()
        sent = await outcome(nc, second)
    assert isinstance(sent, ev.Hl7Sent)
    assert len(sent_messages(ris, second)) == 2  # at least once: sent again after the restart
    assert ris.connections >= 2


async def test_findings_still_running_are_waited_for_then_left_out(
    nc: Client, ris: DemoRis
) -> None:
    async with running_hl7(nc, ris, findings_wait_seconds=1.5):
        ready = await record_results(nc, {"smarturgences": "done", "smartxpert": "running"})
        sent = await outcome(nc, ready)
    assert isinstance(sent, ev.Hl7Sent)
    assert sent.missing_findings == ("smartxpert",)
    assert sent.occurred_at - ready.occurred_at >= timedelta(seconds=1.5)
    (oru,) = sent_messages(ris, ready)
    assert "smartxpert" in oru.text(oru.segments("NTE")[0], 3)
    assert "fracture" in oru.observations()
    assert not any(key.startswith("cobb_angle") for key in oru.observations())


async def test_findings_never_produced_are_not_waited_for(nc: Client, ris: DemoRis) -> None:
    async with running_hl7(nc, ris, findings_wait_seconds=600):
        ready = await record_results(nc, {"smarturgences": "done"})
        sent = await outcome(nc, ready, timeout=30)
    assert isinstance(sent, ev.Hl7Sent)
    assert sent.missing_findings == ("smartxpert",)


async def test_switched_off_findings_stay_out(nc: Client, ris: DemoRis) -> None:
    async with running_hl7(nc, ris, include_measures=False, include_study_uid=False):
        ready = await record_results(nc)
        sent = await outcome(nc, ready)
    assert isinstance(sent, ev.Hl7Sent) and sent.missing_findings == ()
    (oru,) = sent_messages(ris, ready)
    assert sorted(oru.observations()) == ["fracture", "nodule", "pleural_effusion", "pneumothorax"]


@pytest.mark.parametrize(
    ("form", "kind"), [("HTML", "ED/html"), ("B64", "ED/plain"), ("PLAIN", "FT")]
)
@pytest.mark.parametrize("language", ["EN", "FR"])
async def test_the_report_goes_in_each_format(
    nc: Client,
    ris: DemoRis,
    simulator: Simulator,
    reports: TechCareReports,
    form: str,
    kind: str,
    language: str,
) -> None:
    async with running_hl7(
        nc,
        ris,
        include_tcr=True,
        tcr_out_format=form,
        tcr_api_url=simulator.url,
        language=language,
    ):
        ready = await record_results(nc, simulator=simulator.url)
        sent = await outcome(nc, ready)
    assert isinstance(sent, ev.Hl7Sent)
    assert (sent.with_report, sent.missing_findings) == (True, ())
    expected = await reports.fetch(ready.study_uid, language)
    (oru,) = sent_messages(ris, ready)
    got_kind, text = oru.report()
    assert got_kind == kind
    assert text == (expected.as_html() if form == "HTML" else expected.as_text())
    if form == "HTML":
        assert text.startswith("<!DOCTYPE html>") and f'lang="{language.lower()}"' in text


async def test_a_report_that_does_not_exist_is_left_out(
    nc: Client, ris: DemoRis, reports: TechCareReports, simulator: Simulator
) -> None:
    async with running_hl7(
        nc,
        ris,
        include_tcr=True,
        tcr_api_url=simulator.url,
    ):
        ready = await record_results(nc)  # never uploaded: the service answers 404
        sent = await outcome(nc, ready)
    assert isinstance(sent, ev.Hl7Sent)
    assert (sent.with_report, sent.missing_findings) == (False, ("report",))
    (oru,) = sent_messages(ris, ready)
    assert "REPORT" not in oru.observations()
    assert oru.text(oru.segments("NTE")[0], 3).startswith("report")


async def push(nc: Client, provider: str, body: object) -> dict[str, Any]:
    data = body if isinstance(body, bytes) else msgspec.json.encode(body)
    reply = await nc.request(webps_subject(provider), data, timeout=10)
    answer: dict[str, Any] = msgspec.json.decode(reply.data)
    return answer


async def test_an_external_report_pushed_on_nats_reaches_the_ris(nc: Client, ris: DemoRis) -> None:
    async with running_hl7(
        nc, ris, webps_enable=True, webps_providers=("radnet",), tcr_out_format="HTML"
    ):
        ready = await record_results(nc, PatientName="Petit^Léa", AccessionNumber="ACC-W1")
        assert isinstance(await outcome(nc, ready), ev.Hl7Sent)
        body = external_report(ready.study_uid)
        answer = await push(nc, "radnet", body)
        assert answer["status"] == "accepted" and answer["report_id"] == "R-1"
        again = await push(nc, "radnet", body)  # pushed twice, recorded once
        assert again["sequence"] == answer["sequence"]
        sent = await wait_for_event(
            nc,
            ready.study_uid,
            lambda e: isinstance(e, ev.Hl7Sent | ev.Hl7Failed) and e.report_id == "R-1",
        )
    assert isinstance(sent, ev.Hl7Sent)
    assert (sent.core, sent.attempt, sent.with_report) == ("webps-radnet", 0, True)
    (oru,) = [ParsedOru(r.text) for r in ris.received if r.control_id == sent.control_id]
    pid = oru.segments("PID")[0]
    assert (oru.text(pid, 5, 1), oru.text(oru.segments("OBR")[0], 2)) == ("Petit", "ACC-W1")
    expected = Report(
        **{k: v for k, v in body.items() if k not in ("StudyInstanceUID", "report_id")}
    )
    assert oru.report() == ("ED/html", expected.as_html())
    assert sent.control_id != control_id(ready.study_uid, CORE, 1)


@pytest.mark.parametrize(
    ("provider", "body", "code", "reason"),
    [
        ("unknown", None, 404, "unknown report provider"),
        ("radnet", b"{not json", 400, "not JSON"),
        ("radnet", {"title": ""}, 422, "title"),
        ("radnet", {"StudyInstanceUID": "1.2.x"}, 422, "StudyInstanceUID"),
        ("radnet", {"report_id": "../x"}, 422, "report_id"),
        ("radnet", {"findings": "", "conclusion": ""}, 422, "neither findings nor"),
        ("radnet", {"language": "DE"}, 422, "language"),
        ("radnet", {"script": "x"}, 422, "unknown field"),
    ],
)
async def test_bad_external_reports_are_refused_and_record_nothing(
    nc: Client, ris: DemoRis, provider: str, body: object, code: int, reason: str
) -> None:
    study = new_uid()
    payload = body if isinstance(body, bytes) else {**external_report(study), **(body or {})}
    async with running_hl7(nc, ris, webps_enable=True, webps_providers=("radnet",)):
        answer = await push(nc, provider, payload)
    assert (answer["status"], answer["code"]) == ("refused", code)
    assert reason in answer["reason"]
    assert await EventLog(nc.jetstream()).read(events_filter(ev.ExternalReportReceived)) == []


async def test_a_tcr_core_sends_its_report_to_the_ris(
    nc: Client, nats_server: NatsServer, tmp_path: Path, pacs: ReceivingPacs, ris: DemoRis
) -> None:
    """CORE_KIND=tcr: the study goes to the report service, its report to the RIS."""
    with running_simulator(SimulatorSettings(token=TOKEN, running_polls=1)) as (url, sim):
        settings = gateway_settings(
            nats_server.url,
            url,
            pacs,
            TOKEN=TOKEN,
            CORE_NAME="reports",
            CORE_KIND="tcr",
            HL7_ENABLE="true",
            HL7_RIS_IP="127.0.0.1",
            HL7_RIS_PORT=str(ris.port),
            HL7_LANGUAGE="FR",
            HL7_TCR_OUT_FORMAT="HTML",
        )
        async with running_gateway(settings) as ready:
            assert "hl7" in ready["components"]
            study = make_study(2, rows=64, columns=64)
            for ds in study:
                ds.PatientName = "Roux^Inès"
            paths = write_study(tmp_path, study)
            await asyncio.to_thread(send_files, "127.0.0.1", settings.port, "MILVUE", paths)
            uid = str(study[0].StudyInstanceUID)
            sent = await outcome_of(nc, uid)
        assert sim.study(uid) is not None  # uploaded to the report service
    assert isinstance(sent, ev.Hl7Sent)
    assert (sent.core, sent.with_report, sent.missing_findings) == ("reports", True, ())
    (oru,) = [ParsedOru(r.text) for r in ris.received if r.control_id == sent.control_id]
    kind, page = oru.report()
    assert kind == "ED/html" and "<h1>Radiographie thoracique</h1>" in page
    assert oru.text(oru.segments("PID")[0], 5, 2) == "Inès"
    assert not [key for key in oru.observations() if key not in ("110180", "REPORT")]
    assert pacs.received == []  # a report core makes no result image


async def outcome_of(nc: Client, study: str) -> ev.AnyEvent:
    return await wait_for_event(
        nc, study, lambda e: isinstance(e, ev.Hl7Sent | ev.Hl7Failed), timeout=90
    )


async def test_waiting_for_findings_does_not_use_up_the_ris_tries(nc: Client, ris: DemoRis) -> None:
    ris.default = "silence"
    async with running_hl7(nc, ris, findings_wait_seconds=1.0):
        ready = await record_results(nc, {"smarturgences": "done", "smartxpert": "running"})
        failed = await outcome(nc, ready)
    assert isinstance(failed, ev.Hl7Failed)
    # Every try of the retry policy reached the RIS, however many redeliveries the wait took.
    assert POLICY.max_attempts <= len(sent_messages(ris, ready)) <= POLICY.max_attempts + 5


async def test_patient_facts_come_from_a_result_object_once_instances_expired(
    nc: Client, ris: DemoRis
) -> None:
    js = nc.jetstream()
    events = EventLog(js)
    study = new_uid()
    ds = make_image(study, PatientName="Garnier^Maël", AccessionNumber="ACC-R")
    data = to_bytes(ds)
    # The instance was received, then removed from the bucket (retention): only its event stays.
    await events.publish(
        ev.InstanceReceived(
            study_uid=study,
            series_instance_uid=str(ds.SeriesInstanceUID),
            sop_instance_uid=str(ds.SOPInstanceUID),
            sop_class_uid=str(ds.SOPClassUID),
            transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
            object_name=f"{study}/gone",
            size=len(data),
            digest=sha256_digest(data),
        )
    )
    result_name = f"{study}/{CORE}/1/result"
    await BlobStore(nc, js, RESULTS_BUCKET).put(result_name, data)
    result = ev.ResultObject(
        inference_command="smarturgences",
        sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=str(ds.SOPClassUID),
        object_name=result_name,
        size=len(data),
    )
    async with running_hl7(nc, ris, include_measures=False, include_detections=False):
        key = ev.AttemptKey(study_uid=study, core=CORE, attempt=1)
        (page,), digest = ev.list_results(key, (result,))
        await events.publish(page)  # the list is read back from its page
        ready = ev.ResultReady(**key, result_count=1, results_digest=digest, result_pages=1)
        await events.publish(ready)
        assert isinstance(await outcome(nc, ready), ev.Hl7Sent)
    (oru,) = sent_messages(ris, ready)
    assert oru.text(oru.segments("PID")[0], 5, 2) == "Maël"
    assert oru.text(oru.segments("OBR")[0], 2) == "ACC-R"


async def test_the_whole_pipeline_sends_findings_and_measures_to_the_ris(
    nc: Client, nats_server: NatsServer, tmp_path: Path, pacs: ReceivingPacs, ris: DemoRis
) -> None:
    """pacsor up with HL7_ENABLE: C-STORE, the simulated AI, its findings JSON, the RIS."""
    with running_simulator(SimulatorSettings(token=TOKEN, running_polls=1)) as (url, _):
        settings = gateway_settings(
            nats_server.url,
            url,
            pacs,
            TOKEN=TOKEN,
            HL7_LANGUAGE="FR",
            **to_the_ris(ris.port),
        )
        async with running_gateway(settings):
            study = make_study(2, rows=64, columns=64)
            paths = write_study(tmp_path, study)
            await asyncio.to_thread(send_files, "127.0.0.1", settings.port, "MILVUE", paths)
            sent = await outcome_of(nc, str(study[0].StudyInstanceUID))
    assert isinstance(sent, ev.Hl7Sent)
    assert (sent.ack_code, sent.missing_findings) == ("AA", ())
    (oru,) = [ParsedOru(r.text) for r in ris.received if r.control_id == sent.control_id]
    observations = oru.observations()
    assert oru.text(observations["pleural_effusion"], 3, 2) == "Épanchement pleural"
    # One measure of each kind per image, each with the image's rank as its sub-ID.
    assert {"cobb_angle/1", "cobb_angle/2", "leg_length/1", "leg_length/2"} <= set(observations)
    assert oru.text(oru.segments("OBR")[0], 2) == str(study[0].AccessionNumber)


@pytest.mark.parametrize(
    ("mode", "answer", "unsolicited", "ack_code"),
    [
        ("enhanced", "CA+AA", False, "AA"),
        ("original", "CA+AA", False, "CA"),
        ("original", "AA+AA", False, "AA"),
        ("original", "AA", True, "AA"),
    ],
    ids=["commit-then-application", "commit-then-application-original", "twice", "unsolicited"],
)
async def test_each_oru_arrives_once_whatever_the_acknowledgements(
    nc: Client, mode: str, answer: str, unsolicited: bool, ack_code: str
) -> None:
    async with (
        DemoRis(default=answer, unsolicited=unsolicited) as ris,
        # Time enough for a loaded machine: a timeout would rightly send the message again.
        running_hl7(nc, ris, ris_timeout_seconds=10.0, ack_mode=mode),
    ):
        sent = []
        readies = []
        for _ in range(3):
            ready = await record_results(nc)
            readies.append(ready)
            sent.append(await outcome(nc, ready))
    assert all(isinstance(s, ev.Hl7Sent) for s in sent), sent
    assert [s.ack_code for s in sent if isinstance(s, ev.Hl7Sent)] == [ack_code] * 3
    # Counted where it matters, on the RIS: one copy of each message, on one connection.
    expected = [control_id(r.study_uid, r.core, r.attempt) for r in readies]
    assert [r.control_id for r in ris.received] == expected
    assert ris.connections == 1
    msh = ParsedOru(ris.received[0].text).segments("MSH")[0]
    assert msh[14:16] == (["AL", "AL"] if mode == "enhanced" else ["", ""])
    for received in ris.received:
        assert_parsers_agree(received.text)  # hl7apy strict and Medplum


async def test_a_commit_reject_is_failed_at_once(nc: Client) -> None:
    async with DemoRis(default="CR") as ris, running_hl7(nc, ris, ack_mode="enhanced"):
        ready = await record_results(nc)
        failed = await outcome(nc, ready)
    assert isinstance(failed, ev.Hl7Failed)
    assert (failed.ack_code, failed.tries) == ("CR", 1)
    assert len(ris.received) == 1
