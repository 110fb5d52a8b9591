"""The pure decisions: study completion, retry policy, subjects, events, dataset structure."""

from __future__ import annotations

import json
import struct
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from pydicom.uid import generate_uid

from pacsor.devtools.sample_study import make_image, to_bytes
from pacsor.dicom.structure import Truncated, check_whole
from pacsor.domain import events as ev
from pacsor.domain.completion import (
    HOLD_LEASE,
    AlreadyComplete,
    Complete,
    Hold,
    NothingReceived,
    WaitUntil,
    attempt_instances,
    decide_completion,
    decide_from_latest,
    redelivery_delay,
)
from pacsor.domain.dispatch import Progress, is_permanent_refusal, outcome, record_try, to_send
from pacsor.domain.events import RecordedEvent
from pacsor.domain.retry import RetryPolicy
from pacsor.jetstream.quiet_timers import schedule_time
from pacsor.jetstream.subjects import event_subject, study_subjects, uid_from_token, uid_token

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
QUIET = timedelta(seconds=10)
STUDY = "1.2.826.0.1.3680043.8.498.1"


def received(sop: str, at: datetime, digest: str = "SHA-256=a") -> ev.InstanceReceived:
    return ev.InstanceReceived(
        study_uid=STUDY,
        series_instance_uid="1.2.3",
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        object_name=f"{STUDY}/{sop}",
        size=10,
        digest=digest,
        occurred_at=at,
    )


def history(*events: ev.AnyEvent) -> list[RecordedEvent]:
    return [RecordedEvent(n + 1, event_subject(e), e) for n, e in enumerate(events)]


def test_nothing_received() -> None:
    assert isinstance(decide_completion(STUDY, [], T0, QUIET), NothingReceived)


def test_waits_for_the_quiet_period_after_the_last_instance() -> None:
    h = history(received("1.1", T0), received("1.2", T0 + timedelta(seconds=5)))
    decision = decide_completion(STUDY, h, T0 + timedelta(seconds=12), QUIET)
    assert decision == WaitUntil(T0 + timedelta(seconds=15))


def test_the_latest_arrival_and_completion_decide_without_the_history() -> None:
    first, last = history(received("1.1", T0), received("1.2", T0 + timedelta(seconds=5)))
    # An arrival within the quiet period: wait.
    assert decide_from_latest(last, None, T0 + timedelta(seconds=12), QUIET) == WaitUntil(
        T0 + timedelta(seconds=15)
    )
    later = T0 + timedelta(seconds=15)
    complete = ev.StudyComplete(
        study_uid=STUDY, attempt=1, instance_count=2, through_sequence=last.sequence
    )
    [recorded] = [RecordedEvent(3, event_subject(complete), complete)]
    # The last attempt holds the last arrival: already complete.
    assert decide_from_latest(last, recorded, later, QUIET) == AlreadyComplete(1)
    # Never completed, an arrival after the attempt, or nothing received: the history decides.
    assert decide_from_latest(last, None, later, QUIET) is None
    behind = msgspec.structs.replace(complete, through_sequence=first.sequence)
    stale = RecordedEvent(3, event_subject(behind), behind)
    assert decide_from_latest(last, stale, later, QUIET) is None
    assert decide_from_latest(None, None, T0, QUIET) is None


def test_completes_once_with_every_instance_once() -> None:
    h = history(
        received("1.1", T0), received("1.2", T0), received("1.1", T0 + timedelta(seconds=1))
    )
    decision = decide_completion(STUDY, h, T0 + timedelta(seconds=11), QUIET)
    assert isinstance(decision, Complete)
    assert decision.event.attempt == 1
    assert decision.expected_last_subject_sequence == 0
    assert decision.event.instance_count == 2 and decision.event.through_sequence == 3
    instances = attempt_instances(h, decision.event.through_sequence)
    assert [i.sop_instance_uid for i in instances] == ["1.2", "1.1"]  # in the order recorded

    done = history(*(r.event for r in h), decision.event)
    assert decide_completion(STUDY, done, T0 + timedelta(seconds=30), QUIET) == AlreadyComplete(1)


