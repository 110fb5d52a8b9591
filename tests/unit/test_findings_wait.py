"""The HL7 sender's wait-or-send decision, as a pure function."""

from __future__ import annotations

from pacsor.domain.findings_wait import SendNow, WaitFor, findings_wait

# HL7_FINDINGS_WAIT_SECONDS 60, RETRY_INITIAL_SECONDS 5: a look every 15 s.
WAIT, INITIAL = 60.0, 5.0


def test_nothing_running_goes_at_once_and_spends_no_look() -> None:
    assert findings_wait([], 0.0, WAIT, INITIAL, 1) == SendNow(0)
    assert findings_wait([], 500.0, WAIT, INITIAL, 9) == SendNow(0)


def test_running_findings_are_waited_for_a_few_looks_then_left_out() -> None:
    first = findings_wait(["smartxpert"], 0.0, WAIT, INITIAL, 1)
    assert first == WaitFor(15.0, "still running: smartxpert")
    # The last look is shortened to end the wait on time, never under 0.1 s.
    assert findings_wait(["smartxpert", "report"], 55.0, WAIT, INITIAL, 4).delay == 5.0
    assert findings_wait(["smartxpert"], 59.99, WAIT, INITIAL, 5).delay == 0.1
    # Past the wait: sent without them; the looks (at most 60 / 15 + 1) are not RIS tries.
    assert findings_wait(["smartxpert"], 61.0, WAIT, INITIAL, 6) == SendNow(waits_spent=5)
    assert findings_wait(["smartxpert"], 61.0, WAIT, INITIAL, 9) == SendNow(waits_spent=5)
    assert findings_wait(["smartxpert"], 61.0, WAIT, INITIAL, 2) == SendNow(waits_spent=1)


def test_a_long_initial_retry_makes_the_looks_that_long() -> None:
    assert findings_wait(["measures"], 0.0, 10.0, 8.0, 1).delay == 8.0
    assert findings_wait(["measures"], 0.0, 0.0, 8.0, 1) == SendNow(waits_spent=0)
