"""A destination's progress is kept by position in the result list: small whatever the count."""

from __future__ import annotations

import msgspec

from pacsor.domain.dispatch import Progress, pack, record_try, unpack

# As pydicom makes them (its prefix, then digits up to 64 characters), as the AI returns them.
UIDS = [f"1.2.826.0.1.3680043.8.498.{n:038d}" for n in range(20_000)]


def test_packing_keeps_every_answer() -> None:
    answers = [(sop, 0x0000) for sop in UIDS[:9_000]]
    answers += [(UIDS[9_000], 0xB007), (UIDS[9_001], 0xC000), (UIDS[9_002], 0xA700)]
    answers += [(sop, 0x0000) for sop in UIDS[9_010:]]
    progress = record_try(Progress(), answers, ["a note"])
    assert unpack(pack(progress, UIDS), UIDS) == progress


def test_a_study_of_20000_results_delivered_is_a_few_bytes() -> None:
    progress = record_try(Progress(), [(sop, 0x0000) for sop in UIDS])
    stored = msgspec.json.encode(pack(progress, UIDS))
    assert len(stored) < 200, stored
    # Keyed by UID, the same progress was over 1 MB: more than a NATS message may hold.
    assert len(msgspec.json.encode(progress)) > 1_000_000


def test_every_result_refused_stays_under_a_message() -> None:
    progress = record_try(Progress(), [(sop, 0xA900) for sop in UIDS])
    assert len(msgspec.json.encode(pack(progress, UIDS))) < 300_000


def test_an_answer_for_an_object_not_in_the_list_is_not_kept() -> None:
    progress = record_try(Progress(), [("9.9.9", 0x0000), (UIDS[0], 0x0000)])
    assert unpack(pack(progress, UIDS[:2]), UIDS[:2]).delivered == {UIDS[0]: 0}
