"""The durable quiet-period timer of each study, kept by nats-server as a message schedule.

Arming publishes a schedule (`Nats-Schedule: @at <time>`) on the study's schedule subject;
publishing again on that subject replaces the pending schedule, which makes it a debounce.
When the time comes the server publishes the payload on the study's `elapsed` subject. The
timer lives in the PACSOR_TIMERS stream, so it survives restarts of pacsor and of the server.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

import msgspec
from nats.js import JetStreamContext

from pacsor.jetstream.subjects import (
    SCHEDULE_HEADER,
    SCHEDULE_TARGET_HEADER,
    TIMERS_STREAM,
    quiet_elapsed_subject,
    quiet_schedule_subject,
)


class QuietElapsed(msgspec.Struct, frozen=True):
    """The payload of a fired timer."""

    study_uid: str = msgspec.field(name="study_instance_uid")
    armed_for: datetime
    # When the completion found a stale hold and looks again (pacsor.domain.completion).
    holds_checked_at: datetime | None = None


def schedule_time(at: datetime) -> str:
    """RFC 3339 in whole seconds, rounded up so the timer never fires early."""
    whole = datetime.fromtimestamp(math.ceil(at.timestamp()), UTC)
    return whole.strftime("%Y-%m-%dT%H:%M:%SZ")


class QuietTimers:
    def __init__(self, js: JetStreamContext, timeout: float = 10.0) -> None:
        self._js = js
        self._timeout = timeout

    async def arm(
        self, study_uid: str, at: datetime, holds_checked_at: datetime | None = None
    ) -> None:
        await self._js.publish(
            quiet_schedule_subject(study_uid),
            msgspec.json.encode(QuietElapsed(study_uid, at, holds_checked_at)),
            timeout=self._timeout,
            stream=TIMERS_STREAM,
            headers={
                SCHEDULE_HEADER: f"@at {schedule_time(at)}",
                SCHEDULE_TARGET_HEADER: quiet_elapsed_subject(study_uid),
            },
        )


def decode_elapsed(data: bytes, subject: str) -> QuietElapsed:
    return msgspec.json.decode(data, type=QuietElapsed)
