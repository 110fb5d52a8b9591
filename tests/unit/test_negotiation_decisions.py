"""The negotiation decisions (pacsor.domain.negotiation) and the notes a dispatch keeps."""

from __future__ import annotations

import pytest
from pydicom.uid import (
    JPEG2000,
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from pacsor.domain import dispatch, negotiation

SC = negotiation.SECONDARY_CAPTURE
EXPLICIT, IMPLICIT = str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)


def test_the_names_are_the_dictionary_s() -> None:
    for uid, name in negotiation.NAMES.items():
        assert UID(uid).name.replace(" and ", " & ") == name, uid


# --- the decisions ---------------------------------------------------------------------------


def test_each_sop_class_is_offered_in_its_objects_syntaxes_then_the_uncompressed_ones() -> None:
    proposed = negotiation.proposals(
        [
            (SC, str(JPEG2000Lossless)),
            (SC, EXPLICIT),
            (SC, str(RLELossless)),
            (SC, str(JPEG2000Lossless)),
            (negotiation.GSPS, IMPLICIT),
        ]
    )
    assert proposed == {
        SC: (str(JPEG2000Lossless), str(RLELossless), EXPLICIT, IMPLICIT),
        negotiation.GSPS: (EXPLICIT, IMPLICIT),
    }


def test_beyond_128_contexts_only_the_uncompressed_ones_are_offered() -> None:
    many = [(f"1.2.3.{n}", str(JPEG2000Lossless)) for n in range(50)]
    proposed = negotiation.proposals(many)
    assert set(proposed.values()) == {(EXPLICIT, IMPLICIT)} and len(proposed) == 50


@pytest.mark.parametrize(
    ("own", "accepted", "expected"),
    [
        (EXPLICIT, {EXPLICIT, IMPLICIT}, EXPLICIT),  # as stored
        (str(RLELossless), {str(RLELossless), EXPLICIT}, str(RLELossless)),
        (EXPLICIT, {IMPLICIT}, IMPLICIT),  # re-encoded
        (IMPLICIT, {EXPLICIT, IMPLICIT}, IMPLICIT),
        (str(JPEG2000Lossless), {EXPLICIT, IMPLICIT}, EXPLICIT),  # decompressed, explicit first
        (str(JPEG2000Lossless), {IMPLICIT}, IMPLICIT),
        (str(JPEG2000Lossless), {str(RLELossless)}, None),  # never from one compression to another
        (EXPLICIT, set(), None),
    ],
)
def test_the_syntax_each_object_is_sent_in(
    own: str, accepted: set[str], expected: str | None
) -> None:
    assert negotiation.send_as(own, accepted) == expected


def test_only_encapsulated_pixel_data_needs_a_decoder() -> None:
    assert negotiation.needs_decompression(str(JPEG2000), IMPLICIT)
    assert not negotiation.needs_decompression(EXPLICIT, IMPLICIT)
    assert not negotiation.needs_decompression(str(JPEG2000), str(JPEG2000))


def test_a_refusal_names_the_sop_class_and_every_syntax_proposed() -> None:
    proposed = {SC: (str(RLELossless), EXPLICIT, IMPLICIT), negotiation.GSPS: (EXPLICIT, IMPLICIT)}
    assert negotiation.refused(proposed, {SC: {IMPLICIT}}) == [negotiation.GSPS]
    assert negotiation.refusal(SC, proposed[SC]) == (
        f"Secondary Capture Image Storage ({SC}) refused in every syntax proposed: "
        "RLE Lossless, Explicit VR Little Endian, Implicit VR Little Endian"
    )


def test_the_verdict_of_a_probe() -> None:
    proposed = {SC: (EXPLICIT, IMPLICIT), negotiation.GSPS: (EXPLICIT, IMPLICIT)}
    problem, stores = negotiation.verdict(proposed, {SC: (IMPLICIT,)})
    assert problem == (
        "refuses Grayscale Softcopy Presentation State Storage in every syntax proposed "
        "(Explicit VR Little Endian, Implicit VR Little Endian)"
    )
    assert stores == (
        "stores Secondary Capture Image Storage "
        "(Implicit VR Little Endian only: results are converted)"
    )
    assert negotiation.verdict({SC: (EXPLICIT, IMPLICIT)}, {SC: (EXPLICIT, IMPLICIT)}) == (
        None,
        "stores Secondary Capture Image Storage",
    )


def test_the_sop_classes_of_the_results_follow_the_result_options() -> None:
    assert negotiation.result_sop_classes(None, None, None) == (SC,)
    assert negotiation.result_sop_classes("gsps", "normal", "pdf") == (
        SC,
        negotiation.GSPS,
        negotiation.BASIC_TEXT_SR,
        negotiation.COMPREHENSIVE_SR,
        negotiation.ENCAPSULATED_PDF,
    )
    assert negotiation.result_sop_classes("overlay", "none", "rgb") == (SC,)


def test_a_negotiation_note_is_kept_across_tries_and_told_with_the_refusals() -> None:
    first = dispatch.record_try(dispatch.Progress(), [("a", 0x0122), ("b", 0xA700)], ["why"])
    second = dispatch.record_try(first, [("b", 0x0000)], ["why"])
    assert second.notes == ("why",)
    assert dispatch.outcome(["a", "b"], second).summary() == "1 delivered, 1 refused (0x0122); why"
    assert dispatch.outcome(["b"], dispatch.record_try(dispatch.Progress(), [("b", 0)])).notes == ()
