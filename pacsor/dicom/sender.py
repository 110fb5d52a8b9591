"""C-STORE of objects kept in a bucket to one destination.

The objects are streamed from their bucket into a temporary folder (never the whole set in
memory), then sent from the files as they are encoded.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from pacsor.config import Destination
from pacsor.dicom.storage_scu import send_files
from pacsor.domain.dispatch import NO_ANSWER
from pacsor.errors import TransientError
from pacsor.jetstream.blobs import BlobStore

log = logging.getLogger("pacsor.dispatch")
# A dispatch of more objects than this says how far it got, every tenth of the way.
PROGRESS_FROM = 50


class SendError(TransientError):
    """No association could be made: nothing was sent."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def send_objects(
    destination: Destination,
    calling_ae_title: str,
    store: BlobStore,
    objects: Sequence[tuple[str, str]],
    timeout: float = 30.0,
) -> list[tuple[str, int]]:
    """C-STORE every (object name, SOP Instance UID) over one association.

    Returns (SOP Instance UID, DIMSE status) for every object, in order: NO_ANSWER (-1) for
    the objects after the association was lost. Raises SendError when no association could
    be made.
    """
    if not objects:
        return []
    with tempfile.TemporaryDirectory(prefix="pacsor-send-") as folder:
        files: dict[Path, str] = {}
        for index, (name, sop_uid) in enumerate(objects):
            path = Path(folder) / f"{index}.dcm"
            with path.open("wb") as out:
                async for chunk in store.chunks(name):
                    out.write(chunk)
            files[path] = sop_uid
        try:
            results = await asyncio.to_thread(
                send_files,
                destination.host,
                destination.port,
                destination.ae_title,
                list(files),
                calling_ae_title,
                timeout,
                _progress(destination, len(files)),
            )
        except (ConnectionError, OSError, RuntimeError, ValueError) as err:
            raise SendError(f"{destination}: {err}") from err
    answered = {path: status for path, status in results}
    return [(sop, answered.get(path, NO_ANSWER)) for path, sop in files.items()]


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
