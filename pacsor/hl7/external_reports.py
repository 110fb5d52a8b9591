"""Receiving reports pushed by external report providers (WEBPS_PROVIDERS).

The same check and the same event for both ways in: a NATS request on
`pacsor.webps.<provider>.report` and the admin's `POST /webps/{provider}/reports`. A bad payload
is refused with the reason (and an HTTP status) and records nothing.
"""

from __future__ import annotations

import msgspec

from pacsor.config.hl7 import Hl7Settings
from pacsor.domain.external_report import ReportRefused, accept_report
from pacsor.jetstream.eventlog import EventLog
from pacsor.jetstream.subjects import WEBPS_SUBJECT_PREFIX


class ReportAccepted(msgspec.Struct, frozen=True):
    status: str
    study_uid: str = msgspec.field(name="study_instance_uid")
    provider: str
    report_id: str
    sequence: int


class RefusalAnswer(msgspec.Struct, frozen=True):
    status: str
    code: int
    reason: str


async def receive_report(
    events: EventLog, settings: Hl7Settings, provider: str, body: bytes
) -> ReportAccepted:
    """Record the report as ExternalReportReceived; ReportRefused when it is not accepted."""
    if not settings.webps_enable:
        raise ReportRefused(404, "external reports are not enabled (WEBPS_ENABLE)")
    event = accept_report(provider, settings.webps_providers, body)
    sequence = await events.publish(event)
    return ReportAccepted("accepted", event.study_uid, provider, event.report_id, sequence)


def provider_of(subject: str) -> str:
    """The provider named in a `pacsor.webps.<provider>.report` subject."""
    prefix = WEBPS_SUBJECT_PREFIX + "."
    return subject[len(prefix) :].split(".", 1)[0] if subject.startswith(prefix) else ""


async def answer_request(
    events: EventLog, settings: Hl7Settings, subject: str, body: bytes
) -> bytes:
    """The reply to a NATS request: the accepted report, or the refusal with its reason."""
    try:
        accepted = await receive_report(events, settings, provider_of(subject), body)
    except ReportRefused as refused:
        return msgspec.json.encode(RefusalAnswer("refused", refused.status, refused.reason))
    return msgspec.json.encode(accepted)
