"""The ORU^R01 (HL7 v2.5.1) that tells the RIS what the AI found: a pure function.

    MSH  sender, receiver, control ID, 2.5.1, acknowledgement mode (HL7_ACK_MODE),
         UNICODE UTF-8, language
    PID  patient ID with its assigning authority, name, birth date, sex  (HL7_INCLUDE_PID)
    PV1  patient class                                            (HL7_INCLUDE_PV1, with PID)
    ORC  order control RE, placer and filler order numbers        (HL7_INCLUDE_ORC)
    OBR  placer and filler order numbers, the procedure code, study date, result status F
    NTE  what is missing (findings still running), when something is
    OBX  StudyInstanceUID                                          (HL7_INCLUDE_STUDY_UID)
    OBX  one per finding: name in HL7_LANGUAGE, label and score; abnormal flag
    OBX  one per measure: value and unit, the instance's rank as sub-ID
    OBX  the report, in HL7_TCR_OUT_FORMAT                        (HL7_INCLUDE_TCR)

The same inputs give the same message, byte for byte: the control ID comes from the study,
core and attempt, and the time is the one of the ResultReady event. A re-sent message is
therefore the same message, which the RIS can recognise by its control ID.

hl7apy builds the structure. Text is escaped by pacsor.hl7.escaping and handed to hl7apy as
already-encoded values, because hl7apy would escape the backslash of `\\X0D\\` a second time.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime

import msgspec
from hl7apy.base_datatypes import BaseDataType, TextualDataType
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Element, Message, Segment
from hl7apy.exceptions import HL7apyException
from hl7apy.parser import parse_message

from pacsor.config.hl7 import Hl7Settings
from pacsor.domain.acknowledgement import header_fields
from pacsor.errors import InvalidInput
from pacsor.hl7.escaping import escape
from pacsor.hl7.findings import Finding, Measure, StudyFindings
from pacsor.hl7.report import Report
from pacsor.hl7.template import MessageTemplate

VERSION = "2.5.1"
CODING_SYSTEM = "MILVUE"
CHARACTER_SET = "UNICODE UTF-8"


class MessageError(InvalidInput):
    """The message could not be built, or does not parse back."""


class ProcedureCode(msgspec.Struct, frozen=True):
    """One item of the study's Procedure Code Sequence (0008,1032)."""

    value: str  # Code Value (or Long Code Value, URN Code Value)
    scheme: str  # Coding Scheme Designator, e.g. LN, SCT, RADLEX, 99LOCAL
    meaning: str = ""


class StudyHeader(msgspec.Struct, frozen=True, kw_only=True):
    """The patient and order facts of a study, as read from one of its DICOM instances."""

    study_uid: str = msgspec.field(name="study_instance_uid")
    patient_id: str = ""
    issuer_of_patient_id: str = ""
    # Issuer of Patient ID Qualifiers Sequence: Universal Entity ID and its type (ISO, DNS...)
    issuer_universal_id: str = ""
    issuer_universal_id_type: str = ""
    # Placer Order Number / Imaging Service Request (0040,2016)
    placer_order_number: str = ""
    # Issuer of Accession Number Sequence: Local Namespace Entity ID (0040,0031)
    accession_issuer: str = ""
    procedure_code: ProcedureCode | None = None
    patient_name: str = ""  # DICOM PN: family^given^middle^prefix^suffix
    birth_date: str = ""  # YYYYMMDD
    sex: str = ""  # M, F, O
    accession_number: str = ""
    study_date: str = ""  # YYYYMMDD
    study_time: str = ""  # HHMMSS(.ffffff)
    study_description: str = ""
    modality: str = ""


_WORDS: dict[str, dict[str, str]] = {
    "EN": {
        "study_uid": "Study Instance UID",
        "report": "Report",
        "service": "AI results",
        "abnormal": "Abnormal",
        "normal": "Normal",
        "doubt": "Doubtful",
        "unknown": "Unknown",
        "out_scope": "Out of scope",
        "score": "score",
        "missing": "{command}: not available when the message was sent",
        "language": "en^English^ISO639",
    },
    "FR": {
        "study_uid": "UID de l'examen",
        "report": "Compte rendu",
        "service": "Résultats IA",
        "abnormal": "Anormal",
        "normal": "Normal",
        "doubt": "Douteux",
        "unknown": "Inconnu",
        "out_scope": "Hors champ",
        "score": "score",
        "missing": "{command} : non disponible à l'envoi du message",
        "language": "fr^Français^ISO639",
    },
}
_ABNORMAL_FLAG = {"abnormal": "A", "normal": "N"}  # HL7 table 0078; others have no flag


