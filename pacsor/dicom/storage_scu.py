"""The SCU side: C-STORE of DICOM files (the dispatcher, `pacsor send`), and C-ECHO with the
storage negotiation of what pacsor will send (`pacsor echo`, `pacsor check`).

Each file's SOP class is proposed in its own transfer syntax and in the uncompressed ones, one
presentation context per pair; which syntax each file goes in is
pacsor.domain.negotiation.send_as. A file sent in its own syntax goes as its bytes on disk:
with STORE_SEND_CHUNKED_DATASET pynetdicom sends the file's dataset without decoding and
encoding it again, faithful to what the AI or the modality produced. A file the PACS takes only
in another syntax is written again in that syntax first (pacsor.dicom.transcode).
"""

from __future__ import annotations

import ssl
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import msgspec
from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from pacsor.dicom.tls import diagnose
from pacsor.dicom.transcode import ConversionError, convert_file
from pacsor.domain import negotiation
from pacsor.errors import InvalidInput
from pacsor.process.logs import naming_peer

SOP_CLASS_NOT_SUPPORTED = 0x0122


class NotDicom(InvalidInput):
    """A file to send is not DICOM with its file meta (PS3.10): nothing is sent."""


class Stored(msgspec.Struct, frozen=True):
    """(file, DIMSE status) per file sent, in order, and why objects were refused before any
    C-STORE (a SOP class the PACS takes in no syntax pacsor can offer)."""

    results: list[tuple[Path, int]]
    refusals: tuple[str, ...] = ()


class Probe(msgspec.Struct, frozen=True):
    """What a peer answered to C-ECHO (`problem` None: success) and, per SOP class proposed,
    the transfer syntaxes it accepted (empty: refused)."""

    problem: str | None
    proposed: dict[str, tuple[str, ...]]
    accepted: dict[str, tuple[str, ...]]

    def refused(self) -> list[str]:
        return negotiation.refused(self.proposed, self.accepted)


def _ae(calling_ae_title: str, timeout: float) -> AE:
    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    return ae


def _associate(
    ae: AE, host: str, port: int, called: str, tls: ssl.SSLContext | None, timeout: float
) -> tuple[Association, str | None]:
    """The association, and what went wrong when none could be made (None: established, or
    every presentation context refused)."""
    tls_args = (tls, host) if tls is not None else None
    assoc = ae.associate(host, port, ae_title=called, max_pdu=0, tls_args=tls_args)
    if assoc.is_established:
        return assoc, None
    if assoc.is_rejected:
        return assoc, "association rejected"
    if assoc.is_aborted and assoc.rejected_contexts:
        return assoc, None  # the peer answered, and accepted no presentation context
    if tls is not None:
        return assoc, diagnose(host, port, tls, timeout)
    return assoc, "refused or unreachable"


def _accepted(assoc: Association) -> dict[str, set[str]]:
    accepted: dict[str, set[str]] = {}
    if assoc.is_established:
        for cx in assoc.accepted_contexts:
            accepted.setdefault(str(cx.abstract_syntax), set()).add(str(cx.transfer_syntax[0]))
    return accepted


def _stored_as(path: Path) -> tuple[str, str, str]:
    """(SOP class, transfer syntax, SOP instance) of a file, from its file meta; NotDicom
    without one."""
    try:
        meta = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"]).file_meta
        return (
            str(meta.MediaStorageSOPClassUID),
            str(meta.TransferSyntaxUID),
            str(meta.MediaStorageSOPInstanceUID),
        )
    except InvalidDicomError:  # pydicom's own words advise force=True: not for a sender
        raise NotDicom(f"{path}: not a DICOM Part 10 file (no DICOM file meta header)") from None
    except AttributeError as err:
        raise NotDicom(f"{path}: not a DICOM Part 10 file ({err})") from None
    except OSError as err:
        raise NotDicom(f"{path}: cannot be read ({err.strerror or err})") from None


def stored_as(path: Path) -> tuple[str, str]:
    """The file's SOP class and transfer syntax, from its file meta; NotDicom without one."""
    sop_class, syntax, _ = _stored_as(path)
    return sop_class, syntax


def store_files(
    host: str,
    port: int,
    called_ae_title: str,
    files: Sequence[Path],
    calling_ae_title: str = "PACSOR_SCU",
    timeout: float = 30.0,
    tls: ssl.SSLContext | None = None,
    on_result: Callable[[int, Path, int], None] | None = None,
) -> Stored:
    """C-STORE each file over one association, each in a syntax the peer accepted;
    `on_result(n, file, status)` hears of each file as soon as it is answered (n from 1).

    A file whose SOP class the peer accepts in no syntax offered (or that cannot be converted
    to one it accepts) gets 0x0122 (SOP class not supported), and `refusals` says why. Stops
    at the first file without an answer (status -1): the association is gone. Raises
    ConnectionError when no association can be made.
    """
    # A pynetdicom-wide switch, set here where it is needed rather than on import.
    _config.STORE_SEND_CHUNKED_DATASET = True
    meta = {path: _stored_as(path) for path in files}
    proposed = negotiation.proposals((sop, syntax) for sop, syntax, _ in meta.values())
    ae = _ae(calling_ae_title, timeout)
    for sop_class, syntaxes in proposed.items():
        for syntax in syntaxes:
            ae.add_requested_context(sop_class, syntax)
    with naming_peer(f"{called_ae_title}@{host}:{port}"):
        return _store_each(
            ae, host, port, called_ae_title, files, meta, proposed, tls, timeout, on_result
        )


