"""UPLOAD_RATE_LIMIT: instances per second per core, across every uploader replica.

The shared state is one key of the PACSOR_LIMITS key-value bucket per core: the time of the
next free upload slot. Taking a slot is a compare-and-set on that key (an update with the
revision that was read), so two replicas never take the same slot; a replica that loses the
race reads again. The slot's holder then waits until its time. Slots are spaced 1/rate apart
and an idle period saves none up: no burst above the rate. A replica that dies holding a slot
only wastes that slot.

The clocks of the replicas are compared through the key, so they must agree (NTP) to well
under 1/rate.
"""

from __future__ import annotations

import asyncio
import time

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from pacsor.jetstream.subjects import LIMITS_BUCKET, upload_rate_key


class RateLimiter:
    """Hands out upload slots for one core; `acquire` returns when this caller may send."""

    def __init__(self, js: JetStreamContext, core: str, per_second: float) -> None:
        if per_second <= 0:
            raise ValueError("a rate limit is positive; 0 means no limiter at all")
        self._js = js
        self._key = upload_rate_key(core)
        self._interval = 1.0 / per_second
        self._kv: KeyValue | None = None

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self._js.key_value(LIMITS_BUCKET)
        return self._kv

    async def reserve(self) -> float:
        """Take the next free slot; returns its time (time.time())."""
        kv = await self._bucket()
        while True:
            try:
                entry = await kv.get(self._key)
                revision: int | None = entry.revision
                next_free = float(entry.value or b"0")
            except KeyNotFoundError:
                revision, next_free = None, 0.0
            slot = max(next_free, time.time())
            value = repr(slot + self._interval).encode()
            try:
                if revision is None:
                    await kv.create(self._key, value)
                else:
                    await kv.update(self._key, value, last=revision)
            except KeyWrongLastSequenceError:
                continue  # another replica took a slot first: read again
            return slot

    async def acquire(self) -> None:
        """Wait for this caller's slot."""
        slot = await self.reserve()
        delay = slot - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
