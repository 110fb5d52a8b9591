"""The SCP's network edge: what a hostile peer meets before any DICOM is decoded.

pynetdicom reads a PDU by its declared length (up to 4 GiB) with no deadline, wraps TLS
sockets on its accept loop (a silent client there stalls every other TLS caller), and lets its
reading thread run ahead of the association without bound. Here:

- every PDU is read within SCP_READ_TIMEOUT_SECONDS of its first byte, and one declaring more
  than MAX_PDU_BYTES is answered with an A-ABORT before its body is read;
- the reading thread waits while a few PDUs are queued unprocessed, so a sender that does not
  wait for its C-STORE responses meets TCP back-pressure, not a growing queue;
- a received dataset is spooled to a file (pynetdicom's STORE_RECV_CHUNKED_DATASET) and hashed
  as it is written, so the C-STORE handler never reads it once more to name it; past
  MAX_INSTANCE_BYTES the rest is discarded, and the C-STORE is answered with a failure status;
- the TLS handshake runs on the connection's own thread, within the read deadline;
- an address with MAX_ASSOCIATIONS_PER_HOST open associations gets an A-ASSOCIATE-RJ
  (transient, local limit exceeded) before its request is even read.

Each connection cut off is logged once (pacsor.scp) and counted (SCP_CONNECTIONS_DROPPED).
"""

from __future__ import annotations

import hashlib
import logging
import socket
import ssl
import struct
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pynetdicom import _config, dimse_messages
from pynetdicom.association import Association
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from pacsor.errors import ConfigError
from pacsor.process.counters import ASSOCIATIONS_REJECTED, SCP_CONNECTIONS_DROPPED

log = logging.getLogger("pacsor.scp")

# Received datasets go to a temporary file as they arrive, never whole in memory.
_config.STORE_RECV_CHUNKED_DATASET = True

# A-ABORT (PS3.8 9.3.8): source 2 (service provider), reason 0 (not specified) or 6 (invalid
# PDU parameter value).
_ABORT = bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 0x02, 0x00])
_ABORT_INVALID_PDU = bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 0x02, 0x06])
# A-ASSOCIATE-RJ (PS3.8 9.3.4): rejected-transient, service provider (presentation), local
# limit exceeded; what pynetdicom answers at MAX_ASSOCIATIONS.
_REJECT_LOCAL_LIMIT = bytes([0x03, 0, 0, 0, 0, 4, 0, 0x02, 0x03, 0x02])
# PDUs read but not yet handled by the association, before the reader waits.
_QUEUED_PDUS = 4


@dataclass(frozen=True)
class Limits:
    read_timeout: float
    max_pdu: int
    max_instance: int
    per_host: int  # applies only when below the AE's maximum_associations


class HashedSpool:
    """A dataset's spool file that hashes what pynetdicom writes to it (preamble, file meta,
    then each P-DATA fragment), on the reading thread while the next fragments are still
    arriving: the handler has the file's digest without reading it again.

    pynetdicom writes `file.write(...)` then `file.file.flush()`, then closes it and unlinks
    `name` once the C-STORE is answered; the real file goes with it.
    """

    def __init__(self, spooled: Any) -> None:
        self._spooled = spooled
        self._sha = hashlib.sha256()
        self.name: str = spooled.name
        self.file = self

    def write(self, data: bytes) -> int:
        self._sha.update(data)
        return int(self._spooled.write(data))

    def flush(self) -> None:
        self._spooled.file.flush()

    def tell(self) -> int:
        return int(self._spooled.tell())

    def close(self) -> None:
        self._spooled.close()

    def sha256(self) -> bytes:
        """The SHA-256 of the bytes written so far."""
        return self._sha.digest()


def _hashed_spool(*args: Any, **kwargs: Any) -> HashedSpool:
    return HashedSpool(tempfile.NamedTemporaryFile(*args, **kwargs))


# pynetdicom opens a C-STORE's spool file through this name, in one place (decode_msg), and
# writes it only through `write` and `file.flush`: given a hashing file, the SCP knows each
# instance's digest when its last fragment arrives. spooled_sha256() falls back to None if
# a pynetdicom release spools otherwise, and the handler then reads the file to hash it.
dimse_messages.NamedTemporaryFile = _hashed_spool  # type: ignore[attr-defined,assignment]


