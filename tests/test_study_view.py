"""The study view fold (pure, no NATS) and its SQLite read model."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec

from pacsor.admin.read_model import ReadModel, StudyFilter
from pacsor.devtools.sample_events import lifecycle, received
from pacsor.domain import events as ev
from pacsor.domain.event_text import detail
from pacsor.domain.study_view import (
    NOT_IN_VIEW,
    PeerSeen,
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
        study_instance_uid=STUDY,
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
        study_instance_uid=STUDY,
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


def test_rejections_are_counted_and_unknown_studies_ignored() -> None:
    rejected = [
        ev.InstanceRejected(
            study_instance_uid=uid,
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
        study_instance_uid="1.2.3.7",
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
    assert [v.study_instance_uid for v in page] == [
        "1.2.3.99",
        *[f"1.2.3.{n}" for n in (29, 28, 27, 26)],
    ]
    page, _ = model.query(StudyFilter(limit=5, offset=5))
    assert page[0].study_instance_uid == "1.2.3.25"

    assert [v.study_instance_uid for v in model.query(StudyFilter(state="failed"))[0]] == [
        "1.2.3.7"
    ]
    assert model.query(StudyFilter(state="receiving"))[1] == 1
    by_destination = StudyFilter(destination=ARCHIVE, state="failed")
    assert [v.study_instance_uid for v in model.query(by_destination)[0]] == ["1.2.3.7"]
    assert model.query(StudyFilter(destination=PACS, state="dispatched"))[1] == 30
    assert model.query(StudyFilter(core="default"))[1] == 30
    assert model.query(StudyFilter(core="other"))[1] == 0
    assert [v.accession_number for v in model.query(StudyFilter(q="ACC012"))[0]] == ["ACC012"]
    assert model.query(StudyFilter(q="1.2.3.99"))[1] == 1
    window = StudyFilter(since=T0 + timedelta(minutes=10), until=T0 + timedelta(minutes=20))
    assert model.query(window)[1] == 10
    assert model.state_counts() == {"dispatched": 29, "failed": 1, "receiving": 1}
    ready = model.results_ready_since(T0 + timedelta(minutes=28))
    assert [(r.study_instance_uid, r.attempt) for r in ready] == [("1.2.3.28", 1), ("1.2.3.29", 1)]


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
            study_instance_uid=STUDY,
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
        study_instance_uid=STUDY,
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


# --- one clear state, every event type ------------------------------------------------------


def plain_value(kind: msgspec.inspect.Type) -> object:
    """A value of a field's type: one item in each list, each Struct filled in."""
    mi = msgspec.inspect
    if isinstance(kind, mi.VarTupleType | mi.ListType):
        return [plain_value(kind.item_type)]
    if isinstance(kind, mi.StructType):
        return {f.encode_name: plain_value(f.type) for f in kind.fields if f.required}
    return {mi.IntType: 1, mi.DateTimeType: T0.isoformat()}.get(type(kind), "x")


def example(kind: type[ev.Event]) -> ev.Event:
    """An instance of any event type, its required fields given plain values; of the
    study, core and destination that `lifecycle` made."""
    values: dict[str, object] = {
        "study_instance_uid": STUDY,
        "occurred_at": (T0 + timedelta(hours=1)).isoformat(),
        "core": "default",
        "attempt": 1,
        "destination": PACS,
    }
    info = msgspec.inspect.type_info(kind)
    assert isinstance(info, msgspec.inspect.StructType)
    for field in info.fields:
        if field.required and field.encode_name not in values:
            values[field.encode_name] = plain_value(field.type)
    return msgspec.convert(values, kind)


def test_every_event_type_is_applied_or_listed_as_not_in_the_view() -> None:
    """A new event type the view neither applies nor lists fails here."""
    assert not NOT_IN_VIEW - set(ev.EVENT_TYPES)
    base = lifecycle(STUDY, T0, destinations=(PACS,))
    for kind in ev.EVENT_TYPES:
        before = fold(numbered(base))[STUDY]
        after = fold(numbered([example(kind)], start=100), {STUDY: fold(numbered(base))[STUDY]})[
            STUDY
        ]
        ignore = {"event_count", "last_sequence", "updated_at"}
        changed = {
            name
            for name in before.__struct_fields__
            if name not in ignore and getattr(before, name) != getattr(after, name)
        }
        if kind in NOT_IN_VIEW:
            assert not changed, f"{kind.__name__} changes the view but is listed in NOT_IN_VIEW"
            assert detail(example(kind)), f"{kind.__name__}: the timeline says nothing of it"
        else:
            assert changed, f"{kind.__name__} is neither applied nor listed in NOT_IN_VIEW"


def test_a_study_whose_instances_were_all_filtered_is_finished() -> None:
    history = lifecycle(STUDY, T0)[:4]  # three instances and StudyComplete
    history.append(
        ev.NothingToUpload(
            study_instance_uid=STUDY,
            core="default",
            attempt=1,
            reason="all 3 instances filtered out",
            skipped_count=3,
            occurred_at=T0 + timedelta(seconds=20),
        )
    )
    view = fold(numbered(history))[STUDY]
    assert view.state == "finished"
    assert view.cores[0].state == "finished"
    assert view.cores[0].reason == "nothing to upload: all 3 instances filtered out"
    assert [s.step for s in step_times(view)] == ["receive", "quiet period", "upload"]
    assert step_times(view)[-1].outcome == "nothing to upload"
    # With a second core that did deliver, the study is dispatched, not finished.
    other = lifecycle(STUDY, T0, core="second")[4:]
    assert fold(numbered(other, start=50), {STUDY: view})[STUDY].state == "dispatched"


def test_a_step_that_gave_up_fails_the_study_until_a_new_attempt() -> None:
    history: list[ev.Event] = [received(STUDY, 0, T0)]
    history.append(
        ev.StepFailed(
            study_instance_uid=STUDY,
            step="completion",
            stream="PACSOR",
            message_sequence=1,
            reason="boom",
            tries=12,
            occurred_at=T0 + timedelta(minutes=1),
        )
    )
    view = fold(numbered(history))[STUDY]
    assert view.state == "failed"
    assert view.step_failure == "completion gave up after 12 tries: boom"
    fold(numbered(lifecycle(STUDY, T0 + timedelta(hours=1))[3:], start=10), {STUDY: view})
    assert view.state == "dispatched" and view.step_failure == ""


def test_study_core_and_destination_never_disagree_and_send_again_delivers() -> None:
    history = lifecycle(STUDY, T0, destinations=(PACS, ARCHIVE))
    history[-1] = ev.DispatchFailed(
        study_instance_uid=STUDY,
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
    key = {"study_instance_uid": STUDY, "core": "default", "attempt": 1}
    again: list[ev.Event] = [
        ev.DispatchReplayRequested(
            **key, destination=ARCHIVE, replay_id="r", requested_by="me", since=T0
        )
    ]
    fold(numbered(again, start=100), {STUDY: view})
    assert archive.resending and view.state == "failed"
    fold(
        numbered(
            [ev.Dispatched(**key, destination=ARCHIVE, replay_id="r", sop_instance_uids=("1",))],
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
        study_instance_uid="1.2.3",
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
