"""The durable quiet-period timer of each study, kept by nats-server as a message schedule.

Arming publishes a schedule (`Nats-Schedule: @at <time>`) on the study's schedule subject;
publishing again on that subject replaces the pending schedule, which makes it a debounce.
When the time comes the server publishes the payload on the study's `elapsed` subject. The
timer lives in the PACSOR_TIMERS stream, so it survives restarts of pacsor and of the server.

nats-server runs its scheduler at most every 250 ms, so a schedule fires up to that late
(measured with nats-server 2.15: 0 to 243 ms, 118 ms at the median, with `@at` times to the
millisecond; whole seconds added 0 to 1 s more). A timer is therefore armed FIRES_EARLY before
its time, and the completion waits what is left by a redelivery of the fired message (a NAK
with that delay, kept by JetStream and exact to a few milliseconds): the study completes when
its quiet period ends, and the schedule is still what wakes it, across restarts.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
from nats.js import JetStreamContext

from pacsor.jetstream.subjects import (
    SCHEDULE_HEADER,
    SCHEDULE_TARGET_HEADER,
    TIMERS_STREAM,
    held_schedule_subject,
    quiet_elapsed_subject,
    quiet_schedule_subject,
)


class QuietElapsed(msgspec.Struct, frozen=True):
    """The payload of a fired timer."""

    study_uid: str = msgspec.field(name="study_instance_uid")
    armed_for: datetime
    # When the completion found a stale hold and looks again (pacsor.domain.completion).
    holds_checked_at: datetime | None = None


# How long before its time a timer is armed: the longest the server's scheduler fires late.
FIRES_EARLY = timedelta(milliseconds=250)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def schedule_time(at: datetime) -> str:
    """RFC 3339 to the millisecond (nats-server reads the fraction), rounded up."""
    milliseconds = -(-(at - _EPOCH) // timedelta(microseconds=1) // 1000)
    exact = _EPOCH + timedelta(milliseconds=milliseconds)
    return exact.strftime("%Y-%m-%dT%H:%M:%S.") + f"{milliseconds % 1000:03d}Z"


class QuietTimers:
    def __init__(
        self, js: JetStreamContext, timeout: float = 10.0, early: timedelta = FIRES_EARLY
    ) -> None:
        self._js = js
        self._timeout = timeout
        self.early = early

    async def arm(
        self,
        study_uid: str,
        at: datetime,
        holds_checked_at: datetime | None = None,
        held: bool = False,
    ) -> None:
        """Wake the study's completion at `at` (the payload's `armed_for`): the schedule
        fires between `early` before it and `at`, and the completion waits the rest.

        `held`: the completion looks again at an association still open, on a schedule of its
        own. On the quiet period's, it could replace the one the SCP arms when that
        association closes (written between the completion's read of the holds and its arm),
        and the study would wait the hold's lease instead of its quiet period.
        """
        subject = held_schedule_subject if held else quiet_schedule_subject
        await self._js.publish(
            subject(study_uid),
            msgspec.json.encode(QuietElapsed(study_uid, at, holds_checked_at)),
            timeout=self._timeout,
            stream=TIMERS_STREAM,
            headers={
                SCHEDULE_HEADER: f"@at {schedule_time(at - self.early)}",
                SCHEDULE_TARGET_HEADER: quiet_elapsed_subject(study_uid),
            },
        )


def decode_elapsed(data: bytes, subject: str) -> QuietElapsed:
    return msgspec.json.decode(data, type=QuietElapsed)