def control_id(study_uid: str, core: str, attempt: int, report_id: str = "") -> str:
    """MSH-10: the same for every send of one study's results (at most 20 characters)."""
    key = (
        f"{study_uid}\x1f{core}\x1f{attempt}\x1f{report_id}"
        if report_id
        else f"{study_uid}\x1f{core}\x1f{attempt}"
    )
    digest = hashlib.sha256(key.encode()).hexdigest()
    return digest[:20].upper()


def filler_order_number(study_uid: str, core: str) -> str:
    """pacsor's own number for the AI's work on a study (ORC-3, OBR-3): the same for every
    message about it from one core, different for each core."""
    digest = hashlib.sha256(f"{study_uid}\x1f{core}".encode()).hexdigest()
    return digest[:16].upper()


def hl7_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")


class _Escaped(BaseDataType):  # type: ignore[misc]
    """A value already escaped by pacsor.hl7.escaping: written to ER7 as it is."""


def _freeze(element: Element) -> None:
    """Make every text leaf of `element` an _Escaped value, so hl7apy writes it unchanged."""
    children = list(getattr(element, "children", ()))
    for child in children:
        _freeze(child)
    value = getattr(element, "value", None)
    if not children and isinstance(value, TextualDataType):
        element.value = _Escaped(value.value)


def _field(segment: Segment, number: int, *components: str) -> None:
    """Set field `number` of `segment` from components that are already escaped."""
    er7 = "^".join(components).rstrip("^")
    if er7:
        setattr(segment, f"{segment.name.lower()}_{number}", er7)


def _xpn(pn: str) -> tuple[str, ...]:
    """DICOM PN (family^given^middle^prefix^suffix) to XPN (family^given^middle^suffix^prefix)."""
    alphabetic = pn.split("=")[0]
    parts = [*alphabetic.split("^"), "", "", "", "", ""][:5]
    family, given, middle, prefix, suffix = (escape(p.strip()) for p in parts)
    return family, given, middle, suffix, prefix


def _sex(dicom_sex: str) -> str:
    return dicom_sex.strip().upper() if dicom_sex.strip().upper() in {"M", "F", "O"} else "U"


def _study_time(header: StudyHeader) -> str:
    date = "".join(c for c in header.study_date if c.isdigit())[:8]
    if len(date) != 8:
        return ""
    time = "".join(c for c in header.study_time.split(".")[0] if c.isdigit())[:6]
    return date + time


def _finding_obx(finding: Finding, words: dict[str, str], language: str) -> tuple[str, ...]:
    label = words.get(finding.label, finding.label)
    return (
        "ST",
        f"{escape(finding.value)}^{escape(finding.name(language))}^{CODING_SYSTEM}",
        "",
        escape(f"{label} ({words['score']} {finding.score:g})"),
        "",
        "",
        _ABNORMAL_FLAG.get(finding.label, ""),
    )


def _measure_obx(rank: int, measure: Measure, language: str) -> tuple[str, ...]:
    unit = escape(measure.unit)
    return (
        "NM",
        f"{escape(measure.value)}^{escape(measure.name(language))}^{CODING_SYSTEM}",
        str(rank),
        f"{measure.measure:g}",
        f"{unit}^{unit}^UCUM" if unit else "",
        "",
        "",
    )


def _report_obx(report: Report, form: str, words: dict[str, str]) -> tuple[str, ...]:
    identifier = f"REPORT^{escape(words['report'])}^{CODING_SYSTEM}"
    if form == "PLAIN":
        # FT: each line escaped, lines joined by the formatting command for a line break.
        text = "\\.br\\".join(escape(line) for line in report.as_text().split("\n"))
        return ("FT", identifier, "", text, "", "", "")
    if form == "HTML":
        data = base64.b64encode(report.as_html().encode()).decode()
        return ("ED", identifier, "", f"^text^html^Base64^{data}", "", "", "")
    data = base64.b64encode(report.as_text().encode()).decode()
    return ("ED", identifier, "", f"^text^plain^Base64^{data}", "", "", "")


def _hd(namespace: str, universal_id: str = "", universal_type: str = "") -> str:
    """An HD inside a component (namespace&universal ID&type), already escaped."""
    return "&".join((escape(namespace), escape(universal_id), escape(universal_type))).rstrip("&")


def _patient_id(header: StudyHeader, settings: Hl7Settings) -> tuple[str, ...]:
    """PID-3 (CX): ID^^^assigning authority^PI; the study's issuer, else the site's."""
    if header.issuer_of_patient_id or header.issuer_universal_id:
        authority = _hd(
            header.issuer_of_patient_id,
            header.issuer_universal_id,
            header.issuer_universal_id_type if header.issuer_universal_id else "",
        )
    else:
        authority = _hd(settings.assigning_authority)
    return escape(header.patient_id), "", "", authority, "PI"


