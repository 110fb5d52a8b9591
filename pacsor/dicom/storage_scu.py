"""The SCU side: C-STORE of DICOM files as encoded on disk (the dispatcher, `pacsor send`)
and C-ECHO (`pacsor echo`).

pynetdicom normally decodes a file and encodes it again before sending; with
STORE_SEND_CHUNKED_DATASET it sends the file's dataset bytes as they are, in the file's own
transfer syntax, which is both faster and faithful to what the AI or the modality produced.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from pacsor.errors import InvalidInput
from pacsor.process.logs import naming_peer

SOP_CLASS_NOT_SUPPORTED = 0x0122


class NotDicom(InvalidInput):
    """A file to send is not DICOM with its file meta (PS3.10): nothing is sent."""


def stored_as(path: Path) -> tuple[str, str]:
    """The file's SOP class and transfer syntax, from its file meta; NotDicom without one."""
    try:
        meta = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"]).file_meta
        return str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)
    except InvalidDicomError:  # pydicom's own words advise force=True: not for a sender
        raise NotDicom(f"{path}: not a DICOM Part 10 file (no DICOM file meta header)") from None
    except AttributeError as err:
        raise NotDicom(f"{path}: not a DICOM Part 10 file ({err})") from None
    except OSError as err:
        raise NotDicom(f"{path}: cannot be read ({err.strerror or err})") from None


def send_files(
    host: str,
    port: int,
    called_ae_title: str,
    files: Sequence[Path],
    calling_ae_title: str = "PACSOR_SCU",
    timeout: float = 30.0,
    on_result: Callable[[int, Path, int], None] | None = None,
) -> list[tuple[Path, int]]:
    """C-STORE each file over one association; returns (file, DIMSE status) in order.

    `on_result(n, file, status)` hears of each file as soon as it is answered (n from 1).

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
        sop_class, syntax = stored_as(path)
        contexts.setdefault(sop_class, set()).add(syntax)
    for sop_class, syntaxes in contexts.items():
        ae.add_requested_context(sop_class, sorted(syntaxes))
    with naming_peer(f"{called_ae_title}@{host}:{port}"):
        return _store_each(ae, host, port, called_ae_title, files, on_result)


def _store_each(
    ae: AE,
    host: str,
    port: int,
    called_ae_title: str,
    files: Sequence[Path],
    on_result: Callable[[int, Path, int], None] | None,
) -> list[tuple[Path, int]]:
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
                code = SOP_CLASS_NOT_SUPPORTED
            else:
                code = int(status.Status) if "Status" in status else -1
            results.append((path, code))
            if on_result is not None:
                on_result(len(results), path, code)
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
    with naming_peer(f"{called_ae_title}@{host}:{port}"):
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
