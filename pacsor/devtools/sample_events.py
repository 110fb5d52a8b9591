"""Synthetic event histories of studies, for the projection's tests and benchmark."""

from __future__ import annotations

from datetime import datetime, timedelta

from pacsor.domain import events as ev

SC = "1.2.840.10008.5.1.4.1.1.7"
DX = "1.2.840.10008.5.1.4.1.1.1.1"


def received(
    study: str, n: int, at: datetime, accession: str = "", size: int = 500_000
) -> ev.InstanceReceived:
    sop = f"{study}.{n}"
    return ev.InstanceReceived(
        study_uid=study,
        series_instance_uid=f"{study}.0",
        sop_instance_uid=sop,
        sop_class_uid=DX,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        modality="DX",
        calling_ae_title="MODALITY",
        object_name=f"{study}/{sop}",
        size=size,
        digest=f"SHA-256={n}",
        accession_number=accession,
        study_date="20260101",
        study_description="THORAX",
        occurred_at=at,
    )


def lifecycle(
    study: str,
    t0: datetime,
    images: int = 3,
    destinations: tuple[str, ...] = ("PACS@10.0.0.1:104",),
    accession: str = "",
    core: str = "default",
    attempt: int = 1,
) -> list[ev.Event]:
    """A study received, completed, uploaded, with results, dispatched everywhere."""
    step = timedelta(seconds=1)
    instances = [received(study, n, t0 + n * step, accession) for n in range(images)]
    done = t0 + (images + 10) * step
    complete = ev.StudyComplete(
        study_uid=study,
        attempt=attempt,
        instance_count=len(instances),
        # Where the attempt's instances end in the stream; these samples are folded, not
        # published, and the fold does not read it.
        through_sequence=0,
        occurred_at=done,
    )
    results = tuple(
        ev.ResultObject(
            inference_command=command,
            sop_instance_uid=f"{study}.9{n}{k}",
            sop_class_uid=SC,
            object_name=f"{study}/{core}/{attempt}/{study}.9{n}{k}",
            size=100_000,
        )
        for n in range(images)
        for k, command in enumerate(("smarturgences", "smartxpert"))
    )
    history: list[ev.Event] = [
        *instances,
        complete,
        ev.Uploaded(
            study_uid=study,
            core=core,
            attempt=attempt,
            instance_count=images,
            occurred_at=done + 2 * step,
        ),
        ev.ResultReady(
            study_uid=study,
            core=core,
            attempt=attempt,
            results=results,
            occurred_at=done + 20 * step,
        ),
    ]
    history.extend(
        ev.Dispatched(
            study_uid=study,
            core=core,
            attempt=attempt,
            destination=destination,
            sop_instance_uids=tuple(r.sop_instance_uid for r in results),
            occurred_at=done + 25 * step,
        )
        for destination in destinations
    )
    return history
