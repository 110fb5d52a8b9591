"""The ORU^R01 builder, without a network: structure, languages, escaping, report formats."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from pacsor.config import ConfigError, load_settings
from pacsor.config.hl7 import Hl7Settings
from pacsor.devtools.simulator import results as simulated
from pacsor.hl7.escaping import escape, unescape
from pacsor.hl7.findings import FindingsError, StudyFindings, decode_findings
from pacsor.hl7.oru import (
    MessageError,
    StudyHeader,
    build_oru,
    control_id,
    filler_order_number,
    parse_oru,
)
from pacsor.hl7.report import Report
from pacsor.hl7.study_header import HeaderError, read_study_header
from tests.dicom_factory import make_image, new_uid, to_bytes
from tests.hl7_reading import ParsedOru

STUDY = "1.2.826.0.1.3680043.8.498.1"
WHEN = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
HOSTILE = "O'Brien|Smith^Jr~x\\y&z\r\nsecond line\tTAB"
HOSTILE_NAME = HOSTILE.replace("^", " ")  # ^ separates the parts of a DICOM person name


def header(**changes: str) -> StudyHeader:
    base = StudyHeader(
        study_uid=STUDY,
        patient_id="PAT-1",
        issuer_of_patient_id="HOSP",
        patient_name="Doe^Jane^M^Dr^III",
        birth_date="19800229",
        sex="F",
        accession_number="ACC123",
        study_date="20260304",
        study_time="101112.123",
        study_description="Chest PA",
        modality="CR",
    )
    return msgspec.structs.replace(base, **changes)


def simulated_findings() -> StudyFindings:
    inputs = [
        simulated.InputInstance(
            sop_instance_uid=f"1.2.3.{n}",
            series_instance_uid="1.2.3",
            rows=512,
            columns=512,
            pixel_spacing_mm=0.2,
        )
        for n in (1, 2)
    ]
    detections = decode_findings(
        msgspec.json.encode(simulated.smarturgences_findings(STUDY, inputs))
    )
    measures = decode_findings(msgspec.json.encode(simulated.smartxpert_findings(STUDY, inputs)))
    return StudyFindings(detections=detections.findings, measures=measures.measures())


REPORT = Report(
    title="Radiographie thoracique",
    indication="Toux & fièvre | 3 jours",
    technique="Face\tprofil",
    findings="Pas d'épanchement.\nFracture costale ^ gauche ~ arc moyen.",
    conclusion="Fracture <costale> gauche.",
    language="FR",
)


def build(settings: Hl7Settings | None = None, **kwargs: object) -> ParsedOru:
    text = build_oru(
        kwargs.get("header", header()),  # type: ignore[arg-type]
        kwargs.get("findings", simulated_findings()),  # type: ignore[arg-type]
        kwargs.get("report"),  # type: ignore[arg-type]
        settings or Hl7Settings(receiving_application="RIS", receiving_facility="HOSP"),
        control_id(STUDY, "default", 1),
        WHEN,
    )
    return ParsedOru(text)


def test_segments_and_header_fields() -> None:
    oru = build()
    assert oru.names() == ["MSH", "PID", "PV1", "ORC", "OBR"] + ["OBX"] * 9
    msh = oru.segments("MSH")[0]
    assert oru.field(msh, 3) == "MILVUE_GATEWAY"
    assert oru.field(msh, 4) == "MILVUE"
    assert oru.field(msh, 5) == "RIS"
    assert oru.field(msh, 6) == "HOSP"
    assert oru.field(msh, 7) == "20260304050607+0000"
    assert oru.field(msh, 9) == "ORU^R01^ORU_R01"
    assert oru.field(msh, 10) == control_id(STUDY, "default", 1)
    assert oru.field(msh, 12) == "2.5.1"
    # Original acknowledgement mode by default: no accept/application ack type asked.
    assert oru.field(msh, 15) == oru.field(msh, 16) == ""
    assert oru.field(msh, 18) == "UNICODE UTF-8"
    assert oru.text(msh, 19) == "en"
    pid = oru.segments("PID")[0]
    assert oru.field(pid, 3) == "PAT-1^^^HOSP^PI"
    assert oru.field(pid, 5) == "Doe^Jane^M^III^Dr"  # XPN: suffix before prefix
    assert oru.field(pid, 7) == "19800229"
    assert oru.field(pid, 8) == "F"
    obr = oru.segments("OBR")[0]
    # Placer: the accession number in the RIS's namespace; filler: pacsor's own number.
    assert oru.field(obr, 2) == "ACC123^RIS"
    assert oru.field(obr, 3) == f"{filler_order_number(STUDY, 'default')}^MILVUE_GATEWAY"
    assert oru.field(obr, 7) == "20260304101112"
    assert oru.field(obr, 25) == "F"
    assert oru.field(oru.segments("ORC")[0], 1) == "RE"
    study_obx = oru.observations()["110180"]
    assert oru.text(study_obx, 5) == STUDY


def test_one_obx_per_finding_and_measure_in_english() -> None:
    findings = simulated_findings()
    oru = build()
    observations = oru.observations()
    for finding in findings.detections:
        obx = observations[finding.value]
        assert oru.text(obx, 3, 2) == finding.translation["en"]
        assert oru.text(obx, 5).startswith(
            {"abnormal": "Abnormal", "normal": "Normal", "doubt": "Doubtful"}[finding.label]
        )
        assert f"{finding.score:g}" in oru.text(obx, 5)
        assert oru.field(obx, 8) == {"abnormal": "A", "normal": "N"}.get(finding.label, "")
        assert oru.field(obx, 11) == "F"
    assert len(findings.measures) == 4
    for rank, measure in findings.measures:
        obx = observations[f"{measure.value}/{rank}"]
        assert oru.field(obx, 2) == "NM"
        assert float(oru.field(obx, 5)) == measure.measure
        assert oru.text(obx, 6) == measure.unit
        assert oru.text(obx, 3, 2) == measure.translation["en"]


def test_french_names_and_labels() -> None:
    oru = build(Hl7Settings(language="FR"))
    observations = oru.observations()
    assert oru.text(observations["pleural_effusion"], 3, 2) == "Épanchement pleural"
    assert oru.text(observations["fracture"], 5).startswith("Anormal (score ")
    assert oru.text(observations["cobb_angle/1"], 3, 2) == "Angle de Cobb"
    assert oru.text(observations["110180"], 3, 2) == "UID de l'examen"
    assert oru.text(oru.segments("MSH")[0], 19) == "fr"


def test_hostile_text_is_escaped_and_reads_back() -> None:
    oru = build(
        header=header(
            patient_name=f"{HOSTILE_NAME}^Given|x",
            patient_id="ID|1^2",
            accession_number="A&B~C",
            study_description=HOSTILE,
        ),
        report=msgspec.structs.replace(REPORT, conclusion=HOSTILE),
        settings=Hl7Settings(tcr_out_format="PLAIN"),
    )
    # No segment was split by a line break, no field by a delimiter.
    assert oru.names() == ["MSH", "PID", "PV1", "ORC", "OBR"] + ["OBX"] * 10
    assert "\n" not in oru.er7 and "\t" not in oru.er7
    pid = oru.segments("PID")[0]
    assert oru.text(pid, 5, 1) == HOSTILE_NAME
    assert oru.text(pid, 5, 2) == "Given|x"
    assert oru.text(pid, 3, 1) == "ID|1^2"
    obr = oru.segments("OBR")[0]
    assert oru.text(obr, 2) == "A&B~C"
    assert oru.text(obr, 4, 2) == HOSTILE
    kind, text = oru.report()
    assert kind == "FT"
    assert text.endswith(HOSTILE)


@pytest.mark.parametrize(
    "text",
    ["", "plain", HOSTILE, "\\F\\ already looks escaped", "é ü 中文", "\\X0D\\", "a\x00b\x1bc"],
)
def test_escape_reads_back(text: str) -> None:
    escaped = escape(text)
    assert not set(escaped) & set("|^~&\r\n\t")
    assert unescape(escaped) == text.replace("\x00", "").replace("\x1b", "")


@pytest.mark.parametrize(
    ("form", "kind", "expected"),
    [
        ("HTML", "ED/html", REPORT.as_html()),
        ("B64", "ED/plain", REPORT.as_text()),
        ("PLAIN", "FT", REPORT.as_text()),
    ],
)
def test_report_formats_decode_to_the_report(form: str, kind: str, expected: str) -> None:
    oru = build(Hl7Settings(include_tcr=True, tcr_out_format=form), report=REPORT)  # type: ignore[arg-type]
    assert oru.report() == (kind, expected)


def test_html_report_is_a_page_with_every_section() -> None:
    page = REPORT.as_html()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    for part in ("<h1>Radiographie thoracique</h1>", "<h2>Résultats</h2>", "&lt;costale&gt;"):
        assert part in page


def test_same_inputs_same_message_and_control_id_per_attempt() -> None:
    assert build().er7 == build().er7
    assert control_id(STUDY, "default", 1) != control_id(STUDY, "default", 2)
    assert control_id(STUDY, "default", 1) != control_id(STUDY, "other", 1)
    assert len(control_id(STUDY, "default", 1)) <= 20


def test_segments_can_be_switched_off() -> None:
    oru = build(
        Hl7Settings(include_pid=False, include_pv1=True, include_orc=False, include_study_uid=False)
    )
    assert oru.names()[:2] == ["MSH", "OBR"]
    assert "110180" not in oru.observations()
    only_pv1_off = build(Hl7Settings(include_pv1=False))
    assert only_pv1_off.names()[:4] == ["MSH", "PID", "ORC", "OBR"]


def test_missing_findings_are_said_in_a_note() -> None:
    oru = build(findings=StudyFindings(missing=("smartxpert",)))
    assert oru.names() == ["MSH", "PID", "PV1", "ORC", "OBR", "NTE", "OBX"]
    note = oru.segments("NTE")[0]
    assert oru.text(note, 3) == "smartxpert: not available when the message was sent"


def test_parse_rejects_what_is_not_an_oru() -> None:
    with pytest.raises(MessageError):
        parse_oru("this is not HL7")
    with pytest.raises(MessageError, match="ACK"):
        parse_oru("MSH|^~\\&|A|B|C|D|20260101||ACK^R01^ACK|1|P|2.5.1\rMSA|AA|1")


def test_bad_findings_json_is_a_clear_error() -> None:
    with pytest.raises(FindingsError, match="findings JSON"):
        decode_findings(b'{"status": "done", "findings": [{"value": 3}]}')
    assert decode_findings(b'{"status": "running", "StudyInstanceUID": "1.2"}').running


def test_header_is_read_from_the_stored_instance() -> None:
    study = new_uid()
    ds = make_image(
        study, PatientID="P9", PatientName="Martin^Élise", AccessionNumber="ACC9", PatientSex="F"
    )
    got = read_study_header(to_bytes(ds))
    assert (got.study_uid, got.patient_id, got.accession_number) == (study, "P9", "ACC9")
    assert got.patient_name == "Martin^Élise" and got.sex == "F"
    with pytest.raises(HeaderError):
        read_study_header(b"not dicom at all")


def test_hl7_settings_errors_name_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"^HL7_LANGUAGE"):
        load_settings({"HL7_LANGUAGE": "de"}, dotenv=None)
    with pytest.raises(ConfigError, match=r"^HL7_RIS_IP"):
        load_settings({"HL7_ENABLE": "true"}, dotenv=None)
    with pytest.raises(ConfigError, match=r"^HL7_TCR_OUT_FORMAT"):
        load_settings({"HL7_TCR_OUT_FORMAT": "PDF"}, dotenv=None)
    with pytest.raises(ConfigError, match=r"^HL7_RECEIVING_APPLICATION"):
        load_settings({"HL7_RECEIVING_APPLICATION": "RIS|X"}, dotenv=None)
    with pytest.raises(ConfigError, match=r"^DETECTION_INFERENCE_COMMAND"):
        load_settings({"DETECTION_INFERENCE_COMMAND": "smartxpert"}, dotenv=None)
    settings = load_settings(
        {"HL7_ENABLE": "yes", "HL7_RIS_IP": "10.0.0.9", "HL7_LANGUAGE": "fr", "RIS_TIMEOUT": "2"},
        dotenv=None,
    ).hl7
    assert (settings.enable, settings.ris_ip, settings.language) == (True, "10.0.0.9", "FR")
    assert settings.ris_timeout_seconds == 2.0
    assert settings.wanted_commands() == ("smarturgences", "smartxpert")


def test_hl7_events_read_as_one_line() -> None:
    from pacsor.domain import events as ev
    from pacsor.domain.event_text import detail

    sent = ev.Hl7Sent(
        study_uid=STUDY,
        core="default",
        attempt=1,
        ris="10.0.0.9:2575",
        control_id="ABC",
        ack_code="AA",
        missing_findings=("smartxpert",),
    )
    assert detail(sent) == (
        "default attempt 1 to 10.0.0.9:2575: AA (control ID ABC, without smartxpert)"
    )
    pushed = ev.ExternalReportReceived(
        study_uid=STUDY,
        provider="radnet",
        report_id="R-1",
        report=ev.WrittenReport(title="T", language="FR"),
    )
    assert detail(pushed) == "report R-1 from radnet (FR)"
    loaded = ev.Hl7ConfigLoaded(
        study_uid="", load_id="x", name="site", kind="config", loaded_by="admin API"
    )
    assert detail(loaded) == "HL7 config 'site' loaded by admin API"
    # Sent and failed share the step's key; an external report's outcome has its own.
    failed = ev.Hl7Failed(
        study_uid=STUDY, core="default", attempt=1, ris="r", control_id="c", reason="x"
    )
    assert sent.idempotency_key() == failed.idempotency_key()
    other = msgspec.structs.replace(sent, report_id="R-1")
    assert other.idempotency_key() != sent.idempotency_key()
