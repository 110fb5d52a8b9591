"""What an operator can do, shared by the HTTP API, the dashboard and the CLI.

Each operation checks its input, then appends an event; the handlers do the work. Nothing here
changes state other than by appending to the stream.
"""

from __future__ import annotations

import uuid
from datetime import datetime

import msgspec

from pacsor.admin.read_model import ReadModel
from pacsor.config import Destination, Settings
from pacsor.domain import events as ev
from pacsor.domain.completion import InstancesGone, UnknownStudy, relaunch_check
from pacsor.errors import InvalidInput
from pacsor.jetstream.blobs import BlobStore
from pacsor.jetstream.eventlog import EventLog
from pacsor.jetstream.subjects import is_valid_uid


class Refused(InvalidInput):
    """The operation cannot be done; `status` is the HTTP status that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class RelaunchAccepted(msgspec.Struct, frozen=True):
    study_uid: str = msgspec.field(name="study_instance_uid")
    relaunch_id: str
    requested_by: str
    cores: tuple[str, ...]
    sequence: int
    message: str


class ReplayAccepted(msgspec.Struct, frozen=True):
    destination: str
    since: datetime
    replay_id: str
    results: int
    sequence: int
    message: str


def configured_cores(settings: Settings) -> tuple[str, ...]:
    return tuple(core.name for core in settings.cores)


def check_uid(uid: str) -> str:
    if not is_valid_uid(uid):
        raise Refused(400, f"not a DICOM UID (digits and dots, at most 64): {uid[:80]!r}")
    return uid


async def request_relaunch(
    events: EventLog,
    instances: BlobStore,
    settings: Settings,
    uid: str,
    cores: tuple[str, ...],
    requested_by: str,
) -> RelaunchAccepted:
    """Append RelaunchRequested after checking the study exists and can be sent again."""
    check_uid(uid)
    known = configured_cores(settings)
    unknown = [core for core in cores if core not in known]
    if unknown:
        raise Refused(400, f"unknown core(s) {', '.join(unknown)}; configured: {', '.join(known)}")
    check = relaunch_check(await events.history(uid))
    if isinstance(check, UnknownStudy):
        raise Refused(404, f"no study {uid} in the event history")
    if isinstance(check, InstancesGone):
        raise Refused(409, f"the instances of {uid} are no longer stored: {check.reason}")
    missing = [
        i.sop_instance_uid for i in check.instances if await instances.info(i.object_name) is None
    ]
    if missing:
        raise Refused(
            409,
            f"{len(missing)} of the {len(check.instances)} instances of {uid} are no longer "
            f"stored (past retention); the study cannot be sent again",
        )
    request = ev.RelaunchRequested(
        study_uid=uid,
        relaunch_id=uuid.uuid4().hex,
        requested_by=requested_by,
        cores=cores,
    )
    sequence = await events.publish(request)
    return RelaunchAccepted(
        study_uid=uid,
        relaunch_id=request.relaunch_id,
        requested_by=requested_by,
        cores=cores,
        sequence=sequence,
        message=f"relaunch of {uid} requested ({len(check.instances)} instances)",
    )


def find_destination(settings: Settings, name: str) -> Destination:
    """A configured destination of any core, named by its AE title or in full (AET@host:port)."""
    configured = tuple(dict.fromkeys(d for core in settings.cores for d in core.destinations))
    for destination in configured:
        if name in {str(destination), destination.ae_title}:
            return destination
    names = ", ".join(str(d) for d in configured) or "none"
    raise Refused(404, f"no destination {name[:80]!r}; configured: {names}")


async def request_replay(
    events: EventLog,
    model: ReadModel,
    settings: Settings,
    name: str,
    since: datetime,
    requested_by: str,
) -> ReplayAccepted:
    """Append one DispatchReplayRequested per result set made ready since `since`."""
    destination = find_destination(settings, name)
    if since.tzinfo is None:
        raise Refused(400, "since: give a time zone, e.g. 2026-01-31T00:00:00Z")
    replay_id = uuid.uuid4().hex
    # Only the results of the cores that send to this destination.
    cores = {core.name for core in settings.cores if destination in core.destinations}
    ready = [r for r in model.results_ready_since(since) if r.core in cores]
    sequence = 0
    for results in ready:
        sequence = await events.publish(
            ev.DispatchReplayRequested(
                study_uid=results.study_uid,
                core=results.core,
                attempt=results.attempt,
                destination=str(destination),
                replay_id=replay_id,
                requested_by=requested_by,
                since=since,
            )
        )
    return ReplayAccepted(
        destination=str(destination),
        since=since,
        replay_id=replay_id,
        results=len(ready),
        sequence=sequence,
        message=f"{len(ready)} result set(s) made ready since {since.isoformat()} "
        f"will be sent again to {destination}",
    )


async def request_study_replay(
    events: EventLog,
    model: ReadModel,
    settings: Settings,
    uid: str,
    name: str,
    requested_by: str,
) -> ReplayAccepted:
    """Send one study's latest results again to one destination: a DispatchReplayRequested
    per core of the latest attempt that sends there and has results still stored."""
    check_uid(uid)
    destination = find_destination(settings, name)
    view = model.get(uid)
    if view is None:
        raise Refused(404, f"no study {uid}")
    cores = {core.name for core in settings.cores if destination in core.destinations}
    ready = [
        r
        for r in view.results_made
        if r.core in cores and r.attempt == view.attempt and not r.removed
    ]
    if not ready:
        raise Refused(
            409,
            f"no results of attempt {view.attempt} of {uid} are stored for {destination}: "
            "relaunch the study instead",
        )
    replay_id = uuid.uuid4().hex
    sequence = 0
    for results in ready:
        sequence = await events.publish(
            ev.DispatchReplayRequested(
                study_uid=uid,
                core=results.core,
                attempt=results.attempt,
                destination=str(destination),
                replay_id=replay_id,
                requested_by=requested_by,
                since=results.at,
            )
        )
    return ReplayAccepted(
        destination=str(destination),
        since=min(r.at for r in ready),
        replay_id=replay_id,
        results=len(ready),
        sequence=sequence,
        message=f"sending the results of {uid} again to {destination}",
    )
