"""Every component pacsor can run, in pipeline order: `pacsor run NAME`, `pacsor up`.

    scp          C-STORE            -> InstanceReceived
    quiet-timer  InstanceReceived   -> (re)arm the study's quiet timer
    completion   timer elapsed      -> StudyComplete
    uploader     StudyComplete      -> Uploaded, per core
    poller       Uploaded           -> ResultReady, per core
    dispatcher   ResultReady        -> Dispatched, per core and destination
    hl7          ResultReady        -> ORU^R01 to the RIS -> Hl7Sent (with HL7_ENABLE)
    admin        the stream         -> the operators' read model, HTTP API and dashboard

Each is declared next to its code (`COMPONENT`); this list is the only other place it appears.
"""

from __future__ import annotations

from pacsor.admin import server as admin_server
from pacsor.consumers import (
    dispatcher,
    hl7_sender,
    quiet_timer,
    result_poller,
    study_completion,
    uploader,
)
from pacsor.dicom import storage_scp
from pacsor.process.runtime import Component

REGISTRY: tuple[Component, ...] = (
    storage_scp.COMPONENT,
    quiet_timer.COMPONENT,
    study_completion.COMPONENT,
    uploader.COMPONENT,
    result_poller.COMPONENT,
    dispatcher.COMPONENT,
    hl7_sender.COMPONENT,
    admin_server.COMPONENT,
)

BY_NAME: dict[str, Component] = {component.name: component for component in REGISTRY}
