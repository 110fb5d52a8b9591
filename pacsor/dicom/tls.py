"""DICOM over TLS as a client (PS3.15 Annex B, secure transport): the context a destination
marked `?tls` is reached with, and why a TLS association failed, in words.

DICOM_TLS_CA verifies the PACS's certificate (unset: the system's trusted authorities), and
its host name or address must match the destination's; DICOM_TLS_CERT and DICOM_TLS_KEY are
the certificate pacsor presents when the PACS asks for one. TLS 1.2 or newer.
"""

from __future__ import annotations

import contextlib
import socket
import ssl

from pacsor.config import ConfigError, Settings


def client_context(ca: str = "", cert: str = "", key: str = "") -> ssl.SSLContext:
    """The client context; a file that cannot be read is a ConfigError naming its setting."""
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca or None)
    except (OSError, ssl.SSLError) as err:
        raise ConfigError(f"DICOM_TLS_CA: cannot read {ca!r} as certificates ({err})") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert:
        try:
            context.load_cert_chain(cert, key or None)
        except (OSError, ssl.SSLError) as err:
            raise ConfigError(
                f"DICOM_TLS_CERT: cannot load {cert!r} with DICOM_TLS_KEY {key!r} ({err})"
            ) from None
    return context


def dispatch_context(settings: Settings) -> ssl.SSLContext | None:
    """The context for the destinations marked `?tls`; None when there is none."""
    if not any(d.tls for core in settings.cores for d in core.destinations):
        return None
    return client_context(settings.dicom_tls_ca, settings.dicom_tls_cert, settings.dicom_tls_key)


def diagnose(host: str, port: int, context: ssl.SSLContext, timeout: float) -> str:
    """Why no TLS association could be made: the handshake tried again on its own, since
    pynetdicom only logs its error."""
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            # With TLS 1.3 the server judges pacsor's certificate after the client's side of
            # the handshake: its refusal is the first thing read.
            tls.settimeout(min(timeout, 2.0))
            with contextlib.suppress(TimeoutError):  # silent: it waits for our A-ASSOCIATE
                tls.recv(1)
            return "TLS handshake succeeded, then the association was refused or cut"
    except ssl.SSLCertVerificationError as err:
        return f"TLS: the peer's certificate is not trusted ({err.verify_message})"
    except ssl.SSLError as err:
        return f"TLS handshake failed ({err.reason or err})"
    except OSError as err:
        return f"refused or unreachable ({err.strerror or err})"