def spooled_sha256(request: Any) -> bytes | None:
    """The SHA-256 of a C-STORE request's spool file, hashed while it was received, or None
    when it was spooled without hashing (or went past MAX_INSTANCE_BYTES)."""
    spooled = getattr(request, "_dataset_file", None)
    return spooled.sha256() if isinstance(spooled, HashedSpool) else None


class Overflow:
    """Takes the place of a spool file that reached MAX_INSTANCE_BYTES: counts, keeps nothing.

    pynetdicom writes `file.write(...)` then `file.file.flush()`, closes it, and unlinks
    `name` once the C-STORE is answered; the real file is closed with it.
    """

    def __init__(self, spooled: Any) -> None:
        self._spooled = spooled
        self.name: str = spooled.name
        self.file = self
        self.size = int(spooled.tell())

    def write(self, data: bytes) -> int:
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self._spooled.close()


def is_overflow(request: Any) -> bool:
    """Whether the C-STORE request's dataset went past MAX_INSTANCE_BYTES while received."""
    return isinstance(getattr(request, "_dataset_file", None), Overflow)


def received_instance(event: Any) -> bytes:
    """A C-STORE's instance as received (preamble, file meta, dataset), whether pynetdicom
    spooled it (as it does in any process that runs pacsor's SCP) or kept it in memory."""
    path = getattr(event.request, "_dataset_path", None)
    if path is None:
        return bytes(event.encoded_dataset())
    return Path(path).read_bytes()


def discard_spool(assoc: Association) -> None:
    """Remove the spool file of a dataset whose association ended before it was complete
    (pynetdicom removes only those of C-STOREs it answered)."""
    message = getattr(assoc.dimse, "message", None)
    spooled = getattr(message, "_data_set_file", None)
    if spooled is None:
        return
    spooled.close()
    Path(spooled.name).unlink(missing_ok=True)


def _peer_address(assoc: Association) -> str:
    return f"{assoc.requestor.address}:{assoc.requestor.port}"


class _CutOff(threading.local):
    """Set on the reading thread once it has logged why it cut a connection off, so
    pynetdicom's own error and traceback for that read are not logged as well."""

    done = False


_cut_off = _CutOff()


