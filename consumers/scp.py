"""C-STORE → InstanceReceived (or InstanceRejected): the Storage SCP, pacsor's intake.

The SCP is a server rather than a consumer of events: its code is pacsor.dicom.storage_scp,
where pynetdicom lives. It is declared here, with every other step of the pipeline.
"""

from __future__ import annotations

from pacsor.dicom import storage_scp
from pacsor.domain import events as ev
from pacsor.jetstream.nats_auth import Publishes
from pacsor.jetstream.subjects import INSTANCES_BUCKET
from pacsor.process.runtime import Component

COMPONENT = Component(
    "scp",
    "C-STORE -> InstanceReceived / InstanceRejected",
    storage_scp.run,
    # The part of pacsor that hostile traffic reaches: it stores instances and says so, and
    # can write nothing that the rest of the pipeline would act on as a result.
    publishes=Publishes(
        events=(ev.InstanceReceived, ev.InstanceRejected, ev.AssociationRejected),
        buckets=(INSTANCES_BUCKET,),
        holds=True,
        quiet_timers=True,
    ),
)
