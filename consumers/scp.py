"""C-STORE → InstanceReceived (or InstanceRejected): the Storage SCP, pacsor's intake.

The SCP is a server rather than a consumer of events: its code is pacsor.dicom.storage_scp,
where pynetdicom lives. It is declared here, with every other step of the pipeline.
"""

from __future__ import annotations

from pacsor.dicom import storage_scp
from pacsor.process.runtime import Component

COMPONENT = Component("scp", "C-STORE -> InstanceReceived / InstanceRejected", storage_scp.run)
