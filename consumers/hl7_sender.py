"""ResultReady → build the ORU^R01 → send it to the RIS over MLLP → Hl7Sent (or Hl7Failed).

The message is a pure function of the study (pacsor.hl7.oru); this handler gathers its inputs:
- the findings JSON of the configured detection and measure commands, from PACSOR_RESULTS
  (listed in ResultReady). Findings still running are waited for, by redelivery, until
  HL7_FINDINGS_WAIT_SECONDS after ResultReady; the message then goes without them and says so
  in an NTE segment and in Hl7Sent.missing_findings;
- the patient and order facts, from a stored instance of the study (or, once the instances
  have expired, from a result object, which carries the same patient and study);
- the written report from the TechCare Report service, when HL7_INCLUDE_TCR is set, and
  always for a core of kind tcr (CORE_KIND=tcr), whose studies went to that service instead
  of the inference API and which has no findings.

Acknowledgements are read as pacsor.domain.acknowledgement says (HL7_ACK_MODE): a stale or
unsolicited one is set aside, a commit (CA) in enhanced mode waits for the application answer.
An AE/AR/CE, a garbled answer, silence or no connection is retried with the retry policy, then
recorded as Hl7Failed; a CR (the message type or version refused) is recorded at once. At
least once: a crash between the ACK and Hl7Sent re-sends the same message, with the same
control ID.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

import msgspec

from pacsor.ai.techcare_report import ReportError, TechCareReports
from pacsor.config import ConfigError, Settings
from pacsor.config.hl7 import Hl7Settings
from pacsor.domain import events as ev
from pacsor.domain.acknowledgement import refusal_is_transient
from pacsor.domain.findings_wait import WaitFor, findings_wait
from pacsor.domain.retry import RetryPolicy
from pacsor.hl7.config_loading import LoadRefused, current_config, in_force, load_named
from pacsor.hl7.custom_config import CustomConfigError, LoadedConfig, effective
from pacsor.hl7.external_reports import answer_request
from pacsor.hl7.findings import FindingsDocument, FindingsError, StudyFindings, decode_findings
from pacsor.hl7.http_routes import Hl7HttpServer
from pacsor.hl7.mllp import MllpClient, MllpError
from pacsor.hl7.oru import StudyHeader, build_oru, control_id
from pacsor.hl7.report import Report
from pacsor.hl7.study_header import HeaderError, read_study_header
from pacsor.hl7.template import MessageTemplate
from pacsor.jetstream.blobs import BlobNotFound, BlobStore
from pacsor.jetstream.eventlog import EventLog
from pacsor.jetstream.handler_runner import (
    Delivery,
    Emit,
    Outcome,
    Retry,
    retry_or_fail,
)
from pacsor.jetstream.nats_auth import Publishes
from pacsor.jetstream.requests import answer_requests
from pacsor.jetstream.subjects import (
    HL7_DURABLE,
    HL7_EXTERNAL_DURABLE,
    HL7_SWITCH_DURABLE,
    HL7_WEBPS_QUEUE,
    WEBPS_SUBJECTS,
    events_filter,
    site_events,
)
from pacsor.process.runtime import (
    Component,
    FanOut,
    Runtime,
    Started,
    Step,
    Target,
    emitted,
    run_steps,
)

log = logging.getLogger("pacsor.hl7")


@dataclass
class Hl7Context:
    # The HL7 settings of the environment; a loaded configuration (Hl7ConfigLoaded) wins.
    base: Hl7Settings
    events: EventLog
    instances: BlobStore
    results: BlobStore
    policy: RetryPolicy
    # The report service of each core of kind tcr, by core name: their studies went to it,
    # their report always goes.
    tcr_reports: dict[str, TechCareReports] = field(default_factory=dict)
    # Each core's API key, for TCR_API_URL as in force (a loaded configuration may set it).
    tokens: dict[str, str] = field(default_factory=dict)
    _reports: dict[tuple[str, str], TechCareReports] = field(default_factory=dict)
    # The cores whose results go to the RIS (HL7_CORES; None: every core).
    ris_cores: frozenset[str] | None = None
    _ris: MllpClient | None = None
    _applied: tuple[int, Hl7Settings, MessageTemplate | None] | None = None
    # Two consumers share the context: one of them at a time swaps the RIS connection.
    _swap: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def in_force(self) -> tuple[Hl7Settings, MessageTemplate | None, MllpClient]:
        """The settings and template of the latest loaded configuration, over the
        environment, and the RIS connection they name."""
        current = await current_config(self.events)
        if self._applied is None or self._applied[0] != current.sequence:
            try:
                settings, template = effective(self.base, current.loaded)
            except CustomConfigError as err:
                # Checked when loaded; only a changed environment can make it fail here.
                log.error("loaded HL7 configuration not applicable", extra={"error": str(err)})
                settings, template = self.base, None
            self._applied = (current.sequence, settings, template)
        _, settings, template = self._applied
        target = (
            settings.ris_ip,
            settings.ris_port,
            settings.ris_timeout_seconds,
            settings.ack_mode,
        )
        async with self._swap:
            ris = self._ris
            if ris is None or (ris.host, ris.port, ris.timeout, ris.mode) != target:
                if ris is not None:
                    await ris.aclose()
                self._ris = ris = MllpClient(*target)
        return settings, template, ris

    @property
    def tcr_cores(self) -> frozenset[str]:
        return frozenset(self.tcr_reports)

    def report_source(self, core: str, settings: Hl7Settings) -> TechCareReports | None:
        """The core's report service: its own for a tcr core, else TCR_API_URL when
        HL7_INCLUDE_TCR is in force, with the core's API key."""
        if core in self.tcr_reports:
            return self.tcr_reports[core]
        if not (settings.include_tcr and settings.tcr_api_url):
            return None
        key = (core, settings.tcr_api_url)
        if key not in self._reports:
            self._reports[key] = TechCareReports(settings.tcr_api_url, self.tokens.get(core, ""))
        return self._reports[key]

    async def aclose(self) -> None:
        if self._ris is not None:
            await self._ris.aclose()
        for source in (*self.tcr_reports.values(), *self._reports.values()):
            await source.aclose()