def test_a_timer_that_fired_early_waits_the_rest_as_a_redelivery() -> None:
    within = timedelta(milliseconds=500)
    due = WaitUntil(T0 + timedelta(milliseconds=240))
    assert redelivery_delay(due, T0, within) == pytest.approx(0.24)
    # Already due by the time it is looked at: redelivered at once, never a negative delay.
    assert redelivery_delay(due, T0 + timedelta(seconds=1), within) == pytest.approx(0.001)
    # A longer wait (an instance arrived since) is a timer armed again.
    assert redelivery_delay(WaitUntil(T0 + timedelta(seconds=3)), T0, within) is None
    # A stale hold's first look: its time is carried by the timer's payload, so a new timer.
    checking = WaitUntil(T0 + timedelta(milliseconds=100), "checking a stale hold", T0)
    assert redelivery_delay(checking, T0, within) is None


def test_the_schedule_is_written_to_the_millisecond_never_before_its_time() -> None:
    assert schedule_time(T0) == "2026-01-01T12:00:00.000Z"
    assert schedule_time(T0 + timedelta(milliseconds=123)) == "2026-01-01T12:00:00.123Z"
    assert schedule_time(T0 + timedelta(microseconds=1)) == "2026-01-01T12:00:00.001Z"
    assert schedule_time(T0 - timedelta(microseconds=500)) == "2026-01-01T12:00:00.000Z"


def test_new_instances_after_completion_make_attempt_two() -> None:
    first = decide_completion(STUDY, history(received("1.1", T0)), T0 + QUIET, QUIET)
    assert isinstance(first, Complete)
    later = T0 + timedelta(minutes=5)
    h = history(received("1.1", T0), first.event, received("1.2", later))
    second = decide_completion(STUDY, h, later + QUIET, QUIET)
    assert isinstance(second, Complete)
    assert second.event.attempt == 2
    assert second.expected_last_subject_sequence == 2
    assert (second.event.instance_count, second.event.through_sequence) == (2, 3)
    assert {i.sop_instance_uid for i in attempt_instances(h, 3)} == {"1.1", "1.2"}
    assert [i.sop_instance_uid for i in attempt_instances(h, 1)] == ["1.1"]  # attempt 1's


def test_retry_policy_backs_off_and_gives_up() -> None:
    policy = RetryPolicy(initial_seconds=2, max_seconds=30, max_attempts=5)
    assert [policy.delay_after(n) for n in range(1, 6)] == [2, 4, 8, 16, None]
    assert policy.delay_after(1, at_least=10) == 10
    assert policy.delay_after(4, at_least=1000) == 30


def test_uid_tokens_round_trip_and_subjects_hold_the_study() -> None:
    assert uid_token("1.2.840.10008") == "1_2_840_10008"
    assert uid_from_token(uid_token("1.2.840.10008")) == "1.2.840.10008"
    with pytest.raises(ValueError):
        uid_token("1.2.abc")
    e = ev.Uploaded(study_uid="1.2.3", core="default", attempt=1, instance_count=2)
    assert event_subject(e) == "pacsor.study.1_2_3.default.uploaded"
    assert study_subjects("1.2.3") == "pacsor.study.1_2_3.>"


def test_events_are_readable_json_with_type_and_version() -> None:
    event = ev.StudyComplete(
        study_uid=STUDY, attempt=1, instance_count=3, through_sequence=9, occurred_at=T0
    )
    body = msgspec.json.decode(ev.encode(event))
    assert body["type"] == "StudyComplete"
    assert body["schema_version"] == 2  # StudyComplete's own: no instance list since schema 2
    assert body["study_instance_uid"] == STUDY
    assert body["occurred_at"] == "2026-01-01T12:00:00Z"
    assert ev.decode(ev.encode(event)) == event
    with pytest.raises(msgspec.ValidationError):
        ev.decode(b'{"type": "StudyComplete", "study_instance_uid": "1.2"}')
    with pytest.raises(AttributeError):
        event.attempt = 2  # type: ignore[misc]


def test_outcome_events_of_one_attempt_share_an_idempotency_key() -> None:
    ok = ev.Dispatched(study_uid=STUDY, core="c", attempt=1, destination="P@h:1")
    ko = ev.DispatchFailed(
        study_uid=STUDY, core="c", attempt=1, destination="P@h:1", reason="x", tries=3
    )
    assert ok.idempotency_key() == ko.idempotency_key()
    assert (
        ok.idempotency_key()
        != ev.Dispatched(
            study_uid=STUDY, core="c", attempt=2, destination="P@h:1"
        ).idempotency_key()
    )


