"""The SCU side: C-STORE of DICOM files as encoded on disk (the dispatcher, `pacsor send`)
and C-ECHO (`pacsor echo`).

pynetdicom normally decodes a file and encodes it again before sending; with
STORE_SEND_CHUNKED_DATASET it sends the file's dataset bytes as they are, in the file's own
transfer syntax, which is both faster and faithful to what the AI or the modality produced.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from pacsor.errors import InvalidInput

SOP_CLASS_NOT_SUPPORTED = 0x0122


class NotDicom(InvalidInput):
    """A file to send is not DICOM with its file meta (PS3.10): nothing is sent."""


def send_files(
    host: str,
    port: int,
    called_ae_title: str,
    files: Sequence[Path],
    calling_ae_title: str = "PACSOR_SCU",
    timeout: float = 30.0,
) -> list[tuple[Path, int]]:
    """C-STORE each file over one association; returns (file, DIMSE status) in order.

    A file whose SOP class the peer did not accept gets 0x0122 (SOP class not supported).
    Stops at the first file without an answer (status -1): the association is gone.
    Raises ConnectionError when no association can be made.
    """
    # Send each file's dataset bytes as they are on disk instead of decoding and re-encoding
    # them: faster, and faithful to what the modality produced. A pynetdicom-wide switch, set
    # here where it is needed rather than on import.
    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    contexts: dict[str, set[str]] = {}
    for path in files:
        try:
            meta = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"]).file_meta
            stored_as = (str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
        except (InvalidDicomError, AttributeError, OSError) as err:
            raise NotDicom(f"{path}: not a DICOM Part 10 file ({err})") from None
        contexts.setdefault(stored_as[0], set()).add(stored_as[1])
    for sop_class, syntaxes in contexts.items():
        ae.add_requested_context(sop_class, sorted(syntaxes))
    assoc = ae.associate(host, port, ae_title=called_ae_title, max_pdu=0)
    if not assoc.is_established:
        reason = "rejected" if assoc.is_rejected else "refused or unreachable"
        raise ConnectionError(f"association with {called_ae_title}@{host}:{port} {reason}")
    results: list[tuple[Path, int]] = []
    try:
        for path in files:
            try:
                status = assoc.send_c_store(path)
            except ValueError:  # no accepted presentation context for this SOP class
                results.append((path, SOP_CLASS_NOT_SUPPORTED))
                continue
            code = int(status.Status) if "Status" in status else -1
            results.append((path, code))
            if code == -1:
                break
    finally:
        if assoc.is_established:
            assoc.release()
    return results


def echo(
    host: str,
    port: int,
    called_ae_title: str,
    calling_ae_title: str = "PACSOR_SCU",
    timeout: float = 10.0,
) -> str | None:
    """C-ECHO a peer: None when it answers success, else what went wrong."""
    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(Verification)
    assoc = ae.associate(host, port, ae_title=called_ae_title)
    if not assoc.is_established:
        return "association rejected" if assoc.is_rejected else "refused or unreachable"
    try:
        status = assoc.send_c_echo()
    finally:
        if assoc.is_established:
            assoc.release()
    code = int(status.Status) if "Status" in status else -1
    return None if code == 0 else ("no answer" if code == -1 else f"status 0x{code:04X}")
