"""The DICOM Storage SCP: C-STORE in, InstanceReceived out.

A C-STORE is answered success only once the instance's bytes are in the PACSOR_INSTANCES
bucket *and* its InstanceReceived event is in the PACSOR stream, both acknowledged by
JetStream: a success means the instance is durable. The bytes are stored exactly as received
(file meta + the dataset in its transfer syntax), never decoded and re-encoded.

pynetdicom serves each association on its own thread; the JetStream work runs on the asyncio
loop, and the association thread waits for it at most SCP_STORE_TIMEOUT_SECONDS (and not at all
while the connection to NATS is down) before answering 0xA700, so the sender retries.

While an association that has sent instances of a study is open, the SCP holds the study: it
writes a Hold (pacsor.jetstream.holds) every HOLD_HEARTBEAT, and the completion handler does not
complete a held study. A sender kept waiting by pacsor, or resending what was refused, does not
see its study split. When the last such association closes, the quiet period starts again.

Rejected associations (wrong called AE title, a caller not in ALLOWED_CALLING_AETS,
MAX_ASSOCIATIONS reached, ...) and refused presentation contexts (a SOP class outside
CONFIG_PROFILE) are logged once each, with the caller's AE title and address, and counted
(pacsor.process.counters); an unknown caller is also recorded as an AssociationRejected event.

A received dataset arrives in a spool file, not in memory (pacsor.dicom.scp_transport, which
also bounds every PDU read); it is checked whole and no deeper than 32 sequence levels, a
deflated one inflated within MAX_INSTANCE_BYTES, and streamed from the file to the bucket.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import mmap
import socket
import ssl
import tempfile
import threading
import uuid
import zlib
from collections.abc import Callable, Coroutine
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from pydicom import dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import UID
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.association import Association
from pynetdicom.events import Event as DicomEvent
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from pacsor.config import Settings
from pacsor.dicom.profiles import PROFILES
from pacsor.dicom.scp_transport import (
    GuardedServer,
    Limits,
    discard_spool,
    is_overflow,
    server_context,
    spooled_sha256,
)
from pacsor.dicom.storage_scu import no_delay
from pacsor.dicom.structure import Truncated, check_whole, dataset_offset
from pacsor.domain.completion import HOLD_HEARTBEAT, Hold
from pacsor.domain.events import AssociationRejected, InstanceReceived, InstanceRejected, utc_now
from pacsor.errors import ConfigError, InvalidInput, StartupError
from pacsor.jetstream.blobs import BlobStore, digest_hex, digest_notation
from pacsor.jetstream.eventlog import EventLog
from pacsor.jetstream.holds import Holds
from pacsor.jetstream.quiet_timers import QuietTimers
from pacsor.jetstream.subjects import instance_object_name, is_valid_uid
from pacsor.process.counters import ASSOCIATIONS_REJECTED, CONTEXTS_REJECTED, STORES_UNAVAILABLE
from pacsor.process.runtime import Runtime, Started

log = logging.getLogger("pacsor.scp")

T = TypeVar("T")

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700  # the sender should retry later
CANNOT_UNDERSTAND = 0xC210  # the dataset could not be decoded
MISSING_UID = 0xC220  # Study, Series or SOP Instance UID absent
INVALID_UID = 0xC221  # a UID that is not digits and dots
MALFORMED = 0xC222  # truncated: an element runs past the end of the dataset
# Refused: out of resources, for good: larger than MAX_INSTANCE_BYTES (0xA700 means retry).
TOO_LARGE = 0xA710

# A-ASSOCIATE-RJ (result, source, diagnostic) as pynetdicom sends them -> (metric label, why).
_REJECTIONS = {
    (0x01, 0x01, 0x07): ("called_ae_title", "called AE title not recognised: this SCP is {aet}"),
    (0x01, 0x01, 0x03): ("calling_ae_title", "calling AE title not recognised"),
    (0x02, 0x03, 0x02): ("association_limit", "{limit} open: MAX_ASSOCIATIONS reached"),
    (0x02, 0x02, 0x01): ("user_identity", "user identity not accepted"),
}


class Identity(msgspec.Struct, frozen=True):
    """What a received dataset says it is; a rejected one may have empty or invalid UIDs."""

    study_uid: str = msgspec.field(default="", name="study_instance_uid")
    series_instance_uid: str = ""
    sop_instance_uid: str = ""
    sop_class_uid: str = ""
    modality: str = ""
    # What operators search by; never the patient's name, ID or birth date.
    accession_number: str = ""
    study_date: str = ""
    study_description: str = ""


class Rejection(InvalidInput):
    def __init__(self, status: int, reason: str, identity: Identity | None = None):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.identity = identity or Identity()


def _text(dataset: Dataset, keyword: str, longest: int) -> str:
    """A short text element as one clean line, at most its VR's length."""
    value = str(dataset.get(keyword, "") or "")
    return " ".join(value.replace("\0", " ").split())[:longest]


