"""What a step declares it emits is what it may return, and what its component's role grants."""

from __future__ import annotations

import pytest

from pacsor.components import BY_NAME
from pacsor.domain import events as ev
from pacsor.errors import UndeclaredEvent
from pacsor.jetstream.handler_runner import ConsumerSpec
from pacsor.process.runtime import FanOut, Step

STUDY = "1.2.3"


def test_an_event_the_step_does_not_declare_is_refused_before_it_is_published() -> None:
    spec: ConsumerSpec[ev.Event] = ConsumerSpec(
        "upload-default",
        "PACSOR",
        ">",
        lambda data, subject: ev.decode(data),
        emits=frozenset({ev.NothingToUpload}),
    )
    fine = ev.NothingToUpload(
        study_uid=STUDY, core="default", attempt=1, reason="filtered", skipped_count=1
    )
    forged = ev.RelaunchRequested(study_uid=STUDY, relaunch_id="r", requested_by="a step")
    assert spec.declared([fine]) == [fine]
    with pytest.raises(UndeclaredEvent, match="upload-default returned RelaunchRequested") as err:
        spec.declared([fine, forged])
    assert not err.value.retryable  # recorded as the step's failure at once


def test_a_step_without_its_own_failure_event_must_declare_step_failed() -> None:
    with pytest.raises(TypeError, match="StepFailed"):
        Step(
            consumes=ev.InstanceReceived,
            fan_out=FanOut.ONCE,
            durable="d",
            filter_subject="f",
            description="x",
            emits=(),
        )


def test_the_hl7_steps_built_from_settings_stay_within_its_role() -> None:
    from pacsor.consumers.hl7_sender import RIS_EMITS, SWITCH_STEP

    granted = set(BY_NAME["hl7"].publishes.events)
    assert set(RIS_EMITS) | set(SWITCH_STEP.emits) <= granted


def test_only_the_admin_asks_for_a_relaunch_and_only_the_poller_says_a_result_is_ready() -> None:
    def publishers(kind: type[ev.Event]) -> set[str]:
        return {name for name, c in BY_NAME.items() if kind in c.publishes.events}

    assert publishers(ev.RelaunchRequested) == {"admin"}
    assert publishers(ev.DispatchReplayRequested) == {"admin"}
    assert publishers(ev.ResultReady) == {"poller"}
    assert publishers(ev.StudyComplete) == {"completion"}
    assert publishers(ev.InstanceReceived) == {"scp"}