def _store_each(
    ae: AE,
    host: str,
    port: int,
    called_ae_title: str,
    files: Sequence[Path],
    meta: dict[Path, tuple[str, str, str]],
    proposed: dict[str, tuple[str, ...]],
    tls: ssl.SSLContext | None,
    timeout: float,
    on_result: Callable[[int, Path, int], None] | None,
) -> Stored:
    assoc, problem = _associate(ae, host, port, called_ae_title, tls, timeout)
    if problem is not None:
        raise ConnectionError(f"association with {called_ae_title}@{host}:{port}: {problem}")
    accepted = _accepted(assoc)
    refusals = [
        negotiation.refusal(s, proposed[s]) for s in negotiation.refused(proposed, accepted)
    ]
    results: list[tuple[Path, int]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="pacsor-convert-") as folder:
            for n, path in enumerate(files):
                sop_class, own, instance = meta[path]
                target = negotiation.send_as(own, accepted.get(sop_class, ()))
                if target is None or not assoc.is_established:
                    results.append((path, SOP_CLASS_NOT_SUPPORTED))
                    continue
                to_send = path
                if target != own:
                    to_send = Path(folder) / f"{n}.dcm"
                    try:
                        convert_file(path, to_send, target)
                    except ConversionError as err:
                        refusals.append(f"{instance}: {err}")
                        results.append((path, SOP_CLASS_NOT_SUPPORTED))
                        continue
                try:
                    status = assoc.send_c_store(to_send)
                except ValueError as err:  # pynetdicom found no context for it after all
                    refusals.append(f"{instance}: {err}")
                    results.append((path, SOP_CLASS_NOT_SUPPORTED))
                    continue
                code = int(status.Status) if "Status" in status else -1
                results.append((path, code))
                if on_result is not None:
                    on_result(len(results), path, code)
                if code == -1:
                    break
    finally:
        if assoc.is_established:
            assoc.release()
    return Stored(results, tuple(refusals))


def send_files(
    host: str,
    port: int,
    called_ae_title: str,
    files: Sequence[Path],
    calling_ae_title: str = "PACSOR_SCU",
    timeout: float = 30.0,
    on_result: Callable[[int, Path, int], None] | None = None,
) -> list[tuple[Path, int]]:
    """store_files without TLS, keeping only (file, DIMSE status) per file."""
    stored = store_files(
        host, port, called_ae_title, files, calling_ae_title, timeout, on_result=on_result
    )
    return stored.results


def probe(
    host: str,
    port: int,
    called_ae_title: str,
    sop_classes: Sequence[str],
    calling_ae_title: str = "PACSOR_SCU",
    timeout: float = 10.0,
    tls: ssl.SSLContext | None = None,
) -> Probe:
    """C-ECHO a peer over an association that also proposes each of `sop_classes` in the
    uncompressed syntaxes, the ones every result can be sent in."""
    proposed: dict[str, tuple[str, ...]] = {sop: negotiation.UNCOMPRESSED for sop in sop_classes}
    ae = _ae(calling_ae_title, timeout)
    ae.add_requested_context(Verification)
    for sop_class, syntaxes in proposed.items():
        for syntax in syntaxes:
            ae.add_requested_context(sop_class, syntax)
    with naming_peer(f"{called_ae_title}@{host}:{port}"):
        assoc, problem = _associate(ae, host, port, called_ae_title, tls, timeout)
    if problem is not None or not assoc.is_established:
        return Probe(problem or "no presentation context accepted, not even C-ECHO", proposed, {})
    accepted = _accepted(assoc)
    try:
        if str(Verification) not in accepted:
            problem = "C-ECHO (Verification) not accepted"
        else:
            status = assoc.send_c_echo()
            code = int(status.Status) if "Status" in status else -1
            if code != 0:
                problem = "no answer" if code == -1 else f"status 0x{code:04X}"
    finally:
        if assoc.is_established:
            assoc.release()
    keep = {
        sop: tuple(s for s in negotiation.UNCOMPRESSED if s in accepted.get(sop, ()))
        for sop in proposed
    }
    return Probe(problem, proposed, keep)


def echo(
    host: str,
    port: int,
    called_ae_title: str,
    calling_ae_title: str = "PACSOR_SCU",
    timeout: float = 10.0,
    tls: ssl.SSLContext | None = None,
) -> str | None:
    """C-ECHO a peer: None when it answers success, else what went wrong."""
    return probe(host, port, called_ae_title, (), calling_ae_title, timeout, tls).problem