def identify(dataset: Dataset, affected_sop_class: str) -> Identity:
    """Read the identifying UIDs of a received dataset, or raise Rejection."""
    try:
        identity = Identity(
            study_uid=str(dataset.get("StudyInstanceUID", "") or "").strip("\0 "),
            series_instance_uid=str(dataset.get("SeriesInstanceUID", "") or "").strip("\0 "),
            sop_instance_uid=str(dataset.get("SOPInstanceUID", "") or "").strip("\0 "),
            sop_class_uid=str(dataset.get("SOPClassUID", "") or affected_sop_class),
            modality=str(dataset.get("Modality", "") or ""),
            accession_number=_text(dataset, "AccessionNumber", 16),
            study_date=_text(dataset, "StudyDate", 8),
            study_description=_text(dataset, "StudyDescription", 64),
        )
    except Exception as err:  # pydicom raises many kinds on a corrupt or truncated stream
        raise Rejection(CANNOT_UNDERSTAND, f"unreadable dataset: {err}") from err
    for uid, label in (
        (identity.study_uid, "StudyInstanceUID"),
        (identity.series_instance_uid, "SeriesInstanceUID"),
        (identity.sop_instance_uid, "SOPInstanceUID"),
    ):
        if not uid:
            raise Rejection(MISSING_UID, f"{label} is missing", identity)
        if not is_valid_uid(uid):
            raise Rejection(INVALID_UID, f"{label} is not a valid UID: {uid[:64]!r}", identity)
    return identity


def allowed_callers(entries: tuple[str, ...]) -> dict[str, frozenset[str] | None] | None:
    """ALLOWED_CALLING_AETS as AE title -> the addresses it may call from (None: any);
    None when unset. A pinned host name is resolved once, here."""
    if not entries:
        return None
    allowed: dict[str, frozenset[str] | None] = {}
    for entry in entries:
        aet, _, host = entry.partition("@")
        aet = aet.strip()
        if not host:
            allowed[aet] = None
            continue
        try:
            addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
        except OSError as err:
            raise ConfigError(f"ALLOWED_CALLING_AETS: cannot resolve {host!r}: {err}") from None
        known = allowed.get(aet, frozenset())
        if known is not None:  # an unpinned entry for the same title wins
            allowed[aet] = known | addresses
    return allowed


def is_allowed(allowed: dict[str, frozenset[str] | None], calling: str, host: str) -> bool:
    if calling not in allowed:
        return False
    addresses = allowed[calling]
    return addresses is None or host in addresses


def file_sha256(path: Path) -> bytes:
    """The SHA-256 of the file's bytes, read a chunk at a time."""
    with path.open("rb") as spooled:
        return hashlib.file_digest(spooled, "sha256").digest()


def _is_sequence_tag(tag: int) -> bool:
    """In implicit VR a sequence of defined length is known only from the dictionary."""
    try:
        return dictionary_VR(tag) == "SQ"
    except KeyError:
        return False


def _stop_at_pixels(tag: Any, vr: str | None, length: int) -> bool:
    return int(tag) == 0x7FE00010


def read_spooled(path: Path, syntax: UID, affected_sop_class: str, limit: int) -> Identity:
    """Check a spooled instance whole and not too deeply nested, and read who it is, without
    loading its bulk data; raise Rejection or Truncated."""
    with path.open("rb") as spooled:
        offset = dataset_offset(spooled.read(144))
        if syntax.is_deflated:
            spooled.seek(offset)
            with tempfile.TemporaryFile() as inflated:
                _inflate(spooled, inflated, limit)
                _check_file(inflated, 0, implicit=False, little_endian=True)
                inflated.seek(0)
                dataset = read_dataset(inflated, False, True, stop_when=_stop_at_pixels)
                return identify(dataset, affected_sop_class)
        _check_file(spooled, offset, syntax.is_implicit_VR, syntax.is_little_endian)
    dataset = dcmread(path, stop_before_pixels=True, defer_size=4096)
    return identify(dataset, affected_sop_class)


