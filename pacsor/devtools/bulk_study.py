"""Large synthetic studies, recorded straight into JetStream as the SCP records them.

For the tests and benchmarks of what comes after reception (completion, upload): pydicom
takes milliseconds to encode a file, and the DICOM network tens of milliseconds to carry a
small one, which would dominate a study of 20,000 instances.
"""

from __future__ import annotations

import asyncio

from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian, generate_uid

from pacsor.devtools.sample_study import make_image, to_bytes
from pacsor.domain import events as ev
from pacsor.jetstream.blobs import BlobStore, digest_hex, sha256_digest
from pacsor.jetstream.eventlog import EventLog
from pacsor.jetstream.subjects import instance_object_name

# Instances written to JetStream at once.
_IN_FLIGHT = 500


def tiny_study(count: int) -> tuple[str, list[tuple[str, bytes]]]:
    """A study of `count` 4x4 images, as (SOP Instance UID, file bytes): one encoded image,
    its SOP Instance UID replaced by others of the same length."""
    study, series, base = str(generate_uid()), str(generate_uid()), str(generate_uid())[:40]
    uids = [f"{base}.{1_000_000 + n}" for n in range(count)]
    template = to_bytes(make_image(study, series_uid=series, sop_uid=uids[0], rows=4, columns=4))
    return study, [(uid, template.replace(uids[0].encode(), uid.encode())) for uid in uids]


async def record_as_the_scp(
    store: BlobStore, log: EventLog, study: str, images: list[tuple[str, bytes]]
) -> int:
    """Store each image in `store` (PACSOR_INSTANCES) and publish its InstanceReceived, as the
    SCP does after a C-STORE. Returns the stream sequence of the last InstanceReceived.
    """

    async def one(sop: str, data: bytes) -> int:
        digest = sha256_digest(data)
        name = instance_object_name(study, sop, digest_hex(digest))
        await store.put(name, data, digest)
        return await log.publish(
            ev.InstanceReceived(
                study_uid=study,
                series_instance_uid="1.2.3",
                sop_instance_uid=sop,
                sop_class_uid=str(ComputedRadiographyImageStorage),
                transfer_syntax_uid=str(ExplicitVRLittleEndian),
                modality="CR",
                calling_ae_title="BULK",
                object_name=name,
                size=len(data),
                digest=digest,
            )
        )

    last = 0
    for start in range(0, len(images), _IN_FLIGHT):
        part = images[start : start + _IN_FLIGHT]
        last = max(last, *await asyncio.gather(*(one(sop, data) for sop, data in part)))
    return last
