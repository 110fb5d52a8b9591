"""Which instances of an attempt go to an AI core, and why the others do not: pure decisions.

For each instance, in order:

- one already uploaded to this core in this attempt (a retry, a restart) is done;
- with NO_DUPLICATE_UPLOAD, one uploaded to this core by an earlier attempt with the same
  digest is skipped ("already uploaded"), unless a person asked for a full relaunch;
- one whose header cannot be read is skipped ("unreadable");
- one that the core's DICOM filters reject is skipped ("filtered"), with the rule;
- the others are sent.

The first two need nothing but the history (`before_reading`); the others need the header's
tag values, which the uploader reads from the object store (`after_reading`). The attempt
ends in NothingToUpload when every instance was filtered out (`conclusion`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

import msgspec

from pacsor.domain.events import InstanceRef, SkippedInstance
from pacsor.domain.filters import FilterRule, skipping_rule


class SkipKind(enum.Enum):
    ALREADY_UPLOADED = "already uploaded"
    UNREADABLE = "unreadable"
    FILTERED = "filtered"


class Skip(msgspec.Struct, frozen=True):
    kind: SkipKind
    detail: str = ""  # the filter rule, or why the header could not be read

    def record(self, instance: InstanceRef) -> SkippedInstance:
        """How the skip is recorded in InstancesSkipped."""
        if self.kind is SkipKind.UNREADABLE:
            reason, rule = f"unreadable: {self.detail}", ""
        else:
            reason, rule = self.kind.value, self.detail
        return SkippedInstance(sop_instance_uid=instance.sop_instance_uid, reason=reason, rule=rule)

    def label(self) -> str:
        return f"{self.kind.value} ({self.detail})" if self.detail else self.kind.value


class Done(msgspec.Struct, frozen=True):
    """Uploaded to this core earlier in this attempt: nothing to do again."""


class Send(msgspec.Struct, frozen=True):
    pass


DONE = Done()
SEND = Send()
Verdict = Done | Skip | Send


class CoreProgress(msgspec.Struct, frozen=True):
    """What a core's InstancesUploaded events say: in this attempt, and before it."""

    this_attempt: frozenset[str] = frozenset()  # SOP Instance UIDs
    before: frozenset[tuple[str, str]] = frozenset()  # (SOP Instance UID, digest)
    batches: int = 0  # batches of this attempt already recorded


class TriagePolicy(msgspec.Struct, frozen=True, kw_only=True):
    filters: tuple[FilterRule, ...] = ()
    # NO_DUPLICATE_UPLOAD, and not a relaunch by a person (which uploads everything again).
    dedupe: bool = True
    signed_url: bool = False

    @property
    def tags(self) -> frozenset[int]:
        return frozenset(rule.tag for rule in self.filters)

    @property
    def needs_header(self) -> bool:
        """Whether an instance to send must be read first (filters, or its pixel-less copy)."""
        return self.signed_url or bool(self.filters)


def before_reading(
    instance: InstanceRef, progress: CoreProgress, policy: TriagePolicy
) -> Done | Skip | None:
    """The verdict the history alone gives; None: read the header (or send, if not needed)."""
    if instance.sop_instance_uid in progress.this_attempt:
        return DONE
    if policy.dedupe and (instance.sop_instance_uid, instance.digest) in progress.before:
        return Skip(SkipKind.ALREADY_UPLOADED)
    return None


def after_reading(
    policy: TriagePolicy, tag_values: Mapping[int, str] | None, unreadable: str = ""
) -> Skip | Send:
    """The verdict once the header's `tag_values` are known (None: it could not be read)."""
    if tag_values is None:
        return Skip(SkipKind.UNREADABLE, unreadable)
    rule = skipping_rule(policy.filters, tag_values) if policy.filters else None
    if rule is not None:
        return Skip(SkipKind.FILTERED, str(rule))
    return SEND


class NothingSent(msgspec.Struct, frozen=True):
    reason: str


class SomeSent(msgspec.Struct, frozen=True):
    pass


def conclusion(total: int, uploaded: int, skips: Mapping[Skip, int]) -> NothingSent | SomeSent:
    """NothingToUpload when every one of the attempt's `total` instances was filtered out;
    `skips` counts each kind of skip (with its rule or detail)."""
    filtered = sum(n for skip, n in skips.items() if skip.kind is SkipKind.FILTERED)
    if uploaded == 0 and total > 0 and filtered == total:
        detail = "; ".join(f"{n} {skip.label()}" for skip, n in skips.items())
        return NothingSent(f"all {total} instances filtered out: {detail}")
    return SomeSent()
