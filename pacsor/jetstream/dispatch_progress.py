"""What each destination accepted or refused, per attempt, in the PACSOR_DISPATCH KV bucket.

One key per (study, core, attempt, destination); each try merges its answers into the value
with an expected revision (compare-and-set), so two writers can never lose each other's
answers. The value names objects by their position in the attempt's result list
(pacsor.domain.dispatch.StoredProgress), so it stays small whatever the count; a value of
an earlier version, keyed by SOP Instance UID, still reads. The decisions are
pacsor.domain.dispatch; the outcome events stay in PACSOR.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from pacsor.domain.dispatch import Progress, StoredProgress, pack, record_try, unpack
from pacsor.jetstream.subjects import DISPATCH_PROGRESS_BUCKET

_MAX_CONFLICTS = 10


class _Version(msgspec.Struct):
    version: int = 1  # the first values had no version and were keyed by SOP Instance UID


def decode_progress(value: bytes, sop_uids: Sequence[str]) -> Progress:
    if msgspec.json.decode(value, type=_Version).version == 1:
        return msgspec.json.decode(value, type=Progress)
    return unpack(msgspec.json.decode(value, type=StoredProgress), sop_uids)


class DispatchProgress:
    def __init__(self, js: JetStreamContext) -> None:
        self._js = js
        self._kv: KeyValue | None = None

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self._js.key_value(DISPATCH_PROGRESS_BUCKET)
        return self._kv

    async def _read(self, key: str, sop_uids: Sequence[str]) -> tuple[Progress, int]:
        """The progress of the objects `sop_uids` (the attempt's list, in its order) and its
        revision (0: none yet)."""
        kv = await self._bucket()
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            return Progress(), 0
        if not entry.value:
            return Progress(), entry.revision or 0
        return decode_progress(entry.value, sop_uids), entry.revision or 0

    async def get(self, key: str, sop_uids: Sequence[str]) -> Progress:
        return (await self._read(key, sop_uids))[0]

    async def record(
        self,
        key: str,
        sop_uids: Sequence[str],
        answers: Iterable[tuple[str, int]],
        notes: Iterable[str] = (),
    ) -> Progress:
        """Merge one try's answers (and notes) into the stored progress, atomically."""
        answers, notes = list(answers), tuple(notes)
        kv = await self._bucket()
        for _ in range(_MAX_CONFLICTS):
            progress, revision = await self._read(key, sop_uids)
            merged = record_try(progress, answers, notes)
            value = msgspec.json.encode(pack(merged, sop_uids))
            try:
                if revision == 0:
                    await kv.create(key, value)
                else:
                    await kv.update(key, value, last=revision)
            except KeyWrongLastSequenceError:
                continue  # another writer recorded first: merge into theirs
            return merged
        raise RuntimeError(f"dispatch progress {key}: too many concurrent updates")
