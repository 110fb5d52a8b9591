"""How the dashboard writes values for people: DICOM dates, short UIDs, durations, times.

Pure functions, registered as Jinja filters by `register`.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

UID_TAIL = 14
_DICOM_DATE = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
_DICOM_TIME = re.compile(r"^(\d{2})(\d{2})?(\d{2})?(\.\d+)?$")
_LONG_UID = re.compile(r"\b\d+(?:\.\d+){3,}\b")


def dicom_date(value: str) -> str:
    """DA `20261201` as 2026-12-01; anything else as it came."""
    match = _DICOM_DATE.match(value.strip())
    return "-".join(match.groups()) if match else value


def dicom_time(value: str) -> str:
    """TM `093015.123` as 09:30:15, `0930` as 09:30; anything else as it came."""
    match = _DICOM_TIME.match(value.strip())
    if not match:
        return value
    return ":".join(part for part in match.groups()[:3] if part)


def short_uid(uid: str) -> str:
    """The end of a UID, where UIDs of one site differ: `…3680043.8.498.10`."""
    return uid if len(uid) <= UID_TAIL + 2 else "…" + uid[-UID_TAIL:]


def short_uids(text: str) -> str:
    """Every UID in a line of text shortened as `short_uid` does."""
    return _LONG_UID.sub(lambda m: short_uid(m.group(0)), text)


def short_destination(name: str) -> str:
    """`PACS@10.0.0.1:104` as PACS; `RIS 10.0.0.3:2575` as RIS."""
    return name.partition("@")[0].partition(" ")[0]


def when(at: datetime | None) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%S") if at is not None else ""


def clock(at: datetime | None) -> str:
    return at.strftime("%H:%M:%S") if at is not None else ""


def duration(seconds: float | None) -> str:
    """0.4 s, 12 s, 3 min 05 s, 2 h 04 min, 3 d 2 h."""
    if seconds is None:
        return ""
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def state_label(state: str) -> str:
    """A state as the pages word it: a study with nothing to upload is finished."""
    return "finished" if state == "nothing_to_upload" else state


FILTERS = {
    "state_label": state_label,
    "dicom_date": dicom_date,
    "dicom_time": dicom_time,
    "short_uid": short_uid,
    "short_uids": short_uids,
    "short_destination": short_destination,
    "when": when,
    "clock": clock,
    "duration": duration,
}


def register(engine: Any) -> None:
    """The dashboard's filters, for Litestar's Jinja engine (`engine_callback`)."""
    engine.engine.filters.update(FILTERS)
