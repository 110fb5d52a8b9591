"""The study view fold (pure, no NATS) and its SQLite read model."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec

from pacsor.admin.read_model import ReadModel, StudyFilter
from pacsor.devtools.sample_events import lifecycle, received
from pacsor.domain import events as ev
from pacsor.domain.study_view import (
    PeerSeen,
    StudyView,
    fold,
    see_peer,
    step_durations,
    step_times,
)

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
STUDY = "1.2.826.0.1.3680043.8.498.10"
PACS = "PACS@10.0.0.1:104"
ARCHIVE = "ARCHIVE@10.0.0.2:104"


def numbered(events: list[ev.Event], start: int = 1) -> list[tuple[int, ev.Event]]:
    return [(start + n, e) for n, e in enumerate(events)]


def test_a_study_goes_through_every_state() -> None:
    history = lifecycle(STUDY, T0, images=3, destinations=(PACS, ARCHIVE), accession="ACC1")
    states = []
    views: dict[str, object] = {}
    for pair in numbered(history):
        views = fold([pair], views)  # type: ignore[arg-type]
        states.append(views[STUDY].state)  # type: ignore[attr-defined]
    assert states == ["receiving"] * 3 + [
        "complete",
        "uploaded",
        "uploaded",  # the page listing the results changes no state; ResultReady does
        "results",
        "dispatched",
        "dispatched",
    ]
    view = fold(numbered(history))[STUDY]
    assert (view.instance_count, view.accession_number, view.attempt) == (3, "ACC1", 1)
    assert view.first_received_at == T0 and view.last_received_at == T0 + timedelta(seconds=2)
    (core,) = view.cores
    assert (core.core, core.state, core.result_count) == ("default", "dispatched", 6)
    assert {(d.destination, d.state, d.object_count) for d in view.destinations} == {
        (PACS, "dispatched", 6),
        (ARCHIVE, "dispatched", 6),
    }
    assert [(r.core, r.attempt) for r in view.results_made] == [("default", 1)]


def test_a_failure_shows_with_its_reason_and_a_relaunch_starts_over() -> None:
    history = lifecycle(STUDY, T0, destinations=(PACS,))
    history[-1] = ev.DispatchFailed(
        study_uid=STUDY,
        core="default",
        attempt=1,
        destination=PACS,
        reason="association rejected",
        tries=12,
        occurred_at=T0 + timedelta(minutes=5),
    )
    view = fold(numbered(history))[STUDY]
    assert view.state == "failed"
    assert view.destinations[0].reason == "association rejected"

    relaunch = ev.RelaunchRequested(
        study_uid=STUDY,
        relaunch_id="r1",
        requested_by="alice",
        occurred_at=T0 + timedelta(hours=1),
    )
    fold(numbered([relaunch], start=100), {STUDY: view})
    assert view.relaunch_pending
    second = lifecycle(STUDY, T0 + timedelta(hours=1), destinations=(PACS,), attempt=2)[3:]
    second[0] = msgspec.structs.replace(second[0], relaunch=True, requested_by="alice")  # type: ignore[type-var]
    fold(numbered(second, start=101), {STUDY: view})
    assert not view.relaunch_pending
    assert [(a.attempt, a.relaunch, a.requested_by) for a in view.attempts] == [
        (1, False, ""),
        (2, True, "alice"),
    ]
    assert view.state == "dispatched"
    assert view.destinations[0].attempt == 2 and view.destinations[0].reason == ""


def test_late_events_of_an_older_attempt_do_not_move_the_latest() -> None:
    first = lifecycle(STUDY, T0, destinations=(PACS,))
    second = lifecycle(STUDY, T0 + timedelta(hours=1), destinations=(PACS,), attempt=2)[3:5]
    late = first[-1]  # attempt 1's Dispatched, recorded after attempt 2 was uploaded
    view = fold(numbered([*first[:-1], *second, late]))[STUDY]
    assert view.cores[0].attempt == 2 and view.cores[0].state == "uploaded"
    assert view.state == "uploaded"


def test_the_same_instance_twice_counts_once_and_old_events_still_read() -> None:
    # A version 1 InstanceReceived, as recorded before accession numbers were carried.
    old = msgspec.json.encode(
        {
            k: v
            for k, v in msgspec.to_builtins(received(STUDY, 0, T0)).items()
            if k not in {"accession_number", "study_date", "study_description"}
        }
        | {"schema_version": 1}
    )
    decoded = ev.decode(old)
    assert isinstance(decoded, ev.InstanceReceived)
    assert (decoded.schema_version, decoded.accession_number) == (1, "")
    assert received(STUDY, 0, T0).schema_version == 2
    view = fold(numbered([decoded, received(STUDY, 0, T0, "ACC9"), received(STUDY, 1, T0)]))[STUDY]
    assert view.instance_count == 2 and view.accession_number == "ACC9"


def test_applying_an_event_twice_changes_nothing() -> None:
    pairs = numbered(lifecycle(STUDY, T0))
    once = fold(pairs)
    twice = fold(pairs, fold(pairs))
    assert msgspec.json.encode(once) == msgspec.json.encode(twice)


def test_states_settled_once_a_batch_are_those_settled_after_every_event() -> None:
    # A rebuild settles the derived states once per study and batch: the appliers must never
    # read them, or a batch would differ from the same events applied one at a time.
    key = {"study_uid": STUDY, "core": "default", "attempt": 1}
    first = lifecycle(STUDY, T0, destinations=(PACS, ARCHIVE))
    first[-1] = ev.DispatchFailed(
        **key, destination=ARCHIVE, reason="refused", tries=3, occurred_at=T0 + timedelta(1)
    )
    second = lifecycle(STUDY, T0 + timedelta(hours=1), destinations=(PACS,), attempt=2)[3:]
    history: list[ev.Event] = [
        *first,
        ev.DispatchReplayRequested(
            **key, destination=ARCHIVE, replay_id="r", requested_by="me", since=T0
        ),
        ev.Dispatched(**key, destination=ARCHIVE, replay_id="r", object_count=1),
        ev.RelaunchRequested(study_uid=STUDY, relaunch_id="r1", requested_by="me"),
        *second,
    ]
    pairs = numbered(history)
    for size in (1, 2, 3, 5, len(pairs)):
        batched: dict[str, StudyView] = {}
        one_by_one: dict[str, StudyView] = {}
        for start in range(0, len(pairs), size):
            fold(pairs[start : start + size], batched)
            for pair in pairs[start : start + size]:
                fold([pair], one_by_one)
                settled = msgspec.json.encode(one_by_one)
            assert msgspec.json.encode(batched) == settled, size


def test_rejections_are_counted_and_unknown_studies_ignored() -> None:
    rejected = [
        ev.InstanceRejected(
            study_uid=uid,
            reason="truncated",
            dimse_status=0xC222,
            rejection_id=str(n),
            occurred_at=T0,
        )
        for n, uid in enumerate((STUDY, ""))
    ]
    views = fold(numbered(rejected))
    assert list(views) == [STUDY]
    assert views[STUDY].rejected_count == 1 and views[STUDY].rejections[0].dimse_status == 0xC222


def test_step_durations() -> None:
    history = lifecycle(STUDY, T0, images=3)
    views: dict[str, object] = {}
    durations = []
    for pair in numbered(history):
        views = fold([pair], views)  # type: ignore[arg-type]
        durations += step_durations(views[STUDY], pair[1])  # type: ignore[arg-type]
    assert durations == [
        ("receive_to_complete", 11.0),
        ("upload", 2.0),
        ("ai_wait", 18.0),
        ("dispatch", 5.0),
    ]


def many_studies(count: int) -> list[ev.Event]:
    events: list[ev.Event] = []
    for n in range(count):
        uid = f"1.2.3.{n}"
        events += lifecycle(
            uid, T0 + timedelta(minutes=n), destinations=(PACS, ARCHIVE), accession=f"ACC{n:03d}"
        )
    return events


def test_read_model_applies_in_batches_like_the_fold(tmp_path: Path) -> None:
    pairs = numbered(many_studies(30))
    model = ReadModel(tmp_path / "admin.sqlite")
    for start in range(0, len(pairs), 7):
        batch = pairs[start : start + 7]
        model.apply(batch, batch[-1][0])
    expected = fold(pairs)
    assert model.last_sequence == len(pairs)
    for uid, view in expected.items():
        assert model.get(uid) == view
    # A batch already applied (a restart before the commit was seen) changes nothing.
    assert model.apply(pairs[-5:], pairs[-1][0]) == []


def test_queries_filter_sort_and_page(tmp_path: Path) -> None:
    pairs = numbered(many_studies(30))
    failed = ev.DispatchFailed(
        study_uid="1.2.3.7",
        core="default",
        attempt=1,
        destination=ARCHIVE,
        reason="refused",
        tries=3,
        occurred_at=T0 + timedelta(days=1),
    )
    pairs.append((len(pairs) + 1, failed))
    pairs.append((len(pairs) + 1, received("1.2.3.99", 0, T0 + timedelta(days=2), "ZZZ")))
    model = ReadModel(tmp_path / "admin.sqlite")
    model.apply(pairs, pairs[-1][0])

    page, total = model.query(StudyFilter(limit=5))
    assert total == 31
    assert [v.study_uid for v in page] == [
        "1.2.3.99",
        *[f"1.2.3.{n}" for n in (29, 28, 27, 26)],
    ]
    page, _ = model.query(StudyFilter(limit=5, offset=5))
    assert page[0].study_uid == "1.2.3.25"

    assert [v.study_uid for v in model.query(StudyFilter(state="failed"))[0]] == ["1.2.3.7"]
    assert model.query(StudyFilter(state="receiving"))[1] == 1
    by_destination = StudyFilter(destination=ARCHIVE, state="failed")
    assert [v.study_uid for v in model.query(by_destination)[0]] == ["1.2.3.7"]
    assert model.query(StudyFilter(destination=PACS, state="dispatched"))[1] == 30
    assert model.query(StudyFilter(core="default"))[1] == 30
    assert model.query(StudyFilter(core="other"))[1] == 0
    assert [v.accession_number for v in model.query(StudyFilter(q="ACC012"))[0]] == ["ACC012"]
    assert model.query(StudyFilter(q="1.2.3.99"))[1] == 1
    window = StudyFilter(since=T0 + timedelta(minutes=10), until=T0 + timedelta(minutes=20))
    assert model.query(window)[1] == 10
    assert model.state_counts() == {"dispatched": 29, "failed": 1, "receiving": 1}
    ready = model.results_ready_since(T0 + timedelta(minutes=28))
    assert [(r.study_uid, r.attempt) for r in ready] == [("1.2.3.28", 1), ("1.2.3.29", 1)]


def test_a_file_of_an_older_layout_is_started_again(tmp_path: Path) -> None:
    path = tmp_path / "admin.sqlite"
    model = ReadModel(path)
    pairs = numbered(many_studies(2))
    model.apply(pairs, pairs[-1][0])
    model._db.execute("UPDATE meta SET value = 'old' WHERE key = 'layout'")
    model.close()
    reopened = ReadModel(path)
    assert reopened.last_sequence == 0 and reopened.query(StudyFilter())[1] == 0


def test_the_ris_shows_as_a_destination() -> None:
    history = lifecycle(STUDY, T0, destinations=(PACS,))
    history.append(
        ev.Hl7Failed(
            study_uid=STUDY,
            core="default",
            attempt=1,
            ris="10.0.0.9:2575",
            control_id="c1",
            reason="AE: unknown order",
            tries=3,
            occurred_at=T0 + timedelta(minutes=2),
        )
    )
    view = fold(numbered(history))[STUDY]
    ris = view.destination("RIS 10.0.0.9:2575", "default")
    assert ris is not None and (ris.state, ris.reason) == ("failed", "AE: unknown order")
    assert view.state == "failed"
    sent = ev.Hl7Sent(
        study_uid=STUDY,
        core="default",
        attempt=1,
        ris="10.0.0.9:2575",
        control_id="c2",
        ack_code="AA",
        missing_findings=("smartxpert",),
    )
    view = fold(numbered([*history[:-1], sent]))[STUDY]
    ris = view.destination("RIS 10.0.0.9:2575", "default")
    assert ris is not None and (ris.state, ris.reason) == (
        "dispatched",
        "ACK AA, without smartxpert",
    )
    assert view.state == "dispatched"


def test_every_event_type_is_declared_by_the_view_and_worded() -> None:
    """A new event type the view neither applies nor declares as not shown, or that has no
    text, fails here, before a dashboard can show a finished study as in progress."""
    from pacsor.domain.event_text import events_worded
    from pacsor.domain.study_view import events_not_shown, events_shown

    catalogue = set(ev.catalogue())
    assert catalogue - events_shown() - set(events_not_shown) == set()
    assert not events_shown() & set(events_not_shown)
    assert catalogue - events_worded() == set()


def test_a_study_whose_instances_were_all_filtered_is_finished() -> None:
    """NothingToUpload ends the core: the study reads nothing_to_upload, not in progress; with
    a second core that dispatched, the study is as far as that core."""
    history = lifecycle(STUDY, T0, images=2, destinations=(PACS,))
    complete = next(e for e in history if isinstance(e, ev.StudyComplete))
    upto = history.index(complete) + 1
    filtered = ev.NothingToUpload(
        study_uid=STUDY,
        core="default",
        attempt=1,
        reason="all 2 instances filtered out: 2 filtered (Modality == SR)",
        skipped_count=2,
        occurred_at=T0 + timedelta(seconds=30),
    )
    view = fold(numbered([*history[:upto], filtered]))[STUDY]
    assert view.state == "nothing_to_upload"
    (core,) = view.cores
    assert (core.state, core.skipped_count) == ("nothing_to_upload", 2)
    assert "filtered" in core.reason
    assert [s.step for s in step_times(view)] == ["receive", "quiet period", "upload"]
    assert step_times(view)[-1].outcome == "nothing to upload"

    other = [
        msgspec.structs.replace(e, core="precert")  # type: ignore[type-var]
        for e in history[upto:]
    ]
    both = fold(numbered([*history[:upto], filtered, *other]))[STUDY]
    assert both.state == "dispatched"


def test_a_step_that_gave_up_makes_the_study_failed_until_a_new_attempt() -> None:
    history = lifecycle(STUDY, T0, images=2, destinations=(PACS,))
    gave_up = ev.StepFailed(
        study_uid=STUDY,
        step="study-completion",
        stream="PACSOR",
        message_sequence=3,
        reason="InvalidInput: bad",
        tries=1,
        occurred_at=T0 + timedelta(seconds=5),
    )
    received_only = [e for e in history if isinstance(e, ev.InstanceReceived)]
    view = fold(numbered([*received_only, gave_up]))[STUDY]
    assert view.state == "failed"
    assert [(f.step, f.reason) for f in view.step_failures] == [
        ("study-completion", "InvalidInput: bad")
    ]
    # The study completed and went through after that failure: it is no longer failed.
    later = [
        msgspec.structs.replace(e, occurred_at=e.occurred_at + timedelta(minutes=1))
        for e in history[len(received_only) :]
    ]  # type: ignore[type-var]
    assert fold(numbered([*received_only, gave_up, *later]))[STUDY].state == "dispatched"


def test_study_core_and_destination_never_disagree_and_send_again_delivers() -> None:
    history = lifecycle(STUDY, T0, destinations=(PACS, ARCHIVE))
    history[-1] = ev.DispatchFailed(
        study_uid=STUDY,
        core="default",
        attempt=1,
        destination=ARCHIVE,
        reason=f"{ARCHIVE}: 0 delivered, 6 not delivered (no answer); {ARCHIVE}: refused",
        tries=12,
        occurred_at=T0 + timedelta(minutes=5),
    )
    view = fold(numbered(history))[STUDY]
    assert view.state == "failed"
    assert view.cores[0].state == "failed"  # not "dispatched" beside a failed study
    assert view.cores[0].progress == "dispatched"
    archive = view.destination(ARCHIVE, "default")
    assert archive is not None and archive.state == "failed"
    assert archive.reason == "0 delivered, 6 not delivered (no answer); refused"
    key = {"study_uid": STUDY, "core": "default", "attempt": 1}
    again: list[ev.Event] = [
        ev.DispatchReplayRequested(
            **key, destination=ARCHIVE, replay_id="r", requested_by="me", since=T0
        )
    ]
    fold(numbered(again, start=100), {STUDY: view})
    assert archive.resending and view.state == "failed"
    fold(
        numbered(
            [ev.Dispatched(**key, destination=ARCHIVE, replay_id="r", object_count=1)],
            start=101,
        ),
        {STUDY: view},
    )
    assert (archive.state, archive.resending, archive.replays) == ("dispatched", False, 1)
    assert view.cores[0].state == "dispatched" and view.state == "dispatched"


def test_the_delivery_step_ends_when_every_destination_answered() -> None:
    history = lifecycle(STUDY, T0, destinations=(PACS, ARCHIVE))
    # Results ready, no destination answered yet: delivery is still going.
    partial = fold(numbered(history[:-2]))[STUDY]
    assert step_times(partial)[-1].step == "delivery" and step_times(partial)[-1].ended is None
    view = fold(numbered(history))[STUDY]
    times = {s.step: s for s in step_times(view)}
    assert times["delivery"].ended == history[-1].occurred_at
    assert times["AI"].seconds(T0) == (history[5].occurred_at - history[4].occurred_at).seconds


def test_cores_and_destinations_as_last_seen() -> None:
    peers: dict[tuple[str, str], PeerSeen] = {}
    history = lifecycle(STUDY, T0, destinations=(PACS,))
    failed = ev.DispatchFailed(
        study_uid="1.2.3",
        core="default",
        attempt=1,
        destination=PACS,
        reason=f"{PACS}: refused",
        occurred_at=T0 + timedelta(hours=1),
    )
    for event in [*history, failed]:
        see_peer(peers, event)
    core, pacs = peers[("core", "default")], peers[("destination", PACS)]
    assert core.state == "ok" and core.ok_at == history[5].occurred_at
    assert (pacs.state, pacs.reason, pacs.study) == ("failing", "refused", "1.2.3")