def _placer(header: StudyHeader, settings: Hl7Settings) -> str:
    """ORC-2 / OBR-2 (EI): the order's number in the system that placed it."""
    number = (
        header.placer_order_number
        if settings.placer_source == "placer_order_number"
        else header.accession_number
    )
    if not number:
        return ""
    namespace = (
        (header.accession_issuer if settings.placer_source == "accession" else "")
        or settings.placer_namespace
        or settings.receiving_application
    )
    return "^".join((escape(number), escape(namespace))).rstrip("^")


def _filler(header: StudyHeader, settings: Hl7Settings, core: str) -> str:
    """ORC-3 / OBR-3 (EI): pacsor's own number, with pacsor's namespace."""
    namespace = settings.filler_namespace or settings.sending_application
    number = filler_order_number(header.study_uid, core)
    return "^".join((number, escape(namespace))).rstrip("^")


def _service(header: StudyHeader, settings: Hl7Settings, words: dict[str, str]) -> tuple[str, ...]:
    """OBR-4 (CE): the study's procedure code with its coding scheme, else the site's code."""
    code = header.procedure_code
    if code is not None and code.value and code.scheme:
        text = code.meaning or header.study_description or words["service"]
        return escape(code.value), escape(text), escape(code.scheme)
    value = settings.procedure_code or header.modality or "AI"
    text = header.study_description or words["service"]
    return escape(value), escape(text), escape(settings.procedure_coding_system)


def _placeholders(header: StudyHeader, message_control_id: str, now: str) -> dict[str, str]:
    """The values a template may use, each escaped."""
    family, given, *_ = _xpn(header.patient_name)
    values = {
        "study_instance_uid": escape(header.study_uid),
        "patient_id": escape(header.patient_id),
        "issuer_of_patient_id": escape(header.issuer_of_patient_id),
        "patient_family_name": family,
        "patient_given_name": given,
        "birth_date": escape(header.birth_date),
        "sex": _sex(header.sex),
        "accession_number": escape(header.accession_number),
        "study_date": escape(header.study_date),
        "study_time": escape(header.study_time),
        "study_description": escape(header.study_description),
        "modality": escape(header.modality),
        "control_id": message_control_id,
        "message_time": now,
    }
    return values


