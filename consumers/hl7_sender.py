"""ResultReady → build the ORU^R01 → send it to the RIS over MLLP → Hl7Sent (or Hl7Failed).

The message is a pure function of the study (pacsor.hl7.oru); this handler gathers its inputs:
- the findings JSON of the configured detection and measure commands, from PACSOR_RESULTS
  (listed in ResultReady). Findings still running are waited for, by redelivery, until
  HL7_FINDINGS_WAIT_SECONDS after ResultReady; the message then goes without them and says so
  in an NTE segment and in Hl7Sent.missing_findings;
- the patient and order facts, from a stored instance of the attempt (or, once the instances
  have expired, from a result object, which carries the same patient and study);
- the written report from the TechCare Report service, when HL7_INCLUDE_TCR is set.

An AE/AR, a garbled answer, silence or no connection is retried with the retry policy, then
recorded as Hl7Failed. At least once: a crash between the ACK and Hl7Sent re-sends the same
message, with the same control ID.
"""

from __future__ import annotations

from dataclasses import dataclass

from pacsor.ai.techcare_report import ReportError, TechCareReports
from pacsor.config.hl7 import Hl7Settings
from pacsor.domain import events as ev
from pacsor.domain.retry import RetryPolicy
from pacsor.hl7.findings import FindingsDocument, FindingsError, StudyFindings, decode_findings
from pacsor.hl7.header import HeaderError, read_study_header
from pacsor.hl7.mllp import MllpClient, MllpError
from pacsor.hl7.oru import StudyHeader, build_oru, control_id
from pacsor.hl7.report import Report
from pacsor.jetstream.blobs import BlobNotFound, BlobStore
from pacsor.jetstream.eventlog import EventLog
from pacsor.jetstream.handler_runner import (
    ConsumerSpec,
    Delivery,
    Emit,
    Outcome,
    Retry,
    retry_or_fail,
)
from pacsor.jetstream.subjects import EVENTS_STREAM, HL7_DURABLE, events_filter


@dataclass(frozen=True)
class Hl7Context:
    settings: Hl7Settings
    ris: MllpClient
    events: EventLog
    instances: BlobStore
    results: BlobStore
    policy: RetryPolicy
    # The TechCare Report service of each core, by core name (HL7_INCLUDE_TCR).
    reports: dict[str, TechCareReports]


def consumer(ack_wait: float = 60.0) -> ConsumerSpec[ev.ResultReady]:
    return ConsumerSpec(
        durable=HL7_DURABLE,
        stream=EVENTS_STREAM,
        filter_subject=events_filter(ev.ResultReady),
        decode=ev.decoder(ev.ResultReady),
        ack_wait=ack_wait,
        # One MLLP connection, one message at a time, as the RIS reads them.
        concurrency=1,
        description="ResultReady -> ORU^R01 to the RIS over MLLP",
        # Enabling HL7 on a running gateway must not send every past study to the RIS.
        start="new",
    )


class _Waiting(Exception):
    """Something the message needs is still being produced."""


async def send_to_ris(event: ev.ResultReady, delivery: Delivery, ctx: Hl7Context) -> Outcome:
    settings = ctx.settings
    study, core, attempt = event.study_instance_uid, event.core, event.attempt
    cid = control_id(study, core, attempt)
    waited = (ev.utc_now() - event.occurred_at).total_seconds()
    may_wait = waited < settings.findings_wait_seconds

    found, running = await _findings(event, ctx)
    unavailable: list[str] = []
    report: Report | None = None
    if settings.include_tcr:
        try:
            report = await _report(event, ctx)
        except ReportError as err:
            # Not written yet, or the service is unreachable for now: worth waiting for.
            (running if err.retryable else unavailable).append("report")
    if running and may_wait:
        return Retry(_wait_delay(ctx, waited), f"still running: {', '.join(running)}")
    left_out = (*found.missing, *running, *unavailable)
    findings = StudyFindings(detections=found.detections, measures=found.measures, missing=left_out)

    header = await _header(event, ctx)
    text = build_oru(header, findings, report, settings, cid, event.occurred_at)

    def failed(reason: str, code: str = "") -> Outcome:
        return retry_or_fail(
            delivery,
            ctx.policy,
            reason,
            retryable=True,
            failed=ev.Hl7Failed(
                study_instance_uid=study,
                core=core,
                attempt=attempt,
                ris=str(ctx.ris),
                control_id=cid,
                reason=reason,
                ack_code=code,
            ),
        )

    try:
        ack = await ctx.ris.send(text, cid)
    except MllpError as err:
        return failed(str(err))
    if not ack.accepted:
        return failed(f"the RIS answered {ack.code}: {ack.text or 'no reason given'}", ack.code)
    return Emit(
        (
            ev.Hl7Sent(
                study_instance_uid=study,
                core=core,
                attempt=attempt,
                ris=str(ctx.ris),
                control_id=cid,
                ack_code=ack.code,
                ack_text=ack.text,
                tries=delivery.num_delivered,
                missing_findings=left_out,
                with_report=report is not None,
            ),
        )
    )


def _wait_delay(ctx: Hl7Context, waited: float) -> float:
    left = ctx.settings.findings_wait_seconds - waited
    return max(0.1, min(ctx.policy.initial_seconds, left))


async def _findings(event: ev.ResultReady, ctx: Hl7Context) -> tuple[StudyFindings, list[str]]:
    """The wanted findings, with the commands missing and those still running."""
    settings = ctx.settings
    stored = {f.inference_command: f for f in event.findings}
    documents: dict[str, FindingsDocument] = {}
    missing: list[str] = []
    running: list[str] = []
    for command in settings.wanted_commands():
        if command not in stored:
            missing.append(command)
            continue
        try:
            document = decode_findings(await ctx.results.get(stored[command].object_name))
        except (BlobNotFound, FindingsError):
            missing.append(command)
            continue
        if document.running:
            running.append(command)
        else:
            documents[command] = document
    detections = documents.get(settings.detection_command) if settings.include_detections else None
    measures = documents.get(settings.measure_command) if settings.include_measures else None
    return (
        StudyFindings(
            detections=detections.findings if detections else (),
            measures=measures.measures() if measures else (),
            missing=tuple(missing),
        ),
        running,
    )


async def _report(event: ev.ResultReady, ctx: Hl7Context) -> Report:
    source = ctx.reports.get(event.core)
    if source is None:
        raise ReportError(f"no TechCare Report service for core {event.core!r}", False)
    return await source.fetch(event.study_instance_uid, ctx.settings.language)


async def _header(event: ev.ResultReady, ctx: Hl7Context) -> StudyHeader:
    """The study's patient and order facts: a stored instance first, else a result object."""
    candidates: list[tuple[BlobStore, str]] = []
    for recorded in await ctx.events.history(event.study_instance_uid):
        complete = recorded.event
        if isinstance(complete, ev.StudyComplete) and complete.attempt == event.attempt:
            candidates += [(ctx.instances, i.object_name) for i in complete.instances[:1]]
    candidates += [(ctx.results, r.object_name) for r in event.results[:1]]
    for store, name in candidates:
        try:
            return read_study_header(await store.get(name))
        except (BlobNotFound, HeaderError):
            continue
    # Neither is readable any more: the message still tells the RIS which study it is about.
    return StudyHeader(study_instance_uid=event.study_instance_uid)
