"""When a relaunched attempt has ended (pacsor relaunch --wait): the pure decision."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from pacsor.devtools.sample_events import lifecycle
from pacsor.domain import events as ev
from pacsor.domain.attempt_end import attempt_end

STUDY = "1.2.826.0.1.3680043.8.498.77"
T0 = datetime(2026, 12, 1, 9, tzinfo=UTC)
PACS, ARCHIVE = "PACS@10.0.0.1:104", "ARCHIVE@10.0.0.2:104"
ID = "relaunch-1"


def attempt_two(destinations: tuple[str, ...] = (PACS, ARCHIVE)) -> list[ev.Event]:
    """Attempt 2 of the study, answering relaunch ID, dispatched to `destinations`."""
    history = lifecycle(STUDY, T0, destinations=destinations, attempt=2)
    return [
        msgspec.structs.replace(e, relaunch_id=ID, relaunch=True)
        if isinstance(e, ev.StudyComplete)
        else e
        for e in history
        if not isinstance(e, ev.InstanceReceived)  # a relaunch receives nothing new
    ]


def test_not_begun_until_its_own_study_complete() -> None:
    other = [msgspec.structs.replace(e, relaunch_id="another") for e in attempt_two()[:1]]
    end = attempt_end(other, ID, {"default": (PACS,)}, ris=False)
    assert (end.attempt, end.ended) == (0, False)


def test_ends_once_every_destination_has_answered() -> None:
    events = attempt_two()
    expected = {"default": (PACS, ARCHIVE)}
    # Before the archive's Dispatched: still open.
    assert not attempt_end(events[:-1], ID, expected, ris=False).ended
    end = attempt_end(events, ID, expected, ris=False)
    assert (end.attempt, end.ended, end.failed) == (2, True, False)


def test_a_dispatch_failure_ends_it_as_failed() -> None:
    *events, dispatched = attempt_two()
    assert isinstance(dispatched, ev.Dispatched)
    failed = ev.DispatchFailed(
        study_uid=STUDY,
        core="default",
        attempt=2,
        destination=dispatched.destination,
        reason="refused",
        occurred_at=dispatched.occurred_at,
    )
    end = attempt_end([*events, failed], ID, {"default": (PACS, ARCHIVE)}, ris=False)
    assert end.ended and end.failed


def test_a_replay_or_an_older_attempt_does_not_count() -> None:
    *events, dispatched = attempt_two()
    assert isinstance(dispatched, ev.Dispatched)
    replay = msgspec.structs.replace(dispatched, replay_id="r1")
    older = msgspec.structs.replace(dispatched, attempt=1)
    assert not attempt_end([*events, replay, older], ID, {"default": (PACS, ARCHIVE)}, False).ended


def test_with_hl7_the_ris_answer_is_awaited() -> None:
    events = attempt_two((PACS,))
    assert not attempt_end(events, ID, {"default": (PACS,)}, ris=True).ended
    sent = ev.Hl7Sent(
        study_uid=STUDY,
        core="default",
        attempt=2,
        ris="10.0.0.9:2575",
        control_id="C1",
        ack_code="AA",
        occurred_at=T0,
    )
    assert attempt_end([*events, sent], ID, {"default": (PACS,)}, ris=True).ended


def test_a_core_that_failed_or_had_nothing_ends_without_destinations() -> None:
    complete = attempt_two()[0]
    assert isinstance(complete, ev.StudyComplete)
    failed = ev.UploadFailed(
        study_uid=STUDY, core="default", attempt=2, reason="403", occurred_at=T0
    )
    nothing = ev.NothingToUpload(
        study_uid=STUDY,
        core="second",
        attempt=2,
        reason="filtered",
        skipped_count=3,
        occurred_at=T0,
    )
    expected = {"default": (PACS,), "second": (PACS,)}
    end = attempt_end([complete, failed, nothing], ID, expected, ris=True)
    assert end.ended and end.failed
    # The relaunch asked for one core only: the other is not waited for.
    only = msgspec.structs.replace(complete, cores=("second",))
    assert attempt_end([only, nothing], ID, expected, ris=True) == attempt_end(
        [only, nothing], ID, {"second": (PACS,)}, ris=True
    )
    assert attempt_end([only, nothing], ID, expected, ris=True).ended
