"""The uploader's triage, as a pure function: which instances go, and why the others do not."""

from __future__ import annotations

import json

from pacsor.domain.events import InstanceRef
from pacsor.domain.filters import parse_filters
from pacsor.domain.upload_triage import (
    DONE,
    SEND,
    CoreProgress,
    NothingSent,
    Skip,
    SkipKind,
    SomeSent,
    TriagePolicy,
    after_reading,
    before_reading,
    conclusion,
)

MODALITY = 0x00080060
# Keep CT only: an instance whose Modality does not match is skipped.
ONLY_CT = parse_filters(
    json.dumps(
        [{"tag": {"group": "0008", "element": "0060"}, "pattern": "^CT$", "should_match": True}]
    )
)


def ref(sop: str, digest: str = "d1") -> InstanceRef:
    return InstanceRef(
        sop_instance_uid=sop,
        series_instance_uid="1.5",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        object_name=f"o/{sop}",
        size=10,
        digest=digest,
    )


def test_the_history_settles_what_was_uploaded() -> None:
    progress = CoreProgress(this_attempt=frozenset({"1.1"}), before=frozenset({("1.2", "d1")}))
    policy = TriagePolicy()
    assert before_reading(ref("1.1"), progress, policy) == DONE
    assert before_reading(ref("1.2"), progress, policy) == Skip(SkipKind.ALREADY_UPLOADED)
    # A new version of an instance uploaded before is uploaded again.
    assert before_reading(ref("1.2", digest="d2"), progress, policy) is None
    # A relaunch by a person (no dedupe) uploads it again too.
    assert before_reading(ref("1.2"), progress, TriagePolicy(dedupe=False)) is None
    assert before_reading(ref("1.3"), progress, policy) is None


def test_the_header_decides_the_rest() -> None:
    policy = TriagePolicy(filters=ONLY_CT)
    assert policy.needs_header and policy.tags == frozenset({MODALITY})
    assert after_reading(policy, {MODALITY: "CT"}) == SEND
    skip = after_reading(policy, {MODALITY: "SR"})
    assert isinstance(skip, Skip) and skip.kind is SkipKind.FILTERED and skip.detail
    unreadable = after_reading(policy, None, "truncated header")
    assert unreadable == Skip(SkipKind.UNREADABLE, "truncated header")
    assert unreadable.record(ref("1.9")).reason == "unreadable: truncated header"
    assert not TriagePolicy().needs_header and TriagePolicy(signed_url=True).needs_header


def test_nothing_to_upload_only_when_every_instance_was_filtered() -> None:
    filtered = Skip(SkipKind.FILTERED, "rule 1")
    decided = conclusion(3, 0, {filtered: 3})
    assert isinstance(decided, NothingSent) and decided.reason.startswith("all 3 instances")
    # Filtered and already uploaded: the AI has the study, this is an upload.
    assert isinstance(conclusion(3, 0, {filtered: 2, Skip(SkipKind.ALREADY_UPLOADED): 1}), SomeSent)
    assert isinstance(conclusion(3, 1, {filtered: 2}), SomeSent)
    assert isinstance(conclusion(0, 0, {}), SomeSent)