RisEvent = TypeVar("RisEvent", ev.ResultReady, ev.ExternalReportReceived)
RIS_EMITS: tuple[type[ev.Event], ...] = (ev.Hl7Sent, ev.Hl7Failed)


def _ris_step(durable: str, kind: type[RisEvent], settings: Hl7Settings) -> Step[RisEvent]:
    ris = f"{settings.ris_ip}:{settings.ris_port}"

    def gave_up(event: RisEvent, target: Target, reason: str, tries: int) -> ev.Hl7Failed:
        about = _about(event)
        return ev.Hl7Failed(
            **about.key,
            ris=ris,
            control_id=about.control_id,
            reason=reason,
            tries=tries,
            report_id=about.report_id,
        )

    return Step(
        consumes=kind,
        fan_out=FanOut.ONCE,
        durable=durable,
        filter_subject=events_filter(kind),
        description=f"{kind.__name__} -> ORU^R01 to the RIS over MLLP",
        emits=RIS_EMITS,
        failed=gave_up,
        # Long enough for one MLLP exchange; in-progress acks cover longer waits.
        ack_wait=max(30.0, 3 * settings.ris_timeout_seconds),
        # One MLLP connection, one message at a time, as the RIS reads them.
        concurrency=1,
        # Enabling HL7 on a running gateway must not send every past study to the RIS.
        start="new",
    )


def steps(settings: Hl7Settings) -> tuple[Step[ev.ResultReady], Step[ev.ExternalReportReceived]]:
    """The AI's results and the external reports, each to the RIS of `settings`."""
    return (
        _ris_step(HL7_DURABLE, ev.ResultReady, settings),
        _ris_step(HL7_EXTERNAL_DURABLE, ev.ExternalReportReceived, settings),
    )


