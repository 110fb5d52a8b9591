"""`pacsor check`: what must answer before a site goes live, one line per check.

- NATS reachable, with JetStream, and every stream of streams/*.json present;
- a C-ECHO to every result destination, over the association that also proposes the SOP
  classes pacsor's results come in (which the destination must store);
- the AI API of every core (API_URL, API_URL_1, ...) reachable and its token accepted;
- the RIS port open, when HL7 is on.

Every check runs even when an earlier one failed, so one run lists everything to fix.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import msgspec

from pacsor.ai.milvue_api import MilvueApi
from pacsor.config import ConfigError, Settings
from pacsor.dicom.storage_scu import probe
from pacsor.dicom.tls import client_context
from pacsor.domain import negotiation
from pacsor.jetstream.broker import connect, nats_access
from pacsor.jetstream.broker_state import broker_state

TIMEOUT = 10.0


class Check(msgspec.Struct, frozen=True):
    name: str
    problem: str | None  # None: passed
    detail: str = ""

    def line(self) -> str:
        if self.problem is None:
            return f"ok    {self.name}{': ' + self.detail if self.detail else ''}"
        return f"FAIL  {self.name}: {self.problem}"


def nats_url(settings: Settings) -> str:
    return str(nats_access(settings))


async def run_checks(settings: Settings) -> AsyncIterator[Check]:
    async for check in _nats(settings):
        yield check
    # Cores may share destinations: each is echoed once.
    destinations = list(dict.fromkeys(d for core in settings.cores for d in core.destinations))
    tls = None
    if any(d.tls for d in destinations):
        try:
            tls = client_context(
                settings.dicom_tls_ca, settings.dicom_tls_cert, settings.dicom_tls_key
            )
        except ConfigError as err:
            yield Check("DICOM TLS", str(err))
    classes = negotiation.result_sop_classes(
        settings.output_format, settings.structured_report_format, settings.static_report_format
    )
    for destination in destinations:
        if destination.tls and tls is None:
            yield Check(f"C-ECHO {destination.label}", "no TLS context (see DICOM TLS)")
            continue
        found = await asyncio.to_thread(
            probe,
            destination.host,
            destination.port,
            destination.ae_title,
            classes,
            settings.milvue_aet,
            TIMEOUT,
            tls if destination.tls else None,
        )
        yield Check(f"C-ECHO {destination.label}", found.problem, "answers")
        if found.problem is None:
            problem, stores = negotiation.verdict(found.proposed, found.accepted)
            yield Check(f"C-STORE {destination.label}", problem, stores)
    if not destinations:
        yield Check("destinations", "PACS_IP is not set and DESTINATIONS is empty")
    for core in settings.cores:
        if core.kind == "inference":
            yield await _core(core.name, core.api_url, core.token)
        else:  # the report API has no study status to ask: that it answers is what we know
            yield await _answers(f"report core {core.name} {core.api_url}", core.api_url)
    if settings.hl7.enable:
        yield await _port_open("RIS (HL7)", settings.hl7.ris_ip, settings.hl7.ris_port)


async def _nats(settings: Settings) -> AsyncIterator[Check]:
    url = nats_url(settings)
    try:
        nc = await asyncio.wait_for(connect(nats_access(settings), "pacsor check"), TIMEOUT)
    except Exception as err:
        yield Check(f"NATS {url}", f"unreachable: {str(err) or type(err).__name__}")
        return
    try:
        state = await broker_state(nc)
    finally:
        await nc.close()
    present = [s for s in state.streams if s.present]
    faults = [p for p in state.problems if "is missing" not in p]
    if faults and not present:
        yield Check(f"NATS {url}", f"JetStream does not answer: {faults[0]}")
        return
    yield Check(f"NATS {url}", None, f"JetStream, {len(present)} streams")
    for stream in state.streams:
        name = f"stream {stream.name}"
        if not stream.present:
            yield Check(name, "missing: pacsor creates it when it first starts")
        elif stream.replicas < settings.nats_replicas:
            wanted = settings.nats_replicas
            yield Check(name, f"{stream.replicas} copies, NATS_REPLICAS asks for {wanted}")
        else:
            yield Check(name, None, f"{stream.messages} messages, {stream.replicas} copies")
    for fault in faults:
        yield Check(f"NATS {url}", fault)


async def probe_core(api_url: str, token: str) -> str | None:
    """The AI core's probe alone (as `pacsor setup` asks it): None, or what is wrong."""
    return (await _core("", api_url, token)).problem


async def _core(name: str, api_url: str, token: str) -> Check:
    check = f"AI core {name} {api_url}"
    if not token:
        return Check(check, "TOKEN is not set")
    async with MilvueApi(api_url, token, timeout=TIMEOUT) as api:
        problem = await api.check_access()
    return Check(check, problem, "reachable, token accepted")


async def _answers(check: str, url: str) -> Check:
    try:
        async with httpx.AsyncClient(timeout=TIMEOUT) as http:
            answer = await http.get(url)
    except httpx.HTTPError as err:
        return Check(check, f"no answer: {str(err) or type(err).__name__}")
    return Check(check, None, f"answers (HTTP {answer.status_code})")


async def _port_open(name: str, host: str, port: int) -> Check:
    check = f"{name} {host}:{port}"
    if not host:
        return Check(check, "HL7_RIS_IP is not set")
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), TIMEOUT)
    except OSError as err:  # TimeoutError included
        return Check(check, f"port closed: {err.strerror or str(err) or 'no answer in time'}")
    writer.close()
    await writer.wait_closed()
    return Check(check, None, "port open")
