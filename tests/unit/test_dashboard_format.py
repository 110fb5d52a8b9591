"""How the dashboard writes DICOM dates and times, UIDs, destinations and durations."""

from __future__ import annotations

import pytest

from pacsor.admin.formatting import (
    dicom_date,
    dicom_time,
    duration,
    short_destination,
    short_uid,
    short_uids,
    state_label,
)

UID = "1.2.826.0.1.3680043.8.498.62760360531596295052652444750864385531"


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("20261201", "2026-12-01"),
        (" 20261201 ", "2026-12-01"),
        ("", ""),
        ("2026-12-01", "2026-12-01"),
        ("1201", "1201"),
    ],
)
def test_dicom_dates(raw: str, shown: str) -> None:
    assert dicom_date(raw) == shown


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("093015.123", "09:30:15"),
        ("093015", "09:30:15"),
        ("0930", "09:30"),
        ("09", "09"),
        ("x", "x"),
    ],
)
def test_dicom_times(raw: str, shown: str) -> None:
    assert dicom_time(raw) == shown


def test_uids_are_shortened_to_their_distinct_end() -> None:
    assert short_uid(UID) == "…" + UID[-14:]
    assert short_uid("1.2.3.4") == "1.2.3.4"
    text = f"CR {UID} from MODALITY, to PACS@10.0.0.1:104"
    assert short_uids(text) == f"CR …{UID[-14:]} from MODALITY, to PACS@10.0.0.1:104"


def test_destinations_and_durations() -> None:
    assert short_destination("PACS@10.0.0.1:104") == "PACS"
    assert short_destination("RIS 10.0.0.3:2575") == "RIS"
    assert [duration(s) for s in (0.04, 9.96, 12.4, 185, 7440, 3 * 86400 + 7200)] == [
        "0.0 s",
        "10.0 s",
        "12 s",
        "3 min 05 s",
        "2 h 04 min",
        "3 d 2 h",
    ]
    assert duration(None) == ""


def test_a_study_with_nothing_to_upload_reads_finished() -> None:
    assert state_label("nothing_to_upload") == "finished"
    assert state_label("failed") == "failed"