def _about(event: ev.ResultReady | ev.ExternalReportReceived) -> _Outcome:
    """Which message an event's Hl7Sent / Hl7Failed is about."""
    if isinstance(event, ev.ResultReady):
        key = event.key
        return _Outcome(key, control_id(event.study_uid, event.core, event.attempt))
    core = external_core(event.provider)
    key = ev.AttemptKey(study_uid=event.study_uid, core=core, attempt=0)
    cid = control_id(event.study_uid, core, 0, event.report_id)
    return _Outcome(key, cid, with_report=True, report_id=event.report_id)


async def send_to_ris(event: ev.ResultReady, delivery: Delivery, ctx: Hl7Context) -> Outcome:
    if ctx.ris_cores is not None and event.core not in ctx.ris_cores:
        return Emit()  # another core's results: the RIS gets one message per study
    settings, template, ris = await ctx.in_force()
    if not settings.enable:
        # Switched off by a loaded configuration (Hl7Switched says when): nothing to send.
        return Emit(())
    study, core, attempt = event.study_uid, event.core, event.attempt
    cid = control_id(study, core, attempt)
    waited = (ev.utc_now() - event.occurred_at).total_seconds()

    # A tcr core's study went to the report service only: its report is the message.
    found, running = (
        (StudyFindings(), []) if core in ctx.tcr_cores else await _findings(event, settings, ctx)
    )
    unavailable: list[str] = []
    report: Report | None = None
    if settings.include_tcr or core in ctx.tcr_cores:
        try:
            report = await _report(event, settings, ctx)
        except ReportError as err:
            # Not written yet, or the service is unreachable for now: worth waiting for.
            (running if err.retryable else unavailable).append("report")
    decision = findings_wait(
        running,
        waited,
        settings.findings_wait_seconds,
        ctx.policy.initial_seconds,
        delivery.num_delivered,
    )
    if isinstance(decision, WaitFor):
        return Retry(decision.delay, decision.reason)
    left_out = (*found.missing, *running, *unavailable)
    findings = StudyFindings(detections=found.detections, measures=found.measures, missing=left_out)

    header = await _header(event.study_uid, event, ctx)
    text = build_oru(
        header, findings, report, settings, cid, event.occurred_at, template, core=core
    )
    if decision.waits_spent:  # looks while waiting are not tries of the RIS
        spent = delivery.num_delivered - decision.waits_spent
        delivery = msgspec.structs.replace(delivery, num_delivered=spent)
    return await _send(
        ctx,
        ris,
        delivery,
        text,
        _Outcome(event.key, cid, missing_findings=left_out, with_report=bool(report)),
    )


def external_core(provider: str) -> str:
    """The `core` of the RIS outcome of an external report: never an AI core's name."""
    return f"webps-{provider}"


async def send_external_report(
    event: ev.ExternalReportReceived, delivery: Delivery, ctx: Hl7Context
) -> Outcome:
    """An external provider's report goes to the RIS like the AI's: same message, same MLLP."""
    about = _about(event)
    report = msgspec.convert(event.report, Report, from_attributes=True)
    settings, template, ris = await ctx.in_force()
    if not settings.enable:
        return Emit(())
    header = await _header(event.study_uid, None, ctx)
    text = build_oru(
        header,
        StudyFindings(),
        report,
        settings,
        about.control_id,
        event.occurred_at,
        template,
        core=about.key["core"],
    )
    return await _send(ctx, ris, delivery, text, about)


@dataclass(frozen=True)
class _Outcome:
    """What Hl7Sent / Hl7Failed will say about the message."""

    key: ev.AttemptKey
    control_id: str
    missing_findings: tuple[str, ...] = ()
    with_report: bool = False
    report_id: str = ""


