"""Recording what the poller records, and reading what the RIS received: the HL7 tests' data."""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
from nats.aio.client import Client

from pacsor.ai.milvue_api import MilvueApi
from pacsor.devtools.demo_ris import DemoRis
from pacsor.devtools.simulator import results as simulated
from pacsor.domain import events as ev
from pacsor.hl7.oru import control_id
from pacsor.jetstream.blobs import BlobStore, digest_hex, sha256_digest
from pacsor.jetstream.eventlog import EventLog
from pacsor.jetstream.subjects import (
    INSTANCES_BUCKET,
    RESULTS_BUCKET,
    findings_object_name,
    instance_object_name,
)
from tests.dicom_factory import make_image, new_uid, to_bytes
from tests.harness import TOKEN, wait_for_event
from tests.hl7_reading import ParsedOru

CORE = "default"


def findings_json(study: str, sop: str, command: str, status: str = "done") -> bytes:
    instance = simulated.InputInstance(
        sop_instance_uid=sop,
        series_instance_uid="1.2.3",
        rows=256,
        columns=256,
        pixel_spacing_mm=0.2,
    )
    if status != "done":
        return msgspec.json.encode({"StudyInstanceUID": study, "status": status})
    build = (
        simulated.smartxpert_findings
        if command == "smartxpert"
        else simulated.smarturgences_findings
    )
    return msgspec.json.encode(build(study, [instance]))


async def record_results(
    nc: Client,
    commands: dict[str, str] | None = None,
    attempt: int = 1,
    simulator: str = "",
    **attributes: str,
) -> ev.ResultReady:
    """Store a study's instance and findings, record StudyComplete and ResultReady.

    With `simulator`, the study is also uploaded there, so that its report exists.
    """
    js = nc.jetstream()
    events = EventLog(js)
    study = new_uid()
    ds = make_image(study, **attributes)
    sop = str(ds.SOPInstanceUID)
    data = to_bytes(ds)
    if simulator:

        async def part() -> AsyncIterator[bytes]:
            yield data

        async with MilvueApi(simulator, TOKEN) as api:
            await api.upload_study(study, [part])
    digest = sha256_digest(data)
    name = instance_object_name(study, sop, digest_hex(digest))
    await BlobStore(nc, js, INSTANCES_BUCKET).put(name, data)
    received = ev.InstanceReceived(
        study_uid=study,
        series_instance_uid=str(ds.SeriesInstanceUID),
        sop_instance_uid=sop,
        sop_class_uid=str(ds.SOPClassUID),
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        object_name=name,
        size=len(data),
        digest=digest,
    )
    through = await events.publish(received)
    await events.publish(
        ev.StudyComplete(
            study_uid=study, attempt=attempt, instance_count=1, through_sequence=through
        )
    )
    results = BlobStore(nc, js, RESULTS_BUCKET)
    stored = []
    wanted = {"smarturgences": "done", "smartxpert": "done"} if commands is None else commands
    for command, status in wanted.items():
        body = findings_json(study, sop, command, status)
        object_name = findings_object_name(study, CORE, attempt, command)
        info = await results.put(object_name, body)
        stored.append(
            ev.FindingsObject(
                inference_command=command,
                object_name=object_name,
                size=info.size,
                digest=info.digest,
            )
        )
    ready = ev.ResultReady(
        study_uid=study, core=CORE, attempt=attempt, results=(), findings=tuple(stored)
    )
    await events.publish(ready)
    return ready


async def outcome(nc: Client, ready: ev.ResultReady, timeout: float = 60.0) -> ev.AnyEvent:
    return await wait_for_event(
        nc,
        ready.study_uid,
        lambda e: isinstance(e, ev.Hl7Sent | ev.Hl7Failed),
        timeout,
    )


def sent_messages(ris: DemoRis, ready: ev.ResultReady) -> list[ParsedOru]:
    cid = control_id(ready.study_uid, ready.core, ready.attempt)
    return [ParsedOru(r.text) for r in ris.received if r.control_id == cid]


def external_report(study: str, **changes: str) -> dict[str, str]:
    return {
        "StudyInstanceUID": study,
        "report_id": "R-1",
        "title": "Radiographie thoracique",
        "indication": "Toux | fièvre",
        "technique": "Face",
        "findings": "Opacité basale droite.\nPas d'épanchement.",
        "conclusion": "Pneumopathie <basale> droite.",
        "language": "FR",
        **changes,
    }