class _AfterCutOff(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _cut_off.done


logging.getLogger("pynetdicom.dul").addFilter(_AfterCutOff())


class BoundedSocket(AssociationSocket):
    """pynetdicom's association socket with a deadline and a size bound on each PDU read."""

    limits: Limits

    def recv(self, nr_bytes: int) -> bytearray:
        sock = self.socket
        assert sock is not None
        if nr_bytes > self.limits.max_pdu:
            self._cut(
                "pdu_too_large",
                f"a PDU of {nr_bytes} bytes, over MAX_PDU_BYTES ({self.limits.max_pdu})",
                _ABORT_INVALID_PDU,
            )
            raise OSError("PDU too large")
        deadline = time.monotonic() + self.limits.read_timeout
        self._wait_for_association(deadline)
        self._cap_spool()
        data = bytearray()
        while len(data) < nr_bytes:
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise TimeoutError
                sock.settimeout(remaining)
                chunk = sock.recv(min(nr_bytes - len(data), 65536))
            except TimeoutError:
                self._cut(
                    "read_timeout",
                    f"{len(data)} of {nr_bytes} bytes of a PDU in "
                    f"{self.limits.read_timeout:g} s (SCP_READ_TIMEOUT_SECONDS)",
                    _ABORT,
                )
                raise
            if not chunk:  # the peer closed: pynetdicom sees a short read
                return data
            data += chunk
        return data

    def _wait_for_association(self, deadline: float) -> None:
        """Back-pressure: read no further while the association is behind."""
        queue = self.assoc.dul.to_user_queue
        while queue.qsize() >= _QUEUED_PDUS and time.monotonic() < deadline:
            time.sleep(0.005)  # queue.Queue offers no wait-until-shorter

    def _cap_spool(self) -> None:
        message = getattr(self.assoc.dimse, "message", None)
        spooled = getattr(message, "_data_set_file", None)
        if spooled is None or isinstance(spooled, Overflow):
            return
        if spooled.tell() > self.limits.max_instance:
            # The rest of this dataset is counted, not kept; the C-STORE gets a failure status.
            message._data_set_file = Overflow(spooled)  # type: ignore[union-attr]

    def _cut(self, reason: str, why: str, pdu: bytes) -> None:
        """Log and count why the connection ends, and tell the peer with an A-ABORT."""
        SCP_CONNECTIONS_DROPPED.labels(reason).inc()
        log.warning(
            "connection cut off",
            extra={
                "reason": why,
                "calling_ae_title": self.assoc.requestor.ae_title or "",
                "address": _peer_address(self.assoc),
            },
        )
        _cut_off.done = True
        sock = self.socket
        if sock is not None:
            try:
                sock.settimeout(1.0)
                sock.sendall(pdu)
            except OSError as err:  # the peer is gone or not reading: closing is what is left
                log.debug("A-ABORT not sent", extra={"error": repr(err)})


class GuardedHandler(RequestHandler):
    server: GuardedServer

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        sock = assoc.dul.socket
        assert isinstance(sock, AssociationSocket)
        # Same object, bounded reads: pynetdicom builds the socket inside this method.
        sock.__class__ = BoundedSocket
        assert isinstance(sock, BoundedSocket)
        sock.limits = self.server.limits
        return assoc


class GuardedServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with TLS handshakes and the per-address cap moved to
    each connection's own thread."""

    limits: Limits

    def __init__(
        self,
        ae: Any,
        address: tuple[str, int],
        ae_title: str,
        contexts: list[Any],
        ssl_context: ssl.SSLContext | None = None,
        evt_handlers: list[Any] | None = None,
        *,
        limits: Limits,
        tls: ssl.SSLContext | None,
    ) -> None:
        self.limits = limits
        # Not given to pynetdicom, which would handshake on the accept loop.
        self._tls = tls or ssl_context
        self._admit = threading.Lock()
        self._refusing: dict[str, int] = {}
        super().__init__(
            ae, address, ae_title, contexts, None, evt_handlers, request_handler=GuardedHandler
        )

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        client, address = self.socket.accept()
        client.settimeout(self.limits.read_timeout)
        if self._tls is not None:
            client = self._tls.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        return client, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        host, port = str(client_address[0]), int(client_address[1])
        try:
            if isinstance(request, ssl.SSLSocket) and not self._handshake(request, host, port):
                return
            with self._admit:
                if not self._over_host_limit(host):
                    # Starts the association's thread, which counts from then on.
                    self.finish_request(request, client_address)
                    return
                # Refusals in progress are bounded too: past that, the connection is closed.
                answer = self._refusing.get(host, 0) < self.limits.per_host
                if answer:
                    self._refusing[host] = self._refusing.get(host, 0) + 1
            try:
                self._refuse(request, host, port, answer)
            finally:
                if answer:
                    with self._admit:
                        self._refusing[host] -= 1
                        if not self._refusing[host]:
                            del self._refusing[host]
        except Exception:
            self.handle_error(request, client_address)
            self.shutdown_request(request)

    def _handshake(self, request: ssl.SSLSocket, host: str, port: int) -> bool:
        try:
            request.do_handshake()
        except (ssl.SSLError, OSError) as err:
            SCP_CONNECTIONS_DROPPED.labels("tls_handshake").inc()
            reason = getattr(err, "reason", None) or type(err).__name__
            log.warning(
                "TLS handshake failed",
                extra={"address": f"{host}:{port}", "reason": str(reason)[:120]},
            )
            self.shutdown_request(request)
            return False
        return True

    def _over_host_limit(self, host: str) -> bool:
        if self.limits.per_host >= self.ae.maximum_associations:
            return False  # MAX_ASSOCIATIONS is the tighter bound: pynetdicom applies it
        open_here = sum(
            1
            for assoc in self.ae.active_associations
            if assoc.is_acceptor and assoc.requestor.address == host
        )
        return open_here >= self.limits.per_host

    def _refuse(self, request: socket.socket, host: str, port: int, answer: bool) -> None:
        """Answer the association request with an A-ASSOCIATE-RJ (transient, local limit
        exceeded), or only close the connection when `answer` is False."""
        ASSOCIATIONS_REJECTED.labels("host_limit").inc()
        log.warning(
            "association rejected",
            extra={
                "calling_ae_title": "",
                "address": f"{host}:{port}",
                "reason": f"{self.limits.per_host} open from {host}: "
                "MAX_ASSOCIATIONS_PER_HOST reached",
            },
        )
        try:
            if answer and self._skip_request(request):
                request.sendall(_REJECT_LOCAL_LIMIT)
            request.shutdown(socket.SHUT_WR)
            # Read until the peer closes, so closing does not reset the connection before the
            # peer has read the rejection.
            request.settimeout(1.0)
            for _ in range(16):
                if not request.recv(65536):
                    break
        except OSError as err:
            log.debug("rejection not delivered", extra={"error": repr(err)})
        finally:
            self.shutdown_request(request)

    def _skip_request(self, request: socket.socket) -> bool:
        """Read and discard the peer's A-ASSOCIATE-RQ within the read deadline (a peer
        rejected before it has sent its request may not see the rejection)."""
        deadline = time.monotonic() + self.limits.read_timeout

        def receive(count: int, keep: bool) -> bytes:
            kept = bytearray()
            while count > 0:
                request.settimeout(max(deadline - time.monotonic(), 0.001))
                chunk = request.recv(min(count, 65536))
                if not chunk:
                    break
                count -= len(chunk)
                if keep:
                    kept += chunk
            return bytes(kept)

        header = receive(6, keep=True)
        if len(header) < 6 or header[0] != 0x01:
            return False
        (length,) = struct.unpack(">I", header[2:])
        receive(min(length, self.limits.max_pdu), keep=False)
        return True


def server_context(
    cert_file: str | Path | None, key_file: str | Path | None, ca_file: str | Path | None
) -> ssl.SSLContext | None:
    """The SCP's TLS context from DICOM_TLS_CERT/KEY/CA (None when unset; "" is unset); a bad
    setting is a ConfigError naming it."""
    cert, key, ca = (Path(f) if f else None for f in (cert_file, key_file, ca_file))
    if cert is None and key is None:
        if ca is not None:
            raise ConfigError("DICOM_TLS_CA: set, but DICOM_TLS_CERT and DICOM_TLS_KEY are not")
        return None
    if cert is None or key is None:
        missing, given = ("DICOM_TLS_CERT", "KEY") if cert is None else ("DICOM_TLS_KEY", "CERT")
        raise ConfigError(f"{missing}: not set (DICOM_TLS_{given} is); TLS needs both")
    texts = {}
    for name, path in (("DICOM_TLS_CERT", cert), ("DICOM_TLS_KEY", key), ("DICOM_TLS_CA", ca)):
        if path is None:
            continue
        try:
            texts[name] = path.read_bytes()
        except OSError as err:
            raise ConfigError(f"{name}: cannot read {path}: {err.strerror}") from None
    if b"-----BEGIN CERTIFICATE-----" not in texts["DICOM_TLS_CERT"]:
        raise ConfigError(f"DICOM_TLS_CERT: {cert} is not a PEM certificate")
    if b"PRIVATE KEY-----" not in texts["DICOM_TLS_KEY"]:
        raise ConfigError(f"DICOM_TLS_KEY: {key} is not a PEM private key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as err:
        raise ConfigError(
            f"DICOM_TLS_KEY: {key} does not go with DICOM_TLS_CERT {cert} ({err.reason})"
        ) from None
    if ca is not None:
        try:
            context.load_verify_locations(cafile=ca)
        except ssl.SSLError as err:
            raise ConfigError(
                f"DICOM_TLS_CA: {ca} is not a PEM CA certificate ({err.reason})"
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context
