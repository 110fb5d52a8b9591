"""The baseline: a bare pynetdicom Storage SCP that only writes the received bytes to disk."""

from __future__ import annotations

import sys
from pathlib import Path

from pynetdicom import ALL_TRANSFER_SYNTAXES, AE, evt
from pynetdicom.events import Event
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification


def main(port: int, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)

    def on_store(event: Event) -> int:
        name = event.request.AffectedSOPInstanceUID
        (folder / f"{name}.dcm").write_bytes(event.encoded_dataset())
        return 0x0000

    ae = AE(ae_title="MILVUE")
    ae.maximum_associations = 32
    ae.maximum_pdu_size = 0
    ae.add_supported_context(Verification)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.start_server(("127.0.0.1", port), block=True, evt_handlers=[(evt.EVT_C_STORE, on_store)])


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]))
