"""Every component pacsor can run, in pipeline order: `pacsor run NAME`, `pacsor up`.

    scp          C-STORE            -> InstanceReceived
    quiet-timer  InstanceReceived   -> (re)arm the study's quiet timer
    completion   timer elapsed      -> StudyComplete
    uploader     StudyComplete      -> Uploaded, per core
    poller       Uploaded           -> ResultReady, per core
    dispatcher   ResultReady        -> Dispatched, per core and destination
    hl7          ResultReady        -> ORU^R01 to the RIS -> Hl7Sent (with HL7_ENABLE)
    retention    the studies' views -> remove objects that are due -> ObjectsExpired
    admin        the stream         -> the operators' read model, HTTP API and dashboard

Each is declared in its module in consumers/ (`COMPONENT`); this list is the only other place
it appears.
"""

from __future__ import annotations

from pacsor.consumers import (
    admin,
    dispatcher,
    hl7_sender,
    quiet_timer,
    result_poller,
    retention_sweeper,
    scp,
    study_completion,
    uploader,
)
from pacsor.jetstream.nats_auth import SHARED_ROLES, Role, component_role
from pacsor.process.runtime import Component

REGISTRY: tuple[Component, ...] = (
    scp.COMPONENT,
    quiet_timer.COMPONENT,
    study_completion.COMPONENT,
    uploader.COMPONENT,
    result_poller.COMPONENT,
    dispatcher.COMPONENT,
    hl7_sender.COMPONENT,
    retention_sweeper.COMPONENT,
    admin.COMPONENT,
)

BY_NAME: dict[str, Component] = {component.name: component for component in REGISTRY}

# Who may do what on NATS: the shared roles, then one per component, with the grants it declares.
NATS_ROLES: tuple[Role, ...] = SHARED_ROLES + tuple(
    component_role(component.name, component.publishes) for component in REGISTRY
)
