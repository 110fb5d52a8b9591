"""Every component pacsor can run, in pipeline order: `pacsor run NAME`, `pacsor up`.

    scp          C-STORE            -> InstanceReceived
    quiet-timer  InstanceReceived   -> (re)arm the study's quiet timer
    completion   timer elapsed      -> StudyComplete
    uploader     StudyComplete      -> Uploaded, per core
    poller       Uploaded           -> ResultReady, per core
    dispatcher   ResultReady        -> Dispatched, per core and destination
    admin        the stream         -> the operators' read model, HTTP API and dashboard

Each is declared next to its code (`COMPONENT`); this list is the only other place it appears.
"""

from __future__ import annotations

from pacsor.admin import server as admin_server
from pacsor.consumers import dispatcher, quiet_timer, result_poller, study_completion, uploader
from pacsor.dicom import storage_scp
from pacsor.runtime import Component

REGISTRY: tuple[Component, ...] = (
    storage_scp.COMPONENT,
    quiet_timer.COMPONENT,
    study_completion.COMPONENT,
    uploader.COMPONENT,
    result_poller.COMPONENT,
    dispatcher.COMPONENT,
    admin_server.COMPONENT,
)

BY_NAME: dict[str, Component] = {component.name: component for component in REGISTRY}
