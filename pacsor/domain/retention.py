"""What stored DICOM objects of a study may be removed now: a pure decision from its view.

- The received instances, RETENTION_HOURS after the last one arrived. A relaunch needs them,
  so it works within that time and not after.
- The result objects of each core and attempt, RETENTION_HOURS after they were made ready.
- With output cleaning, the result objects of a core and attempt as soon as every destination
  has them (or has a newer attempt), as the original gateway does.
- With output cleaning, everything a study holds (instances and results) once its latest
  attempt has been failed for the failure delay, as the original (2.8.0) cleaned studies that
  ended in an error. A relaunch within the delay makes the study no longer failed.

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
    failed_delay: timedelta | None = None,
) -> list[Removal]:
    """`destinations`: each core's destinations (AET@host:port), for output cleaning;
    `failed_delay`: how long a failed study keeps its objects under output cleaning."""
    hours = f"{retention.total_seconds() / 3600:g} h"
    failed = None
    if output_cleaning and failed_delay is not None:
        since = failed_since(view)
        if since is not None and since + failed_delay <= now:
            failed = (
                f"output cleaning: the study failed over "
                f"{failed_delay.total_seconds() / 3600:g} h ago"
            )
    due: list[Removal] = []
    if view.instances_stored:
        if view.last_received_at is not None and view.last_received_at + retention <= now:
            due.append(Removal("instances", f"retention: last instance received over {hours} ago"))
        elif failed:
            due.append(Removal("instances", failed))
    for made in view.results_made:
        if made.removed:
            continue
        if made.at + retention <= now:
            reason = f"retention: results made ready over {hours} ago"
        elif output_cleaning and _everywhere(
            view, made.core, made.attempt, destinations.get(made.core, ())
        ):
            reason = "output cleaning: delivered to every destination"
        elif failed:
            reason = failed
        else:
            continue
        due.append(Removal("results", reason, made.core, made.attempt))
    return due


def failed_since(view: StudyView) -> datetime | None:
    """When the study's latest attempt last failed (a core or a destination), or None when
    that attempt is not failed."""
    if view.state != "failed":
        return None
    times = [
        c.failed_at
        for c in view.cores
        if c.attempt == view.attempt and c.state == "failed" and c.failed_at is not None
    ]
    times += [
        d.at
        for d in view.destinations
        if d.attempt == view.attempt and d.state == "failed" and d.at is not None
    ]
    return max(times, default=view.updated_at)


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