def _inflate(deflated: Any, into: Any, limit: int) -> None:
    """Inflate a deflated dataset into a file, refusing it past `limit` bytes."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    written = 0
    while pending := deflated.read(65536):
        while pending:
            piece = inflater.decompress(pending, 1024 * 1024)
            pending = inflater.unconsumed_tail
            written += len(piece)
            if written > limit:
                raise Rejection(
                    TOO_LARGE, f"deflated dataset inflates past MAX_INSTANCE_BYTES ({limit})"
                )
            into.write(piece)
    into.write(inflater.flush())


def _check_file(spooled: Any, offset: int, implicit: bool, little_endian: bool) -> None:
    """check_whole on a file, mapped rather than read: only element headers are touched."""
    spooled.flush()
    size = spooled.seek(0, 2)
    if size <= offset:
        raise Truncated("no dataset after the file meta group")
    error: Truncated | None = None
    with mmap.mmap(spooled.fileno(), 0, access=mmap.ACCESS_READ) as data:
        try:
            check_whole(memoryview(data)[offset:], implicit, little_endian, _is_sequence_tag)
        except Truncated as err:
            # Raised once the mapping is closed: the traceback holds views of it.
            error = Truncated(str(err))
    if error is not None:
        raise error


class StorageScp:
    def __init__(
        self,
        settings: Settings,
        loop: asyncio.AbstractEventLoop,
        instances: BlobStore,
        events: EventLog,
        holds: Holds,
        timers: QuietTimers,
        connected: Callable[[], bool] = lambda: True,
    ) -> None:
        self.settings = settings
        self._loop = loop
        self._instances = instances
        self._events = events
        self._holds = holds
        self._timers = timers
        self._connected = connected
        self._servers: list[GuardedServer] = []
        self._allowed: dict[str, frozenset[str] | None] | None = None
        # This process's name in its holds, and what it holds: association -> studies it sent,
        # study -> open associations that sent it; studies released but not yet recorded.
        self.holder = f"scp-{uuid.uuid4().hex[:12]}"
        self._lock = threading.Lock()
        self._sent_by: dict[Association, set[str]] = {}
        self._held: dict[str, int] = {}
        self._released: dict[str, datetime] = {}

    def start(self) -> int:
        """Start serving on DICOM_HOST at PORT (0: any free port), and at DICOM_TLS_PORT when
        TLS is configured; returns the port."""
        settings = self.settings
        host = settings.dicom_host
        tls = server_context(settings.dicom_tls_cert, settings.dicom_tls_key, settings.dicom_tls_ca)
        self._allowed = allowed_callers(settings.allowed_calling_aets)
        ae = AE(ae_title=settings.milvue_aet)
        ae.maximum_associations = settings.max_associations
        # Advertised to senders; a PDU declaring more is answered with an A-ABORT.
        ae.maximum_pdu_size = settings.max_pdu_bytes
        ae.acse_timeout = settings.scp_read_timeout_seconds  # connected, no request yet
        ae.network_timeout = settings.scp_idle_timeout_seconds
        ae.dimse_timeout = settings.scp_idle_timeout_seconds
        ae.require_called_aet = True
        ae.add_supported_context(Verification)
        for sop_class in PROFILES[settings.config_profile]:
            ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
        limits = Limits(
            read_timeout=settings.scp_read_timeout_seconds,
            max_pdu=settings.max_pdu_bytes,
            max_instance=settings.max_instance_bytes,
            per_host=settings.max_associations_per_host,
        )
        self._servers.append(self._serve(ae, (host, settings.port), "PORT", limits, None))
        port = int(self._servers[0].server_address[1])
        if tls is not None:
            tls_address = (host, settings.dicom_tls_port)
            self._servers.append(self._serve(ae, tls_address, "DICOM_TLS_PORT", limits, tls))
        log.info(
            "DICOM SCP listening",
            extra={
                "ae_title": settings.milvue_aet,
                "host": host,
                "port": port,
                "tls_port": settings.dicom_tls_port if tls else None,
                "client_certificate_required": bool(settings.dicom_tls_ca),
                "profile": settings.config_profile,
                "max_associations": settings.max_associations,
                "max_associations_per_host": settings.max_associations_per_host,
            },
        )
        if self._allowed is None:
            log.warning("ALLOWED_CALLING_AETS is not set: every calling AE title may store")
        else:
            log.info(
                "only known callers may store",
                extra={"allowed_calling_aets": list(settings.allowed_calling_aets)},
            )
        return port

    def _serve(
        self,
        ae: AE,
        address: tuple[str, int],
        setting: str,
        limits: Limits,
        tls: ssl.SSLContext | None,
    ) -> GuardedServer:
        try:
            server = ae.make_server(
                address,
                evt_handlers=[
                    (evt.EVT_REQUESTED, self._on_requested),
                    (evt.EVT_C_STORE, self._on_c_store),
                    (evt.EVT_C_ECHO, _on_c_echo),
                    (evt.EVT_REJECTED, _on_rejected),
                    (evt.EVT_ACCEPTED, self._on_accepted),
                    (evt.EVT_CONN_OPEN, _on_connected),
                    (evt.EVT_RELEASED, self._on_closed),
                    (evt.EVT_ABORTED, self._on_closed),
                    (evt.EVT_CONN_CLOSE, self._on_closed),
                ],
                server_class=GuardedServer,
                limits=limits,
                tls=tls,
            )
        except OSError as err:
            # A busy port names the port's setting; an address this host does not have, DICOM_HOST.
            which = "DICOM_HOST" if err.errno == errno.EADDRNOTAVAIL else setting
            raise StartupError(
                f"{which}: cannot listen on {address[0]}:{address[1]}: {err.strerror}"
            ) from None
        assert isinstance(server, GuardedServer)
        threading.Thread(target=server.serve_forever, name=f"scp-{setting}", daemon=True).start()
        ae._servers.append(server)  # as start_server does: shutdown() removes it
        return server

    def stop(self) -> None:
        while self._servers:
            self._servers.pop().shutdown()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the loop, waiting at most SCP_STORE_TIMEOUT_SECONDS; raises
        ConnectionError at once while NATS is disconnected."""
        if not self._connected():
            coro.close()
            raise ConnectionError("not connected to NATS")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(self.settings.scp_store_timeout_seconds)
        except FutureTimeout:
            future.cancel()  # nothing half-stored: an interrupted put discards its chunks
            raise

    # --- holds: which studies open associations are sending -----------------------------

    def _hold(self, assoc: Association, study: str) -> None:
        with self._lock:
            studies = self._sent_by.setdefault(assoc, set())
            if study in studies:
                return
            studies.add(study)
            self._held[study] = self._held.get(study, 0) + 1
            self._released.pop(study, None)
            count = self._held[study]
        # Recorded at once (best effort); the heartbeat keeps it, or records it later.
        self._spawn(self._write_hold(study, count, None))

    def _on_closed(self, event: DicomEvent) -> None:
        discard_spool(event.assoc)
        with self._lock:
            studies = self._sent_by.pop(event.assoc, set())
            for study in studies:
                self._held[study] -= 1
                if self._held[study] == 0:
                    del self._held[study]
                    self._released[study] = utc_now()
        if studies:
            self._spawn(self._write_releases())

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run `coro` on the loop without waiting for it (from an association's thread)."""
        try:
            asyncio.run_coroutine_threadsafe(coro, self._loop)
        except RuntimeError:  # the loop is closed: pacsor is stopping
            coro.close()

    def held_studies(self) -> dict[str, int]:
        with self._lock:
            return dict(self._held)

    async def _write_hold(self, study: str, count: int, released_at: datetime | None) -> bool:
        hold = Hold(
            holder=self.holder, associations=count, heartbeat_at=utc_now(), released_at=released_at
        )
        try:
            await self._holds.put(study, hold)
        except Exception as err:  # JetStream away: the next heartbeat writes it
            log.debug("hold not recorded yet", extra={"study": study, "error": repr(err)})
            return False
        return True

    async def _write_releases(self) -> None:
        with self._lock:
            released = dict(self._released)
        quiet = self.settings.quiet_period
        for study, at in released.items():
            if await self._write_hold(study, 0, at):
                with contextlib.suppress(Exception):  # the completion re-arms it anyway
                    await self._timers.arm(study, at + quiet)
                with self._lock:
                    if self._released.get(study) == at:
                        del self._released[study]

    async def keep_holds(self, stop: asyncio.Event) -> None:
        """Refresh the holds of the studies being received, until `stop`."""
        while not stop.is_set():
            for study, count in self.held_studies().items():
                await self._write_hold(study, count, None)
            await self._write_releases()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), HOLD_HEARTBEAT.total_seconds())

    def _on_accepted(self, event: DicomEvent) -> None:
        assoc = event.assoc
        accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
        refused = sorted({str(cx.abstract_syntax) for cx in assoc.rejected_contexts} - accepted)
        if not refused:
            return
        names = [UID(uid).name or uid for uid in refused]
        for name in names:
            CONTEXTS_REJECTED.labels(name).inc()
        log.warning(
            "presentation contexts refused: SOP classes outside CONFIG_PROFILE",
            extra={**_peer(assoc), "sop_classes": names, "profile": self.settings.config_profile},
        )

    # --- C-STORE ------------------------------------------------------------------------

    def _on_requested(self, event: DicomEvent) -> None:
        """Refuse a caller not in ALLOWED_CALLING_AETS before negotiating anything."""
        assoc = event.assoc
        request = assoc.requestor.primitive
        calling = str(getattr(request, "calling_ae_title", "") or "").strip()
        called = str(getattr(request, "called_ae_title", "") or "").strip()
        host = str(assoc.requestor.address)
        if self._allowed is None or is_allowed(self._allowed, calling, host):
            return
        # rejected-permanent, service user, calling AE title not recognised (PS3.8 9.3.4)
        assoc.acse.send_reject(0x01, 0x01, 0x03)
        ASSOCIATIONS_REJECTED.labels("calling_ae_title").inc()
        reason = "calling AE title not recognised"
        if calling in self._allowed:
            reason += f" from {host}"
        log.warning(
            "association rejected",
            extra={
                "calling_ae_title": calling,
                "called_ae_title": called,
                "address": f"{host}:{assoc.requestor.port}",
                "reason": f"{reason}: not in ALLOWED_CALLING_AETS",
            },
        )
        rejected = AssociationRejected(
            calling_ae_title=calling[:16],
            called_ae_title=called[:16],
            address=host,
            reason=reason,
            window=int(utc_now().timestamp() // 60),
        )
        try:
            self._run(self._events.publish(rejected))
        except Exception:
            # The caller is refused all the same; the log line above is the record.
            log.exception("AssociationRejected could not be published")
        assoc.kill()  # as pynetdicom does once it has rejected

    # --- C-STORE ------------------------------------------------------------------------

    def _on_c_store(self, event: DicomEvent) -> int | Dataset:
        calling = event.assoc.requestor.ae_title
        affected_class = str(event.request.AffectedSOPClassUID or "")
        limit = self.settings.max_instance_bytes
        try:
            # pynetdicom spooled the dataset (with a file meta group) to this file.
            path = event.dataset_path
            size = path.stat().st_size
            if is_overflow(event.request) or size > limit:
                raise Rejection(TOO_LARGE, f"instance over MAX_INSTANCE_BYTES ({limit} bytes)")
            identity = read_spooled(path, event.context.transfer_syntax, affected_class, limit)
            # Hashed while it was received; otherwise here, on the association's thread
            # (hashlib releases the GIL, and the event loop stays free for the JetStream
            # traffic of every association).
            digest = digest_notation(spooled_sha256(event.request) or file_sha256(path))
        except Truncated as err:
            return self._reject(Rejection(MALFORMED, f"malformed dataset: {err}"), calling)
        except Rejection as rejection:
            return self._reject(rejection, calling)
        except Exception as err:  # decoding the P-DATA itself failed
            return self._reject(Rejection(CANNOT_UNDERSTAND, f"unreadable dataset: {err}"), calling)

        # Held from now on, stored or not: the sender may be resending what was refused.
        self._hold(event.assoc, identity.study_uid)
        try:
            received = self._run(
                self._store(
                    identity, path, size, digest, str(event.context.transfer_syntax), calling
                )
            )
        except (FutureTimeout, TimeoutError, ConnectionError, OSError) as err:
            STORES_UNAVAILABLE.inc()
            log.warning(
                "JetStream unavailable; answering out of resources so the sender retries",
                extra={
                    "study": identity.study_uid,
                    "sop": identity.sop_instance_uid,
                    "error": repr(err),
                },
            )
            return _status(OUT_OF_RESOURCES, "storage temporarily unavailable, retry later")
        except Exception as err:
            log.exception("instance could not be stored", extra={"study": identity.study_uid})
            return _status(OUT_OF_RESOURCES, f"storage failed: {type(err).__name__}")
        log.debug("stored", extra={"study": received.study_uid, "sop": received.sop_instance_uid})
        return SUCCESS

    async def _store(
        self,
        identity: Identity,
        path: Path,
        size: int,
        digest: str,
        transfer_syntax: str,
        calling: str,
    ) -> InstanceReceived:
        name = instance_object_name(
            identity.study_uid, identity.sop_instance_uid, digest_hex(digest)
        )
        received = InstanceReceived(
            study_uid=identity.study_uid,
            series_instance_uid=identity.series_instance_uid,
            sop_instance_uid=identity.sop_instance_uid,
            sop_class_uid=identity.sop_class_uid,
            transfer_syntax_uid=transfer_syntax,
            modality=identity.modality,
            accession_number=identity.accession_number,
            study_date=identity.study_date,
            study_description=identity.study_description,
            calling_ae_title=calling,
            object_name=name,
            size=size,
            digest=digest,
        )
        # One round trip: the chunks, the object's metadata and the event go out back to
        # back and their acknowledgements are awaited together; success waits for them all.
        with path.open("rb") as spooled:
            written = await self._instances.publish_named(name, spooled, digest, size)
        try:
            received_ack = await self._events.publish_pending(received)
        except BaseException:
            await written.discard()
            raise
        await written.stored()  # False for an identical copy already stored: kept as it is
        ack = await received_ack
        self._events.logged(received, ack)
        if ack.duplicate:  # the same bytes again: new only if another version came between
            await self._events.received_again(received, int(ack.seq))
        return received

    def _reject(self, rejection: Rejection, calling: str) -> Dataset:
        study = rejection.identity.study_uid
        rejected = InstanceRejected(
            study_uid=study if is_valid_uid(study) else "",
            reason=rejection.reason,
            dimse_status=rejection.status,
            calling_ae_title=calling,
            sop_instance_uid=rejection.identity.sop_instance_uid[:64],
            rejection_id=uuid.uuid4().hex,
        )
        log.warning(
            "instance rejected",
            extra={
                "study": rejected.study_uid,
                "reason": rejection.reason,
                "status": f"0x{rejection.status:04X}",
                "calling_ae_title": calling,
            },
        )
        try:
            self._run(self._events.publish(rejected))
        except Exception:
            # The sender still gets its failure status; the log line above is the record.
            log.exception("InstanceRejected could not be published", extra={"study": study})
        return _status(rejection.status, rejection.reason)


def _status(code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]
    return status


def _on_connected(event: DicomEvent) -> None:
    # The C-STORE responses go out at once, not after the sender's delayed ACK.
    no_delay(event.assoc)


def _on_c_echo(event: DicomEvent) -> int:
    return SUCCESS


def _peer(assoc: Association) -> dict[str, Any]:
    requestor = assoc.requestor
    primitive = requestor.primitive
    return {
        "calling_ae_title": requestor.ae_title,
        "called_ae_title": getattr(primitive, "called_ae_title", "") if primitive else "",
        "address": f"{requestor.address}:{requestor.port}",
    }


def _on_rejected(event: DicomEvent) -> None:
    assoc = event.assoc
    rj = assoc.acceptor.primitive
    key = (getattr(rj, "result", 0), getattr(rj, "result_source", 0), getattr(rj, "diagnostic", 0))
    label, why = _REJECTIONS.get(key, ("other", f"rejected (result, source, diagnostic) {key}"))
    reason = why.format(aet=assoc.ae.ae_title, limit=assoc.ae.maximum_associations)
    ASSOCIATIONS_REJECTED.labels(label).inc()
    log.warning("association rejected", extra={**_peer(assoc), "reason": reason})


async def run(rt: Runtime, started: Started) -> None:
    scp = StorageScp(
        rt.settings,
        asyncio.get_running_loop(),
        rt.instances,
        rt.events,
        rt.holds,
        rt.timers,
        connected=lambda: rt.nc.is_connected,
    )
    port = await asyncio.to_thread(scp.start)
    try:
        ready: dict[str, Any] = {"dicom_port": port}
        if len(scp._servers) > 1:
            ready["dicom_tls_port"] = int(scp._servers[1].server_address[1])
        started(ready)
        await scp.keep_holds(rt.stop)
    finally:
        await asyncio.to_thread(scp.stop)
