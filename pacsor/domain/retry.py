"""The one retry policy: exponential backoff, capped, with a bounded number of tries.

Every handler retries through JetStream redelivery (a NAK with this delay), so a retry
survives a restart of the process and needs no state of its own.
"""

from __future__ import annotations

import msgspec


class RetryPolicy(msgspec.Struct, frozen=True):
    initial_seconds: float = 2.0
    max_seconds: float = 300.0
    max_attempts: int = 12
    multiplier: float = 2.0

    def delay_after(self, tries: int, at_least: float | None = None) -> float | None:
        """Seconds to wait after `tries` failed tries, or None when no try is left.

        `at_least` honours a server's Retry-After without letting it shorten the backoff.
        """
        if tries >= self.max_attempts:
            return None
        delay = min(self.initial_seconds * self.multiplier ** max(tries - 1, 0), self.max_seconds)
        if at_least is not None:
            delay = max(delay, min(at_least, self.max_seconds))
        return delay


FIRST_POLL_DELAY = 0.25


def poll_delay(polls_made: int, interval: float) -> float:
    """The wait before the next status poll: short at first (0.25 s, 0.5 s, 1 s, ...) and
    POLL_INTERVAL_SECONDS at most, so a result ready soon after the upload is fetched soon,
    and a long inference is polled at the usual pace. The first poll is at once (Uploaded)."""
    return float(min(interval, FIRST_POLL_DELAY * 2.0 ** max(polls_made - 1, 0)))