def test_truncated_datasets_are_detected() -> None:
    data = to_bytes(make_image(generate_uid()))
    body = data[144 + struct.unpack("<I", data[140:144])[0] :]
    check_whole(body, implicit_vr=False)
    for cut in (3, 200, len(body) // 2, len(body) - 1):
        with pytest.raises(Truncated):
            check_whole(body[:cut], implicit_vr=False)


def test_result_objects_are_identified_or_refused() -> None:
    from pacsor.consumers.result_poller import identify_result

    from pacsor.dicom.header import HeaderError, parse_header

    ds = make_image(STUDY)
    header = parse_header(to_bytes(ds), complete=True)
    assert header is not None
    identity = identify_result(header.dataset)
    assert (identity.study_uid, identity.sop_instance_uid) == (STUDY, ds.SOPInstanceUID)
    with pytest.raises(HeaderError, match="not a readable DICOM"):
        parse_header(b"<html>502 Bad Gateway</html>", complete=True)


def hold(heartbeat: datetime, associations: int = 1, released: datetime | None = None) -> Hold:
    return Hold(
        holder="scp-1", associations=associations, heartbeat_at=heartbeat, released_at=released
    )


def test_an_open_association_holds_the_study_past_its_quiet_period() -> None:
    h = history(received("1.1", T0))
    now = T0 + timedelta(seconds=30)
    held = decide_completion(STUDY, h, now, QUIET, [hold(now - timedelta(seconds=1))])
    assert isinstance(held, WaitUntil) and held.at > now and held.holds_checked_at is None
    # Closed: the quiet period runs from when the last association sending it closed.
    closed = [hold(T0, associations=0, released=now - timedelta(seconds=4))]
    assert decide_completion(STUDY, h, now, QUIET, closed) == WaitUntil(now + timedelta(seconds=6))
    later = now + timedelta(seconds=6)
    assert isinstance(decide_completion(STUDY, h, later, QUIET, closed), Complete)


def test_a_stale_hold_is_looked_at_twice_before_it_is_presumed_dead() -> None:
    """After an outage of JetStream every hold looks stale until its SCP refreshes it; a hold
    still not refreshed one lease after it was first seen stale was left by a dead SCP."""
    h = history(received("1.1", T0))
    stale = hold(T0 + timedelta(seconds=1))
    first_look = T0 + timedelta(minutes=5)
    first = decide_completion(STUDY, h, first_look, QUIET, [stale])
    assert first == WaitUntil(first_look + HOLD_LEASE, "checking a stale hold", first_look)
    second_look = first_look + HOLD_LEASE
    refreshed = hold(first_look + timedelta(seconds=1))
    assert isinstance(
        decide_completion(STUDY, h, second_look, QUIET, [refreshed], first_look), WaitUntil
    )
    assert isinstance(
        decide_completion(STUDY, h, second_look, QUIET, [stale], first_look), Complete
    )


def test_dispatch_progress_settles_each_object_once() -> None:
    sops = ["1", "2", "3", "4"]
    first = record_try(Progress(), [("1", 0x0000), ("2", 0xC000), ("3", 0xA700), ("4", -1)])
    assert to_send(sops, first) == ["3", "4"]
    second = record_try(first, [("3", 0xB000), ("4", 0xA702), ("1", 0xC000)])
    assert second.tries == 2 and second.delivered == {"1": 0x0000, "3": 0xB000}
    assert to_send(sops, second) == ["4"]
    result = outcome(sops, second)
    assert [(o.sop_instance_uid, o.status) for o in result.refused] == [("2", 0xC000)]
    assert [(o.sop_instance_uid, o.status) for o in result.undelivered] == [("4", 0xA702)]
    assert result.summary() == "2 delivered, 1 refused (0xC000), 1 not delivered (0xA702)"
    assert is_permanent_refusal(0xA900) and is_permanent_refusal(0x0122)
    assert not is_permanent_refusal(0xA700) and not is_permanent_refusal(-1)


def test_events_read_as_one_line_naming_the_core_and_attempt() -> None:
    from pacsor.domain.event_text import describe

    uploaded = ev.Uploaded(study_uid="1.2.3", core="preprod", attempt=2, instance_count=3)
    failed = ev.DispatchFailed(
        study_uid="1.2.3",
        core="default",
        attempt=1,
        destination="PACS@10.0.0.5:104",
        reason="0xC000 for 1 object",
        tries=4,
    )
    assert describe(uploaded).endswith("1.2.3  preprod attempt 2, 3 instances")
    assert describe(failed).endswith(
        "default attempt 1 to PACS@10.0.0.5:104 after 4 tries: 0xC000 for 1 object"
    )


def _v1_result(n: int) -> dict[str, object]:
    return {
        "inference_command": "smarturgences",
        "sop_instance_uid": f"1.2.3.{n}",
        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.7",
        "object_name": f"{STUDY}/c/1/1.2.3.{n}",
        "size": 10,
    }


def test_schema_1_result_and_dispatch_events_still_read() -> None:
    """Bytes as the previous version wrote them, lists and all, come out in today's shape."""
    head = {"study_instance_uid": STUDY, "core": "c", "attempt": 1, "schema_version": 1}
    listed = [_v1_result(n) for n in range(3)]
    ready = ev.decode(json.dumps({"type": "ResultReady", **head, "results": listed}).encode())
    assert isinstance(ready, ev.ResultReady)
    assert (ready.result_count, ready.result_pages, len(ready.results)) == (3, 0, 3)
    assert ready.results_digest == ev.results_digest(ready.results)
    # A schema 1 ResultReady is its own list: nothing to read back.
    assert ev.assemble_results(ready, ()) == ready.results

    dest = {**head, "destination": "P@h:1"}
    uids = ["1.2.3.0", "1.2.3.1", "1.2.3.2"]
    done = ev.decode(json.dumps({"type": "Dispatched", **dest, "sop_instance_uids": uids}).encode())
    assert isinstance(done, ev.Dispatched) and done.object_count == 3

    status = [{"sop_instance_uid": u, "status": 0} for u in uids[:2]]
    failed = ev.decode(
        json.dumps(
            {
                "type": "DispatchFailed",
                **dest,
                "reason": "x",
                "delivered_sop_instance_uids": uids[:2],
                "delivered": status,
                "refused": [{"sop_instance_uid": uids[2], "status": 0xC000}],
            }
        ).encode()
    )
    assert isinstance(failed, ev.DispatchFailed)
    assert (failed.delivered_count, failed.refused_count, failed.undelivered_count) == (2, 1, 0)
    assert failed.refused[0].status == 0xC000


def test_a_result_list_of_any_length_is_paged_and_read_back_whole() -> None:
    key = ev.AttemptKey(study_uid=STUDY, core="c", attempt=1)
    objects = [msgspec.convert(_v1_result(n), ev.ResultObject) for n in range(4_000)]
    pages, digest = ev.list_results(key, objects)
    assert len(pages) == 16 and [p.part for p in pages] == list(range(1, 17))
    assert max(len(ev.encode(p)) for p in pages) < 100_000
    ready = ev.ResultReady(**key, result_count=4_000, results_digest=digest, result_pages=16)
    assert len(ev.encode(ready)) < 1024  # whatever the number of results
    # Pages come back in any order, repeated; another list's pages are left out.
    other, _ = ev.list_results(key, objects[:10])
    assert ev.assemble_results(ready, [*reversed(pages), pages[0], *other]) == tuple(objects)
    with pytest.raises(ev.ResultListIncomplete, match="1 of 16 result pages not found"):
        ev.assemble_results(ready, pages[:7] + pages[8:])
    altered = msgspec.structs.replace(pages[3], results=pages[3].results[:-1])
    with pytest.raises(ev.ResultListIncomplete, match="digest"):
        ev.assemble_results(ready, [*pages[:3], altered, *pages[4:]])
    # Dispatched and DispatchFailed count, whatever the number of objects.
    failed = ev.DispatchFailed(
        **key,
        destination="P@h:1",
        reason="x",
        refused_count=4_000,
        refused=tuple(
            ev.ObjectStatus(sop_instance_uid=o.sop_instance_uid, status=0xC000) for o in objects
        )[: ev.STATUS_SAMPLE],
    )
    assert len(ev.encode(failed)) < 10_000


def test_a_ready_result_is_polled_soon_and_a_long_one_at_the_interval() -> None:
    from pacsor.domain.retry import poll_delay

    assert [poll_delay(n, 3.0) for n in range(1, 7)] == [0.25, 0.5, 1.0, 2.0, 3.0, 3.0]
    assert poll_delay(1, 0.2) == 0.2  # never beyond the interval
