"""Whether the ORU waits for findings the AI is still computing, or goes now: pure decisions.

Findings (and a written report) still running are waited for, by redelivery, until
HL7_FINDINGS_WAIT_SECONDS after ResultReady; the message then goes without them. A few looks
during the wait, not one per retry delay: each look is a redelivery. The redeliveries spent
waiting are not tries of the RIS, so they are left out of its count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import msgspec


class WaitFor(msgspec.Struct, frozen=True):
    """Look again after `delay` seconds."""

    delay: float
    reason: str


class SendNow(msgspec.Struct, frozen=True):
    """Send the message; `waits_spent` deliveries were looks, not tries of the RIS (an upper
    bound: the RIS may get a few more tries, never fewer)."""

    waits_spent: int = 0


def wait_step(wait_seconds: float, initial_retry_seconds: float) -> float:
    return max(initial_retry_seconds, wait_seconds / 4)


def findings_wait(
    running: Sequence[str],
    waited: float,
    wait_seconds: float,
    initial_retry_seconds: float,
    num_delivered: int,
) -> WaitFor | SendNow:
    """`running`: what is still being computed; `waited`: seconds since ResultReady."""
    step = wait_step(wait_seconds, initial_retry_seconds)
    if not running:
        return SendNow()
    if waited < wait_seconds:
        delay = max(0.1, min(step, wait_seconds - waited))
        return WaitFor(delay, f"still running: {', '.join(running)}")
    # At most how many deliveries a whole wait takes (the first one included).
    deliveries = math.ceil(wait_seconds / step) + 1
    return SendNow(waits_spent=min(num_delivered - 1, deliveries))