def build_oru(
    header: StudyHeader,
    findings: StudyFindings,
    report: Report | None,
    settings: Hl7Settings,
    message_control_id: str,
    created_at: datetime,
    template: MessageTemplate | None = None,
    *,
    core: str = "default",
) -> str:
    """The ORU^R01 as ER7 text (segments separated by CR), checked to parse back.

    A `template` leaves optional segments out and sets fields (pacsor.hl7.template); `core`
    is the AI core whose results these are (it makes the filler order number).
    """
    words = _WORDS[settings.language]
    now = hl7_time(created_at)
    placer = _placer(header, settings)
    filler = _filler(header, settings, core)
    accept_ack, application_ack = header_fields(settings.ack_mode)
    layout = template or MessageTemplate()
    values = _placeholders(header, message_control_id, now)

    def laid_out(segment: Segment) -> Segment:
        for rule in layout.rules_for(segment.name):
            setattr(segment, f"{segment.name.lower()}_{rule.number}", rule.render(values))
        return segment

    try:
        message = Message("ORU_R01", version=VERSION, validation_level=VALIDATION_LEVEL.TOLERANT)
        msh = message.msh
        _field(msh, 3, escape(settings.sending_application))
        _field(msh, 4, escape(settings.sending_facility))
        _field(msh, 5, escape(settings.receiving_application))
        _field(msh, 6, escape(settings.receiving_facility))
        _field(msh, 7, now)
        _field(msh, 9, "ORU", "R01", "ORU_R01")
        _field(msh, 10, message_control_id)
        _field(msh, 11, "P")
        _field(msh, 12, VERSION)
        _field(msh, 15, accept_ack)
        _field(msh, 16, application_ack)
        _field(msh, 18, CHARACTER_SET)
        _field(msh, 19, words["language"])
        laid_out(msh)

        result = message.add_group("ORU_R01_PATIENT_RESULT")
        if settings.include_pid and "PID" not in layout.omit:
            patient = result.add_group("ORU_R01_PATIENT")
            pid = patient.add_segment("PID")
            _field(pid, 1, "1")
            _field(pid, 3, *_patient_id(header, settings))
            _field(pid, 5, *_xpn(header.patient_name))
            _field(pid, 7, "".join(c for c in header.birth_date if c.isdigit())[:8])
            _field(pid, 8, _sex(header.sex))
            laid_out(pid)
            # PV1 belongs to the patient group, so it cannot go without PID.
            if settings.include_pv1 and "PV1" not in layout.omit:
                pv1 = patient.add_group("ORU_R01_VISIT").add_segment("PV1")
                _field(pv1, 1, "1")
                _field(pv1, 2, "O")
                laid_out(pv1)

        order = result.add_group("ORU_R01_ORDER_OBSERVATION")
        if settings.include_orc and "ORC" not in layout.omit:
            orc = order.add_segment("ORC")
            _field(orc, 1, "RE")
            _field(orc, 2, placer)
            _field(orc, 3, filler)
            _field(orc, 5, "CM")
            laid_out(orc)
        obr = order.add_segment("OBR")
        _field(obr, 1, "1")
        _field(obr, 2, placer)
        _field(obr, 3, filler)
        _field(obr, 4, *_service(header, settings, words))
        _field(obr, 7, _study_time(header))
        _field(obr, 22, now)
        _field(obr, 24, "RAD")
        _field(obr, 25, "F")
        laid_out(obr)
        notes = () if "NTE" in layout.omit else findings.missing
        for rank, command in enumerate(notes, start=1):
            nte = order.add_segment("NTE")
            _field(nte, 1, str(rank))
            _field(nte, 2, "L")
            _field(nte, 3, escape(words["missing"].format(command=command)))
            laid_out(nte)

        observations: list[tuple[str, ...]] = []
        if settings.include_study_uid:
            observations.append(
                (
                    "ST",
                    f"110180^{escape(words['study_uid'])}^DCM",
                    "",
                    escape(header.study_uid),
                    "",
                    "",
                    "",
                )
            )
        observations += [_finding_obx(f, words, settings.language) for f in findings.detections]
        observations += [_measure_obx(r, m, settings.language) for r, m in findings.measures]
        if report is not None:
            observations.append(_report_obx(report, settings.tcr_out_format, words))
        for set_id, (kind, identifier, sub_id, value, units, _, flag) in enumerate(
            observations, start=1
        ):
            obx = order.add_group("ORU_R01_OBSERVATION").add_segment("OBX")
            _field(obx, 1, str(set_id))
            _field(obx, 2, kind)
            _field(obx, 3, identifier)
            _field(obx, 4, sub_id)
            _field(obx, 5, value)
            _field(obx, 6, units)
            _field(obx, 8, flag)
            _field(obx, 11, "F")
            _field(obx, 14, now)
            laid_out(obx)
        _freeze(message)
        text: str = message.to_er7()
    except HL7apyException as err:
        raise MessageError(f"hl7apy refused the message: {err}") from err
    except (KeyError, ValueError) as err:  # a template's field hl7apy does not know
        raise MessageError(f"the template does not fit the message: {err}") from err
    parse_oru(text)
    return text


def parse_oru(text: str) -> Message:
    """Parse an ORU^R01 with hl7apy, finding its groups; MessageError when it does not parse."""
    try:
        message = parse_message(text, validation_level=VALIDATION_LEVEL.TOLERANT, find_groups=True)
    except HL7apyException as err:
        raise MessageError(f"not a parseable HL7 message: {err}") from err
    if message.name != "ORU_R01":
        raise MessageError(f"expected an ORU_R01, parsed a {message.name}")
    return message


SAMPLE_HEADER = StudyHeader(
    study_uid="1.2.826.0.1.3680043.8.498.10000000000000000000000000000000000001",
    patient_id="SAMPLE-1",
    issuer_of_patient_id="SAMPLE",
    patient_name="Sample^Patient",
    birth_date="19700101",
    sex="O",
    accession_number="SAMPLE-ACC",
    study_date="20260101",
    study_time="120000",
    study_description="Sample study",
    modality="CR",
)


def check_template(template: MessageTemplate, settings: Hl7Settings) -> str:
    """A sample message built with `template`; MessageError when hl7apy cannot parse it.

    The sample is parsed with hl7apy's strict validation too (datatypes, lengths, tables),
    which real messages are not: their report data is longer than v2.5.1's length limits.
    """
    sample = StudyFindings(missing=("sample",))
    when = datetime(2026, 1, 1, tzinfo=UTC)
    text = build_oru(SAMPLE_HEADER, sample, None, settings, "SAMPLE0000", when, template)
    try:
        parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    except (HL7apyException, ValueError) as err:
        raise MessageError(f"hl7apy (strict) refuses the sample message: {err}") from err
    return text
