"""What a destination has accepted across tries, and what to do next: pure decisions.

A destination's answers are remembered per attempt (pacsor.jetstream.dispatch_progress), so a
retry sends only what it has not yet accepted or refused. DIMSE statuses (PS3.4 annex B, C.4.2):
success and warnings (0xB...) mean stored; 0xA9xx (data set does not match SOP class),
0xCxxx (cannot understand) and 0x0122 (SOP class not supported) mean this destination refuses
this object for good; anything else (0xA7xx out of resources, no answer, not reached) may
succeed later. A SOP class the destination takes in no transfer syntax pacsor can offer
(pacsor.domain.negotiation) is 0x0122 for each of its objects, with a note saying which
syntaxes were proposed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import msgspec

from pacsor.domain.events import STATUS_SAMPLE, AttemptKey, DispatchFailed, ObjectStatus

NO_ANSWER = -1  # no status came back: association lost, or the object was not reached
SOP_CLASS_NOT_SUPPORTED = 0x0122


def is_stored(status: int) -> bool:
    return status == 0x0000 or 0xB000 <= status <= 0xBFFF


def is_permanent_refusal(status: int) -> bool:
    return (
        0xA900 <= status <= 0xA9FF
        or 0xC000 <= status <= 0xCFFF
        or status == SOP_CLASS_NOT_SUPPORTED
    )


def status_text(status: int) -> str:
    return "no answer" if status == NO_ANSWER else f"0x{status:04X}"


class Progress(msgspec.Struct, frozen=True, kw_only=True):
    """A destination's answers for one attempt's result objects, by SOP Instance UID."""

    tries: int = 0
    delivered: dict[str, int] = msgspec.field(default_factory=dict)
    refused: dict[str, int] = msgspec.field(default_factory=dict)
    failing: dict[str, int] = msgspec.field(default_factory=dict)  # last transient status
    # Why objects were refused before any C-STORE (negotiation), kept for the final event.
    notes: tuple[str, ...] = ()

    def settled(self, sop_uid: str) -> bool:
        return sop_uid in self.delivered or sop_uid in self.refused


class StoredProgress(msgspec.Struct, frozen=True, kw_only=True):
    """Progress as the PACSOR_DISPATCH bucket keeps it: each object by its position in the
    attempt's result list, plain successes as ranges of positions. Keyed by SOP Instance UID,
    12,000 results filled the 1 MB a message may hold; this way a study whose results all
    went through is a few bytes, and one with 100,000 refusals about 1 MB."""

    version: int = 2
    tries: int = 0
    stored: tuple[tuple[int, int], ...] = ()  # [first, last] positions answered 0x0000
    delivered: dict[int, int] = msgspec.field(default_factory=dict)  # stored with a warning
    refused: dict[int, int] = msgspec.field(default_factory=dict)
    failing: dict[int, int] = msgspec.field(default_factory=dict)
    notes: tuple[str, ...] = ()


def pack(progress: Progress, sop_uids: Sequence[str]) -> StoredProgress:
    """`progress` by position in `sop_uids` (an object not in the list is not kept)."""
    position = {sop: i for i, sop in reversed(list(enumerate(sop_uids)))}

    def by_position(answers: dict[str, int]) -> dict[int, int]:
        return {position[sop]: status for sop, status in answers.items() if sop in position}

    plain = sorted(
        position[s] for s, status in progress.delivered.items() if s in position and status == 0
    )
    ranges: list[tuple[int, int]] = []
    for i in plain:
        if ranges and ranges[-1][1] == i - 1:
            ranges[-1] = (ranges[-1][0], i)
        else:
            ranges.append((i, i))
    return StoredProgress(
        tries=progress.tries,
        stored=tuple(ranges),
        delivered=by_position({s: v for s, v in progress.delivered.items() if v != 0}),
        refused=by_position(progress.refused),
        failing=by_position(progress.failing),
        notes=progress.notes,
    )


def unpack(stored: StoredProgress, sop_uids: Sequence[str]) -> Progress:
    """The progress `pack` kept, by SOP Instance UID again."""

    def by_uid(answers: dict[int, int]) -> dict[str, int]:
        return {sop_uids[i]: status for i, status in answers.items() if 0 <= i < len(sop_uids)}

    delivered = {
        sop_uids[i]: 0
        for first, last in stored.stored
        for i in range(max(first, 0), min(last, len(sop_uids) - 1) + 1)
    }
    return Progress(
        tries=stored.tries,
        delivered=delivered | by_uid(stored.delivered),
        refused=by_uid(stored.refused),
        failing=by_uid(stored.failing),
        notes=stored.notes,
    )


def record_try(
    progress: Progress, answers: Iterable[tuple[str, int]], notes: Iterable[str] = ()
) -> Progress:
    """`progress` after one more try that got `answers` ((SOP UID, status) per object sent)
    and `notes` (why some were refused without a C-STORE).

    A settled object keeps its first outcome: an object is never both delivered and refused.
    """
    delivered, refused, failing = (
        dict(progress.delivered),
        dict(progress.refused),
        dict(progress.failing),
    )
    for sop_uid, status in answers:
        if sop_uid in delivered or sop_uid in refused:
            continue
        if is_stored(status):
            delivered[sop_uid] = status
            failing.pop(sop_uid, None)
        elif is_permanent_refusal(status):
            refused[sop_uid] = status
            failing.pop(sop_uid, None)
        else:
            failing[sop_uid] = status
    kept = tuple(dict.fromkeys((*progress.notes, *notes)))
    return Progress(
        tries=progress.tries + 1,
        delivered=delivered,
        refused=refused,
        failing=failing,
        notes=kept,
    )


def to_send(sop_uids: Sequence[str], progress: Progress) -> list[str]:
    """The objects still to send: neither accepted nor refused for good."""
    return [sop for sop in sop_uids if not progress.settled(sop)]


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """Every object's status for the Dispatched / DispatchFailed event, in the results' order."""

    delivered: tuple[ObjectStatus, ...] = ()
    refused: tuple[ObjectStatus, ...] = ()
    undelivered: tuple[ObjectStatus, ...] = ()
    notes: tuple[str, ...] = ()

    def summary(self) -> str:
        parts = [f"{len(self.delivered)} delivered"]
        if self.refused:
            statuses = sorted({status_text(o.status) for o in self.refused})
            parts.append(f"{len(self.refused)} refused ({', '.join(statuses)})")
        if self.undelivered:
            statuses = sorted({status_text(o.status) for o in self.undelivered})
            parts.append(f"{len(self.undelivered)} not delivered ({', '.join(statuses)})")
        return "; ".join((", ".join(parts), *self.notes))


def outcome(sop_uids: Sequence[str], progress: Progress) -> Outcome:
    delivered, refused, undelivered = [], [], []
    for sop in sop_uids:
        if sop in progress.delivered:
            delivered.append(ObjectStatus(sop_instance_uid=sop, status=progress.delivered[sop]))
        elif sop in progress.refused:
            refused.append(ObjectStatus(sop_instance_uid=sop, status=progress.refused[sop]))
        else:
            status = progress.failing.get(sop, NO_ANSWER)
            undelivered.append(ObjectStatus(sop_instance_uid=sop, status=status))
    return Outcome(
        delivered=tuple(delivered),
        refused=tuple(refused),
        undelivered=tuple(undelivered),
        notes=progress.notes if refused else (),
    )


NOTHING_KNOWN = Outcome()


def failure(
    key: AttemptKey,
    destination: str,
    reason: str,
    tries: int,
    outcome: Outcome = NOTHING_KNOWN,
    replay_id: str = "",
) -> DispatchFailed:
    """The DispatchFailed of a delivery (or of a replay): every count, and the first
    STATUS_SAMPLE refused and undelivered objects with their status (small whatever the
    number of objects; every answer is in the PACSOR_DISPATCH bucket)."""
    return DispatchFailed(
        **key,
        destination=destination,
        reason=reason,
        tries=tries,
        delivered_count=len(outcome.delivered),
        refused_count=len(outcome.refused),
        undelivered_count=len(outcome.undelivered),
        refused=outcome.refused[:STATUS_SAMPLE],
        undelivered=outcome.undelivered[:STATUS_SAMPLE],
        replay_id=replay_id,
    )