async def _send(
    ctx: Hl7Context, ris: MllpClient, delivery: Delivery, text: str, about: _Outcome
) -> Outcome:
    def failed(reason: str, code: str = "") -> Outcome:
        return retry_or_fail(
            delivery,
            ctx.policy,
            reason,
            retryable=refusal_is_transient(code),
            failed=ev.Hl7Failed(
                **about.key,
                ris=str(ris),
                control_id=about.control_id,
                reason=reason,
                ack_code=code,
                report_id=about.report_id,
            ),
        )

    try:
        ack = await ris.send(text, about.control_id)
    except MllpError as err:
        return failed(str(err))
    if not ack.accepted:
        return failed(f"the RIS answered {ack.code}: {ack.text or 'no reason given'}", ack.code)
    return Emit(
        (
            ev.Hl7Sent(
                **about.key,
                ris=str(ris),
                control_id=about.control_id,
                ack_code=ack.code,
                ack_text=ack.text,
                tries=delivery.num_delivered,
                missing_findings=about.missing_findings,
                with_report=about.with_report,
                report_id=about.report_id,
            ),
        )
    )


async def _findings(
    event: ev.ResultReady, settings: Hl7Settings, ctx: Hl7Context
) -> tuple[StudyFindings, list[str]]:
    """The wanted findings, with the commands missing and those still running."""
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


async def _report(event: ev.ResultReady, settings: Hl7Settings, ctx: Hl7Context) -> Report:
    source = ctx.report_source(event.core, settings)
    if source is None:
        raise ReportError(f"no TechCare Report service for core {event.core!r}", False)
    return await source.fetch(event.study_uid, settings.language)


async def _header(study: str, ready: ev.ResultReady | None, ctx: Hl7Context) -> StudyHeader:
    """The study's patient and order facts: a stored instance (the latest first), else a
    result object, which carries the same patient and study once the instances expired."""
    instances = [
        (ctx.instances, r.event.object_name)
        for r in reversed(await ctx.events.history(study))
        if isinstance(r.event, ev.InstanceReceived)
    ]
    for store, name in instances[:3]:
        try:
            return read_study_header(await store.get(name))
        except (BlobNotFound, HeaderError):
            continue
    # The result list is read back (from its pages) only when no instance is readable.
    results = await ctx.events.result_objects(ready) if ready is not None else ()
    for r in results[:1]:
        try:
            return read_study_header(await ctx.results.get(r.object_name))
        except (BlobNotFound, HeaderError):
            continue
    # Nothing readable is stored: the message still tells the RIS which study it is about.
    return StudyHeader(study_uid=study)


# A load that turns sending or external reports around is said once, by this component.
SWITCH_STEP: Step[ev.Hl7ConfigLoaded] = Step(
    consumes=ev.Hl7ConfigLoaded,
    fan_out=FanOut.ONCE,
    durable=HL7_SWITCH_DURABLE,
    filter_subject=site_events(ev.Hl7ConfigLoaded),
    description="Hl7ConfigLoaded -> Hl7Switched when sending or external reports change",
    emits=(ev.Hl7Switched, ev.StepFailed),
    concurrency=1,
    start="new",
)


@dataclass
class Switches:
    """What the hl7 component did before this load: send to the RIS, take external reports."""

    base: Hl7Settings
    sending: bool
    external_reports: bool


async def apply_config(
    event: ev.Hl7ConfigLoaded, delivery: Delivery, switches: Switches
) -> Outcome:
    """A load that turns HL7_ENABLE or WEBPS_ENABLE around is said in an Hl7Switched."""
    loaded = LoadedConfig(
        name=event.name, kind=event.kind, settings=event.settings, template=event.template
    )
    try:
        settings, _ = effective(switches.base, loaded)
    except CustomConfigError:
        settings = switches.base  # as in_force falls back
    now = (settings.enable, settings.webps_enable)
    if now == (switches.sending, switches.external_reports):
        return Emit(())
    switches.sending, switches.external_reports = now
    log.warning(
        "HL7 switched by a loaded configuration",
        extra={"config": event.name, "sending": now[0], "external_reports": now[1]},
    )
    return Emit(
        (
            ev.Hl7Switched(
                load_id=event.load_id,
                config_name=event.name,
                sending=now[0],
                external_reports=now[1],
            ),
        )
    )


