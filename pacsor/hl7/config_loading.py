"""Loading a named HL7 configuration or template at run time, as an event.

    load_named(...)        check the file and what it gives, then record Hl7ConfigLoaded
    current_config(...)    the latest Hl7ConfigLoaded: what the hl7 component applies

A load is refused, with the reason, when the file is missing, malformed, sets something that
is not an HL7 variable or a bad value, or gives a message hl7apy cannot parse; the previous
configuration then stays in force. Two loads at once cannot both count: the event is written
only if no other load was recorded since the one it builds on.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import msgspec

from pacsor.config.hl7 import Hl7Settings, as_variables
from pacsor.config.variables import masked
from pacsor.domain import events as ev
from pacsor.errors import InvalidInput
from pacsor.hl7.custom_config import (
    CustomConfigError,
    LoadedConfig,
    combine,
    effective,
    read_config,
    read_template,
)
from pacsor.hl7.template import MessageTemplate
from pacsor.jetstream.eventlog import ConcurrentUpdate, EventLog
from pacsor.jetstream.subjects import LEGACY_HL7_CONFIG_SUBJECT, site_events


class LoadRefused(InvalidInput):
    """The load is refused; `status` is the HTTP status that says why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class CurrentConfig(msgspec.Struct, frozen=True):
    """The latest load (None: the environment alone) and its position in the stream."""

    loaded: LoadedConfig | None
    sequence: int = 0
    event: ev.Hl7ConfigLoaded | None = None
    # The last sequence on the site subject, which the next load expects (0: none yet).
    subject_sequence: int = 0


async def current_config(events: EventLog) -> CurrentConfig:
    recorded = await events.last(site_events(ev.Hl7ConfigLoaded))
    subject_sequence = recorded.sequence if recorded is not None else 0
    if recorded is None:  # recorded by a version before the site subjects, if at all
        recorded = await events.last(LEGACY_HL7_CONFIG_SUBJECT)
    if recorded is None or not isinstance(recorded.event, ev.Hl7ConfigLoaded):
        return CurrentConfig(None)
    event = recorded.event
    loaded = LoadedConfig(
        name=event.name, kind=event.kind, settings=event.settings, template=event.template
    )
    return CurrentConfig(loaded, recorded.sequence, event, subject_sequence)


async def in_force(events: EventLog, base: Hl7Settings) -> tuple[CurrentConfig, Hl7Settings]:
    """The latest load and the settings in force: the environment, then that load."""
    current = await current_config(events)
    try:
        settings, _ = effective(base, current.loaded)
    except CustomConfigError:
        settings = base  # checked when loaded; only a changed environment makes it fail here
    return current, settings


def shown(settings: Hl7Settings) -> dict[str, str]:
    """The settings as variables, URLs with credentials shown without them."""
    variables: dict[str, str] = masked(as_variables(settings))
    return variables


async def load_named(
    events: EventLog, base: Hl7Settings, name: str, kind: str, loaded_by: str
) -> tuple[ev.Hl7ConfigLoaded, Hl7Settings, MessageTemplate | None]:
    """Check and record the configuration (kind "config") or template named `name`."""
    if not base.custom_dir:
        raise LoadRefused(409, "HL7_CUSTOM_DIR: not set; there is nothing to load from")
    directory = Path(base.custom_dir)
    try:
        new = (read_template if kind == "template" else read_config)(directory, name)
    except CustomConfigError as err:
        raise LoadRefused(404 if err.not_found else 422, str(err)) from err
    current = await current_config(events)
    state = combine(current.loaded, new)
    try:
        settings, template = effective(base, state)
    except CustomConfigError as err:
        raise LoadRefused(422, str(err)) from err
    event = ev.Hl7ConfigLoaded(
        study_uid="",
        load_id=uuid.uuid4().hex,
        name=name,
        kind=new.kind,
        loaded_by=loaded_by,
        settings=state.settings,
        template=state.template,
    )
    try:
        await events.publish(event, expected_last_subject_sequence=current.subject_sequence)
    except ConcurrentUpdate as err:
        raise LoadRefused(409, "another configuration was loaded meanwhile; load again") from err
    return event, settings, template
