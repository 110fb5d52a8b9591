"""C-STORE of objects kept in a bucket to one destination.

The objects are streamed from their bucket into a temporary folder (never the whole set in
memory), then sent from the files as they are encoded.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Sequence
from pathlib import Path

from pacsor.config import Destination
from pacsor.dicom.storage_scu import send_files
from pacsor.jetstream.blobs import BlobStore

# 0xB000, 0xB006, 0xB007: stored, with a warning (coercion, elements discarded).
STORED_STATUSES = {0x0000, 0xB000, 0xB006, 0xB007}


class SendError(Exception):
    def __init__(self, reason: str, delivered: Sequence[str]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delivered = tuple(delivered)


async def send_objects(
    destination: Destination,
    calling_ae_title: str,
    store: BlobStore,
    objects: Sequence[tuple[str, str]],
    timeout: float = 30.0,
) -> tuple[str, ...]:
    """C-STORE every (object name, SOP Instance UID); returns the delivered UIDs in order.

    Raises SendError, carrying what was delivered before the failure.
    """
    if not objects:
        return ()
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
            )
        except (ConnectionError, OSError, RuntimeError, ValueError) as err:
            raise SendError(f"{destination}: {err}", ()) from err
    delivered: list[str] = []
    for path, status in results:
        if status not in STORED_STATUSES:
            text = "no answer" if status == -1 else f"status 0x{status:04X}"
            raise SendError(f"{destination}: C-STORE of {files[path]}: {text}", delivered)
        delivered.append(files[path])
    if len(delivered) < len(files):
        raise SendError(f"{destination}: association ended early", delivered)
    return tuple(delivered)