async def run(rt: Runtime, started: Started) -> None:
    """The RIS sender's consumers, the providers' NATS subjects (answered as WEBPS_ENABLE in
    force says) and the original's HTTP routes (HL7_HTTP_PORT)."""
    settings = rt.settings.hl7
    await load_at_init(rt.events, settings)
    ctx = Hl7Context(
        settings,
        rt.events,
        rt.instances,
        rt.results,
        rt.policy,
        tcr_reports={
            core.name: TechCareReports(core.api_url, core.token)
            for core in rt.settings.cores
            if core.kind == "tcr"
        },
        tokens={core.name: core.token for core in rt.settings.cores},
        ris_cores=rt.settings.ris_cores,
    )
    _, now = await in_force(rt.events, settings)
    switches = Switches(settings, now.enable, now.webps_enable)
    http = Hl7HttpServer(rt.events, settings) if settings.http_port else None
    results, reports = steps(settings)
    to_ris = partial(send_to_ris, ctx=ctx)
    external = partial(send_external_report, ctx=ctx)
    switch = partial(apply_config, switches=switches)

    async def answer(subject: str, body: bytes) -> bytes:
        in_use, _, _ = await ctx.in_force()
        return await answer_request(rt.events, in_use, subject, body)

    # Every provider's subject, unknown providers included, so that they hear why; with
    # WEBPS_ENABLE off (as in force) each is told so.
    responders = await answer_requests(rt.nc, [WEBPS_SUBJECTS], HL7_WEBPS_QUEUE, answer)
    try:
        async with asyncio.TaskGroup() as group:
            if http is not None:
                group.create_task(http.run(rt.stop))
            url = {"hl7_http_url": http.url} if http is not None else {}
            await run_steps(
                rt,
                lambda ready: started({**ready, **url}),
                [
                    (results, lambda _: to_ris),
                    (reports, lambda _: external),
                    (SWITCH_STEP, lambda _: switch),
                ],
            )
    finally:
        await responders.close()
        await ctx.aclose()


async def load_at_init(events: EventLog, settings: Hl7Settings) -> None:
    """LOAD_CONFIG_AT_INIT, then LOAD_TEMPLATE_AT_INIT: recorded like a load by a person; a
    file that cannot be loaded stops start-up with the reason."""
    for variable, name, kind in (
        ("LOAD_CONFIG_AT_INIT", settings.load_config_at_init, "config"),
        ("LOAD_TEMPLATE_AT_INIT", settings.load_template_at_init, "template"),
    ):
        if name:
            try:
                await load_named(events, settings, name, kind, variable)
            except LoadRefused as err:
                raise ConfigError(f"{variable}: {err.reason}") from None


def check(settings: Settings) -> None:
    if not settings.hl7.ris_ip:
        raise ConfigError("HL7_RIS_IP: not set; the hl7 component sends to the RIS")
    # Findings of a command that no core runs would be missing from every message.
    run = {c for core in settings.cores if core.kind != "tcr" for c in core.inference_commands}
    wanted = (
        (
            "DETECTION_INFERENCE_COMMAND",
            settings.hl7.detection_command,
            settings.hl7.include_detections,
        ),
        ("MEASURE_INFERENCE_COMMAND", settings.hl7.measure_command, settings.hl7.include_measures),
    )
    for variable, command, included in wanted:
        if run and included and command not in run:
            raise ConfigError(
                f"{variable}: no core runs {command!r} (INFERENCE_COMMANDS: "
                f"{', '.join(sorted(run))}); add it there or switch its findings off"
            )


COMPONENT = Component(
    "hl7",
    "ResultReady, ExternalReportReceived -> ORU^R01 to the RIS -> Hl7Sent / Hl7Failed",
    run,
    check=check,
    # With a RIS set, it runs even when HL7_ENABLE is false: a loaded configuration may turn
    # sending on, without a restart.
    in_up=lambda settings: settings.hl7.enable or bool(settings.hl7.ris_ip),
    publishes=Publishes(
        # Its steps' (built from the settings, one per kind of report), the configurations it
        # loads at start and over its HTTP routes, and the reports providers push to it.
        events=(*RIS_EMITS, *emitted(SWITCH_STEP), ev.Hl7ConfigLoaded, ev.ExternalReportReceived),
        replies=True,
    ),
)
