"""What to propose to a PACS, and in which transfer syntax to send each object: pure decisions.

Every result object is offered in its own transfer syntax and in the two uncompressed ones
(Explicit, then Implicit VR Little Endian, the one every DICOM system must accept, PS3.5
§10.1). Each (SOP class, transfer syntax) pair is its own presentation context, so the PACS
says yes or no to each one and pacsor picks:
- the object's own syntax when accepted: sent as it is stored;
- else an uncompressed one, Explicit first (it keeps the value representations): an object
  whose pixel data is not encapsulated is re-encoded losslessly, a compressed one is
  decompressed;
- else nothing: the PACS refuses every syntax pacsor can offer for that SOP class, which no
  retry changes.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence

IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
DEFLATED = "1.2.840.10008.1.2.1.99"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
UNCOMPRESSED = (EXPLICIT, IMPLICIT)
# Syntaxes whose pixel data is not encapsulated: pydicom re-encodes them without loss.
NATIVE = frozenset({EXPLICIT, IMPLICIT, BIG_ENDIAN, DEFLATED})
# PS3.8 §9.3.2.2: presentation context IDs are the odd numbers 1 to 255.
MAX_CONTEXTS = 128

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
GSPS = "1.2.840.10008.5.1.4.1.1.11.1"  # Grayscale Softcopy Presentation State
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
ENHANCED_SR = "1.2.840.10008.5.1.4.1.1.88.22"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"

# The names (PS3.6 annex A) of the SOP classes results come in and of the transfer syntaxes
# they may be stored in: what a person reads in a refusal.
NAMES = {
    SECONDARY_CAPTURE: "Secondary Capture Image Storage",
    GSPS: "Grayscale Softcopy Presentation State Storage",
    BASIC_TEXT_SR: "Basic Text SR Storage",
    ENHANCED_SR: "Enhanced SR Storage",
    COMPREHENSIVE_SR: "Comprehensive SR Storage",
    ENCAPSULATED_PDF: "Encapsulated PDF Storage",
    IMPLICIT: "Implicit VR Little Endian",
    EXPLICIT: "Explicit VR Little Endian",
    DEFLATED: "Deflated Explicit VR Little Endian",
    BIG_ENDIAN: "Explicit VR Big Endian",
    "1.2.840.10008.1.2.4.50": "JPEG Baseline (Process 1)",
    "1.2.840.10008.1.2.4.51": "JPEG Extended (Process 2 & 4)",
    "1.2.840.10008.1.2.4.57": "JPEG Lossless, Non-Hierarchical (Process 14)",
    "1.2.840.10008.1.2.4.70": (
        "JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14 [Selection Value 1])"
    ),
    "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless Image Compression",
    "1.2.840.10008.1.2.4.81": "JPEG-LS Lossy (Near-Lossless) Image Compression",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 Image Compression (Lossless Only)",
    "1.2.840.10008.1.2.4.91": "JPEG 2000 Image Compression",
    "1.2.840.10008.1.2.5": "RLE Lossless",
}


def name(uid: str) -> str:
    """A UID's name, or the UID itself when it is not one of NAMES."""
    return NAMES.get(uid, uid)


def proposals(stored_as: Iterable[tuple[str, str]]) -> dict[str, tuple[str, ...]]:
    """Per SOP class, the syntaxes to propose: the objects' own ones (in the order first met),
    then Explicit and Implicit VR Little Endian. `stored_as` is (SOP class, syntax) per object.

    Beyond MAX_CONTEXTS pairs, the own compressed syntaxes are dropped: every object can still
    go uncompressed.
    """
    wanted: dict[str, list[str]] = {}
    for sop_class, syntax in stored_as:
        syntaxes = wanted.setdefault(sop_class, [])
        if syntax not in syntaxes and syntax not in UNCOMPRESSED:
            syntaxes.append(syntax)
    proposed = {sop: (*own, *UNCOMPRESSED) for sop, own in wanted.items()}
    if sum(len(s) for s in proposed.values()) > MAX_CONTEXTS:
        proposed = {sop: UNCOMPRESSED for sop in wanted}
    return proposed


def send_as(own: str, accepted: Collection[str]) -> str | None:
    """The syntax to send an object stored in `own`, among the ones the PACS `accepted` for its
    SOP class; None when none will do."""
    if own in accepted:
        return own
    return next((syntax for syntax in UNCOMPRESSED if syntax in accepted), None)


def needs_decompression(own: str, target: str) -> bool:
    """Sending in `target` means decoding the pixel data (not only re-encoding elements)."""
    return own != target and own not in NATIVE


def refused(
    proposed: Mapping[str, Sequence[str]], accepted: Mapping[str, Collection[str]]
) -> list[str]:
    """The SOP classes for which the PACS accepted none of the syntaxes proposed."""
    return [sop for sop in proposed if not accepted.get(sop)]


def refusal(sop_class: str, proposed: Sequence[str]) -> str:
    """Why every object of `sop_class` is refused for good, in words a person can act on."""
    syntaxes = ", ".join(name(s) for s in proposed)
    return f"{name(sop_class)} ({sop_class}) refused in every syntax proposed: {syntaxes}"


def result_sop_classes(
    output_format: str | None,
    structured_report_format: str | None,
    static_report_format: str | None,
) -> tuple[str, ...]:
    """The SOP classes the AI's results come in with these result options (PS3.4 storage):
    images with the findings drawn, the summary and the rgb static report are Secondary
    Capture; `gsps` adds presentation states, a structured report SR documents (basic text or
    comprehensive, the product decides), a pdf static report Encapsulated PDF.
    An option left unset is the API's default, which draws on images and writes neither.
    """
    classes = [SECONDARY_CAPTURE]
    if output_format == "gsps":
        classes.append(GSPS)
    if structured_report_format not in (None, "none"):
        classes += [BASIC_TEXT_SR, COMPREHENSIVE_SR]
    if static_report_format == "pdf":
        classes.append(ENCAPSULATED_PDF)
    return tuple(classes)


def verdict(
    proposed: Mapping[str, Sequence[str]], accepted: Mapping[str, Collection[str]]
) -> tuple[str | None, str]:
    """What a probe of the SOP classes pacsor sends says: (problem, or None when every class
    is accepted; what the PACS stores, and in which syntax when it is not the first one)."""
    problem = None
    gone = refused(proposed, accepted)
    if gone:
        problem = "refuses " + "; ".join(
            f"{name(sop)} in every syntax proposed ({', '.join(name(s) for s in proposed[sop])})"
            for sop in gone
        )
    stores = []
    for sop, syntaxes in proposed.items():
        taken = [s for s in syntaxes if s in accepted.get(sop, ())]
        if not taken:
            continue
        only = f" ({name(taken[0])} only: results are converted)" if taken[0] != syntaxes[0] else ""
        stores.append(name(sop) + only)
    return problem, ("stores " + ", ".join(stores)) if stores else "stores none of them"
