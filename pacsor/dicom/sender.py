"""C-STORE of objects kept in a bucket to one destination.

The objects are streamed from their bucket into a temporary folder (never the whole set in
memory), FETCHED_AT_ONCE at a time, then sent from the files, each in a transfer syntax the
destination accepted (pacsor.dicom.storage_scu), over TLS for a destination marked `?tls`.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import msgspec

from pacsor.config import Destination
from pacsor.dicom.storage_scu import store_files
from pacsor.domain.dispatch import NO_ANSWER
from pacsor.errors import TransientError
from pacsor.jetstream.blobs import BlobStore

log = logging.getLogger("pacsor.dispatch")

# Sets larger than this log their progress (`120/400 objects`) every tenth of the way.
PROGRESS_FROM = 50
# Objects read from the bucket at once: each read is a round trip or two to JetStream, which
# one after the other made most of a small study's dispatch; one chunk of each (512 KiB) is
# in memory at most.
FETCHED_AT_ONCE = 8


class SendError(TransientError):
    """No association could be made: nothing was sent."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Sent(msgspec.Struct, frozen=True):
    """(SOP Instance UID, DIMSE status) for every object, in order, and why objects were
    refused before any C-STORE (no transfer syntax in common, for instance)."""

    answers: list[tuple[str, int]]
    notes: tuple[str, ...] = ()


async def send_objects(
    destination: Destination,
    calling_ae_title: str,
    store: BlobStore,
    objects: Sequence[tuple[str, str]],
    timeout: float = 30.0,
    tls: ssl.SSLContext | None = None,
) -> Sent:
    """C-STORE every (object name, SOP Instance UID) over one association.

    The answers hold NO_ANSWER (-1) for the objects after the association was lost. Raises
    SendError when no association could be made, or when the destination is marked `?tls`
    and no TLS context is given.
    """
    if not objects:
        return Sent([])
    if destination.tls and tls is None:
        raise SendError(f"{destination.label}: no TLS context (DICOM_TLS_* settings)")
    with tempfile.TemporaryDirectory(prefix="pacsor-send-") as folder:
        files = {Path(folder) / f"{n}.dcm": sop_uid for n, (_, sop_uid) in enumerate(objects)}
        await _fetch_all(
            store, [(name, path) for (name, _), path in zip(objects, files, strict=True)]
        )
        try:
            stored = await asyncio.to_thread(
                store_files,
                destination.host,
                destination.port,
                destination.ae_title,
                list(files),
                calling_ae_title,
                timeout,
                tls if destination.tls else None,
                _progress(destination, len(files)),
            )
        except (ConnectionError, OSError, RuntimeError, ValueError) as err:
            raise SendError(f"{destination}: {err}") from err
    answered = dict(stored.results)
    return Sent(
        [(sop, answered.get(path, NO_ANSWER)) for path, sop in files.items()], stored.refusals
    )


async def _fetch_all(store: BlobStore, objects: Sequence[tuple[str, Path]]) -> None:
    """Write each (object name, file) from the bucket, FETCHED_AT_ONCE at a time."""
    queue = list(reversed(objects))

    async def fetch() -> None:
        while queue:
            name, path = queue.pop()
            with path.open("wb") as out:
                async for chunk in store.chunks(name):
                    out.write(chunk)

    readers = [asyncio.create_task(fetch()) for _ in range(min(FETCHED_AT_ONCE, len(objects)))]
    try:
        await asyncio.gather(*readers)
    except BaseException:
        # The first error is the one raised (BlobNotFound, ...), as one reader would; the
        # other readers are stopped first, their files left to the folder's removal.
        for reader in readers:
            reader.cancel()
        await asyncio.wait(readers)
        raise


def _progress(destination: Destination, total: int) -> Callable[[int, Path, int], None] | None:
    """Logs `120/400 objects` to `destination` as the C-STOREs are answered (large sets)."""
    if total <= PROGRESS_FROM:
        return None
    step = max(1, total // 10)

    def answered(n: int, _path: Path, _status: int) -> None:
        if n % step == 0 or n == total:
            log.info(
                "dispatch progress",
                extra={"peer": str(destination), "objects": f"{n}/{total}"},
            )

    return answered
