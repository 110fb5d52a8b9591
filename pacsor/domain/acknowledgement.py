"""What an HL7 acknowledgement means to the sender of a message: wait for another, or done.

HL7 v2.5.1 chapter 2.9 defines two modes, chosen by the sender in MSH-15 and MSH-16:

- original mode (both empty, pacsor's default): the receiver answers one application
  acknowledgement, AA (accepted), AE (error while processing) or AR (rejected);
- enhanced mode (MSH-15 and MSH-16 "AL"): the receiver first answers a commit acknowledgement,
  CA (safely received), CE (cannot be accepted now) or CR (MSH-9, -11 or -12 unacceptable),
  then an application acknowledgement (AA, AE or AR) once it has processed the message.

Every acknowledgement names the message it answers in MSA-2 (that message's MSH-10). One that
names another message is stale (a late or second answer to an earlier message) or unsolicited:
it is set aside, and nothing is sent again because of it.

The decisions here are pure: the MLLP reader feeds them each acknowledgement it reads and
acts on the step they return.
"""

from __future__ import annotations

from typing import Literal

import msgspec

AckMode = Literal["original", "enhanced"]
ACK_MODES: tuple[AckMode, ...] = ("original", "enhanced")

COMMIT_CODES = frozenset({"CA", "CE", "CR"})
APPLICATION_CODES = frozenset({"AA", "AE", "AR"})
ACK_CODES = COMMIT_CODES | APPLICATION_CODES
ACCEPTED = frozenset({"AA", "CA"})
# Refusals that sending the same message again cannot change: CR says the message type,
# version or processing ID (MSH-9, -11, -12) is unacceptable, and those are fixed.
PERMANENT_REFUSALS = frozenset({"CR"})


class Ack(msgspec.Struct, frozen=True):
    code: str  # MSA-1: AA, AE, AR (application), CA, CE, CR (commit)
    control_id: str  # MSA-2: the control ID of the message acknowledged
    text: str = ""  # MSA-3, or ERR's text when there is one

    @property
    def accepted(self) -> bool:
        return self.code in ACCEPTED

    @property
    def is_commit(self) -> bool:
        return self.code in COMMIT_CODES


def header_fields(mode: AckMode) -> tuple[str, str]:
    """MSH-15 (accept acknowledgement type) and MSH-16 (application acknowledgement type)."""
    return ("AL", "AL") if mode == "enhanced" else ("", "")


def refusal_is_transient(code: str) -> bool:
    """Whether a refused message is worth sending again later (with the retry policy).

    AE (an error while processing, such as an order the RIS does not know yet), AR (rejected
    for a reason unrelated to the content: the RIS is down or failed inside) and CE (cannot be
    accepted now) may pass later; CR cannot.
    """
    return code not in PERMANENT_REFUSALS


class Discard(msgspec.Struct, frozen=True):
    """Not an answer to the message in flight: set it aside and keep reading."""

    ack: Ack
    reason: str


class AwaitApplication(msgspec.Struct, frozen=True):
    """Committed (CA): keep reading, for the application acknowledgement."""

    commit: Ack


class Answered(msgspec.Struct, frozen=True):
    """The message's outcome: accepted (AA, or CA alone) or refused (any other code)."""

    ack: Ack


class NoAnswer(msgspec.Struct, frozen=True):
    """Nothing acknowledged the message in time: it may not have arrived."""


Step = Discard | AwaitApplication | Answered | NoAnswer


def on_ack(
    mode: AckMode, expected_control_id: str, commit: Ack | None, ack: Ack
) -> Discard | AwaitApplication | Answered:
    """The step after reading `ack` while waiting for the answer to `expected_control_id`,
    `commit` being the commit acknowledgement already read for it (None before one)."""
    if ack.control_id != expected_control_id:
        return Discard(
            ack,
            f"acknowledges another message ({ack.control_id!r}): stale or unsolicited",
        )
    if ack.code in APPLICATION_CODES:
        return Answered(ack)
    if commit is not None:
        return Discard(ack, f"a second commit acknowledgement ({ack.code}) for the message")
    if ack.code != "CA":
        return Answered(ack)  # CE, CR: refused at commit, no application answer follows
    if mode == "original":
        # A receiver speaking enhanced mode to an original-mode sender: the message is safe
        # with it and original mode expects one answer; a later AA is read as stale.
        return Answered(ack)
    return AwaitApplication(ack)


def on_timeout(commit: Ack | None, waited_seconds: float) -> Answered | NoAnswer:
    """The step when the wait ends. A committed message is the receiver's responsibility:
    it is delivered, and sending it again would give the RIS a second copy."""
    if commit is None:
        return NoAnswer()
    return Answered(
        msgspec.structs.replace(
            commit,
            text=f"committed; no application acknowledgement within {waited_seconds:g} s",
        )
    )
