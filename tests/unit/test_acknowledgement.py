"""The acknowledgement rules of HL7 v2.5.1 (chapter 2.9), as the sender applies them."""

from __future__ import annotations

import pytest

from pacsor.domain.acknowledgement import (
    Ack,
    Answered,
    AwaitApplication,
    Discard,
    NoAnswer,
    header_fields,
    on_ack,
    on_timeout,
    refusal_is_transient,
)

MINE = "CID-1"


def test_header_fields_per_mode() -> None:
    assert header_fields("original") == ("", "")
    assert header_fields("enhanced") == ("AL", "AL")


@pytest.mark.parametrize("mode", ["original", "enhanced"])
@pytest.mark.parametrize("code", ["AA", "AE", "AR", "CA", "CE", "CR"])
def test_an_ack_of_another_message_is_set_aside(mode: str, code: str) -> None:
    step = on_ack(mode, MINE, None, Ack(code, "CID-0"))  # type: ignore[arg-type]
    assert isinstance(step, Discard)
    assert "another message" in step.reason


@pytest.mark.parametrize("mode", ["original", "enhanced"])
@pytest.mark.parametrize("code", ["AA", "AE", "AR"])
def test_an_application_ack_answers(mode: str, code: str) -> None:
    ack = Ack(code, MINE, "why")
    assert on_ack(mode, MINE, None, ack) == Answered(ack)  # type: ignore[arg-type]
    # ... after a commit as well.
    assert on_ack(mode, MINE, Ack("CA", MINE), ack) == Answered(ack)  # type: ignore[arg-type]


def test_a_commit_waits_for_the_application_ack_in_enhanced_mode() -> None:
    commit = Ack("CA", MINE)
    assert on_ack("enhanced", MINE, None, commit) == AwaitApplication(commit)
    # A second commit for the same message changes nothing.
    assert isinstance(on_ack("enhanced", MINE, commit, Ack("CA", MINE)), Discard)
    assert isinstance(on_ack("enhanced", MINE, commit, Ack("CE", MINE)), Discard)


def test_a_commit_is_the_answer_in_original_mode() -> None:
    commit = Ack("CA", MINE)
    assert on_ack("original", MINE, None, commit) == Answered(commit)


@pytest.mark.parametrize("mode", ["original", "enhanced"])
@pytest.mark.parametrize("code", ["CE", "CR"])
def test_a_commit_refusal_answers_at_once(mode: str, code: str) -> None:
    ack = Ack(code, MINE)
    assert on_ack(mode, MINE, None, ack) == Answered(ack)  # type: ignore[arg-type]
    assert not ack.accepted


def test_silence_after_a_commit_is_delivered_before_it_is_not() -> None:
    assert on_timeout(None, 15) == NoAnswer()
    step = on_timeout(Ack("CA", MINE), 15)
    assert isinstance(step, Answered)
    assert (step.ack.code, step.ack.accepted) == ("CA", True)
    assert "no application acknowledgement within 15 s" in step.ack.text


def test_which_refusals_are_worth_another_try() -> None:
    assert [c for c in ("AE", "AR", "CE", "CR") if refusal_is_transient(c)] == ["AE", "AR", "CE"]
