"""What stored DICOM objects of a study may be removed now: a pure decision from its view.

- The received instances, RETENTION_HOURS after the last one arrived. A relaunch needs them,
  so it works within that time and not after.
- The result objects of each core and attempt, RETENTION_HOURS after they were made ready.
- With output cleaning, the result objects of a core and attempt as soon as every destination
  has them (or has a newer attempt), as the original gateway does.

Each removal is then recorded as an ObjectsExpired event saying why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

import msgspec

from pacsor.domain.study_view import StudyView


class Removal(msgspec.Struct, frozen=True):
    kind: str  # "instances" or "results"
    reason: str
    core: str = ""
    attempt: int = 0


def removals_due(
    view: StudyView,
    now: datetime,
    retention: timedelta,
    destinations: Mapping[str, Sequence[str]],
    output_cleaning: bool,
) -> list[Removal]:
    """`destinations`: each core's destinations (AET@host:port), for output cleaning."""
    hours = f"{retention.total_seconds() / 3600:g} h"
    due: list[Removal] = []
    if (
        view.instances_stored
        and view.last_received_at is not None
        and view.last_received_at + retention <= now
    ):
        due.append(Removal("instances", f"retention: last instance received over {hours} ago"))
    for made in view.results_made:
        if made.removed:
            continue
        if made.at + retention <= now:
            reason = f"retention: results made ready over {hours} ago"
        elif output_cleaning and _everywhere(
            view, made.core, made.attempt, destinations.get(made.core, ())
        ):
            reason = "output cleaning: delivered to every destination"
        else:
            continue
        due.append(Removal("results", reason, made.core, made.attempt))
    return due


def _everywhere(view: StudyView, core: str, attempt: int, destinations: Sequence[str]) -> bool:
    if not destinations:
        return False
    for name in destinations:
        dest = view.destination(name, core)
        if dest is None or dest.attempt < attempt:
            return False
        if dest.attempt == attempt and dest.state != "dispatched":
            return False
    return True
