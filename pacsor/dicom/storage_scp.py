"""The DICOM Storage SCP: C-STORE in, InstanceReceived out.

A C-STORE is answered success only once the instance's bytes are in the PACSOR_INSTANCES
bucket *and* its InstanceReceived event is in the PACSOR stream, both acknowledged by
JetStream: a success means the instance is durable. The bytes are stored exactly as received
(file meta + the dataset in its transfer syntax), never decoded and re-encoded.

pynetdicom serves each association on its own thread; the JetStream work runs on the asyncio
loop, and the association thread waits for it with a deadline.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Coroutine
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

import msgspec
from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.events import Event as DicomEvent
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from pacsor.config import ConfigError, Settings
from pacsor.dicom.profiles import PROFILES
from pacsor.dicom.structure import Truncated, check_whole, dataset_offset
from pacsor.domain.events import InstanceReceived, InstanceRejected
from pacsor.jetstream.blobs import BlobStore, sha256_digest
from pacsor.jetstream.eventlog import EventLog
from pacsor.jetstream.subjects import instance_object_name, is_valid_uid
from pacsor.runtime import Component, Runtime, Started

log = logging.getLogger("pacsor.scp")

T = TypeVar("T")

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700  # the sender should retry later
CANNOT_UNDERSTAND = 0xC210  # the dataset could not be decoded
MISSING_UID = 0xC220  # Study, Series or SOP Instance UID absent
INVALID_UID = 0xC221  # a UID that is not digits and dots
MALFORMED = 0xC222  # truncated: an element runs past the end of the dataset

JETSTREAM_DEADLINE = 15.0


class Identity(msgspec.Struct, frozen=True):
    """What a received dataset says it is; a rejected one may have empty or invalid UIDs."""

    study_instance_uid: str = ""
    series_instance_uid: str = ""
    sop_instance_uid: str = ""
    sop_class_uid: str = ""
    modality: str = ""
    # What operators search by; never the patient's name, ID or birth date.
    accession_number: str = ""
    study_date: str = ""
    study_description: str = ""


class Rejection(Exception):
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
            study_instance_uid=str(dataset.get("StudyInstanceUID", "") or "").strip("\0 "),
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
        (identity.study_instance_uid, "StudyInstanceUID"),
        (identity.series_instance_uid, "SeriesInstanceUID"),
        (identity.sop_instance_uid, "SOPInstanceUID"),
    ):
        if not uid:
            raise Rejection(MISSING_UID, f"{label} is missing", identity)
        if not is_valid_uid(uid):
            raise Rejection(INVALID_UID, f"{label} is not a valid UID: {uid[:64]!r}", identity)
    return identity


class StorageScp:
    def __init__(
        self,
        settings: Settings,
        loop: asyncio.AbstractEventLoop,
        instances: BlobStore,
        events: EventLog,
    ) -> None:
        self.settings = settings
        self._loop = loop
        self._instances = instances
        self._events = events
        self._server: ThreadedAssociationServer | None = None

    def start(self, host: str = "0.0.0.0") -> int:
        """Start serving on PORT (0: any free port); returns the port."""
        ae = AE(ae_title=self.settings.milvue_aet)
        ae.maximum_associations = 32
        ae.maximum_pdu_size = 0  # no limit: fewer, larger PDUs from senders that allow it
        ae.network_timeout = 60
        ae.dimse_timeout = 60
        ae.require_called_aet = True
        ae.add_supported_context(Verification)
        for sop_class in PROFILES[self.settings.config_profile]:
            ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
        try:
            server = ae.start_server(
                (host, self.settings.port),
                block=False,
                evt_handlers=[(evt.EVT_C_STORE, self._on_c_store), (evt.EVT_C_ECHO, _on_c_echo)],
            )
        except OSError as err:
            raise ConfigError(
                f"PORT: cannot listen on {self.settings.port}: {err.strerror}"
            ) from None
        assert server is not None  # block=False always returns the server
        self._server = server
        port = int(server.server_address[1])
        log.info(
            "DICOM SCP listening",
            extra={
                "ae_title": self.settings.milvue_aet,
                "port": port,
                "profile": self.settings.config_profile,
            },
        )
        return port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(JETSTREAM_DEADLINE)

    def _on_c_store(self, event: DicomEvent) -> int | Dataset:
        calling = event.assoc.requestor.ae_title
        affected_class = str(event.request.AffectedSOPClassUID or "")
        try:
            data = event.encoded_dataset(include_meta=True)
            syntax = event.context.transfer_syntax
            if not syntax.is_deflated:
                check_whole(
                    memoryview(data)[dataset_offset(data) :],
                    syntax.is_implicit_VR,
                    syntax.is_little_endian,
                )
            identity = identify(event.dataset, affected_class)
            # Hashed here, on the association's thread: hashlib releases the GIL, and the
            # event loop stays free for the JetStream traffic of every association.
            digest = sha256_digest(data)
        except Truncated as err:
            return self._reject(Rejection(MALFORMED, f"malformed dataset: {err}"), calling)
        except Rejection as rejection:
            return self._reject(rejection, calling)
        except Exception as err:  # decoding the P-DATA itself failed
            return self._reject(Rejection(CANNOT_UNDERSTAND, f"unreadable dataset: {err}"), calling)

        try:
            received = self._run(
                self._store(identity, data, digest, str(event.context.transfer_syntax), calling)
            )
        except (FutureTimeout, TimeoutError, ConnectionError, OSError) as err:
            log.warning(
                "JetStream unavailable; answering out of resources so the sender retries",
                extra={
                    "study": identity.study_instance_uid,
                    "sop": identity.sop_instance_uid,
                    "error": repr(err),
                },
            )
            return _status(OUT_OF_RESOURCES, "storage temporarily unavailable, retry later")
        except Exception as err:
            log.exception(
                "instance could not be stored", extra={"study": identity.study_instance_uid}
            )
            return _status(OUT_OF_RESOURCES, f"storage failed: {type(err).__name__}")
        log.debug(
            "stored", extra={"study": received.study_instance_uid, "sop": received.sop_instance_uid}
        )
        return SUCCESS

    async def _store(
        self, identity: Identity, data: bytes, digest: str, transfer_syntax: str, calling: str
    ) -> InstanceReceived:
        name = instance_object_name(identity.study_instance_uid, identity.sop_instance_uid)
        await self._instances.put(name, data, digest)
        received = InstanceReceived(
            study_instance_uid=identity.study_instance_uid,
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
            size=len(data),
            digest=digest,
        )
        await self._events.publish(received)
        return received

    def _reject(self, rejection: Rejection, calling: str) -> Dataset:
        study = rejection.identity.study_instance_uid
        rejected = InstanceRejected(
            study_instance_uid=study if is_valid_uid(study) else "",
            reason=rejection.reason,
            dimse_status=rejection.status,
            calling_ae_title=calling,
            sop_instance_uid=rejection.identity.sop_instance_uid[:64],
            rejection_id=uuid.uuid4().hex,
        )
        log.warning(
            "instance rejected",
            extra={
                "study": rejected.study_instance_uid,
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


def _on_c_echo(event: DicomEvent) -> int:
    return SUCCESS


async def run(rt: Runtime, started: Started) -> None:
    scp = StorageScp(rt.settings, asyncio.get_running_loop(), rt.instances, rt.events)
    port = await asyncio.to_thread(scp.start)
    try:
        started({"dicom_port": port})
        await rt.stop.wait()
    finally:
        await asyncio.to_thread(scp.stop)


COMPONENT = Component("scp", "C-STORE -> InstanceReceived / InstanceRejected", run)
