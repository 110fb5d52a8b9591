"""The baseline: a bare pynetdicom Storage SCP that only writes the received bytes to disk."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pynetdicom.events import Event

from pacsor.devtools.demo_pacs import start_storage_scp


def main(port: int, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)

    def on_store(event: Event) -> int:
        name = event.request.AffectedSOPInstanceUID
        (folder / f"{name}.dcm").write_bytes(event.encoded_dataset())
        return 0x0000

    # The same pynetdicom settings as pacsor's SCP: only the storage differs.
    start_storage_scp("MILVUE", port, on_store)
    threading.Event().wait()


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]))
