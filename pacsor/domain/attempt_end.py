"""When one attempt of a study has ended, from its events: what `pacsor relaunch --wait` waits
for. A pure function of the events seen since the relaunch and of what the settings expect.

An attempt has ended when every core it concerns has ended: failed (UploadFailed,
ResultFailed), filtered out (NothingToUpload), or its results made ready and each of its
destinations answered for (Dispatched or DispatchFailed; none when there are no result
objects), and the RIS too (Hl7Sent or Hl7Failed) when HL7 is on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import msgspec

from pacsor.domain import events as ev


class AttemptEnd(msgspec.Struct, frozen=True, kw_only=True):
    attempt: int  # 0 until the attempt's StudyComplete was seen
    ended: bool
    failed: bool  # any core or destination of the attempt failed


def attempt_end(
    seen: Iterable[ev.Event],
    relaunch_id: str,
    destinations: Mapping[str, tuple[str, ...]],
    ris: bool,
) -> AttemptEnd:
    """`destinations`: for each core of the settings, its destinations (AET@host:port)."""
    events = list(seen)
    complete = next(
        (e for e in events if isinstance(e, ev.StudyComplete) and e.relaunch_id == relaunch_id),
        None,
    )
    if complete is None:
        return AttemptEnd(attempt=0, ended=False, failed=False)
    attempt = complete.attempt
    mine = [e for e in events if isinstance(e, ev.CoreEvent) and e.attempt == attempt]
    cores = complete.cores or tuple(destinations)
    ended, failed = True, False
    for core in cores:
        of_core = [e for e in mine if e.core == core]
        if any(isinstance(e, ev.UploadFailed | ev.ResultFailed) for e in of_core):
            failed = True
            continue
        if any(isinstance(e, ev.NothingToUpload) for e in of_core):
            continue
        ready = next((e for e in of_core if isinstance(e, ev.ResultReady)), None)
        if ready is None:
            ended = False
            continue
        if ready.results:
            answered = {
                e.destination: isinstance(e, ev.DispatchFailed)
                for e in of_core
                if isinstance(e, ev.Dispatched | ev.DispatchFailed) and not e.replay_id
            }
            ended &= all(d in answered for d in destinations.get(core, ()))
            failed |= any(answered.values())
        if ris:
            hl7 = [e for e in of_core if isinstance(e, ev.Hl7Sent | ev.Hl7Failed)]
            ended &= bool(hl7)
            failed |= any(isinstance(e, ev.Hl7Failed) for e in hl7)
    return AttemptEnd(attempt=attempt, ended=ended, failed=failed)
