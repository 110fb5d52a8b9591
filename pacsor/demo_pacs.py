"""A small receiving PACS for the demo: a Storage SCP that writes each object to a folder."""

from __future__ import annotations

import logging
from pathlib import Path

from pynetdicom import ALL_TRANSFER_SYNTAXES, AE, evt
from pynetdicom.events import Event as DicomEvent
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

log = logging.getLogger("pacsor.demo_pacs")


def start_folder_pacs(folder: Path, ae_title: str, port: int, host: str = "127.0.0.1") -> ThreadedAssociationServer:
    """Serve C-STORE on host:port, writing `<folder>/<study>/<sop>.dcm`; returns the server."""
    folder.mkdir(parents=True, exist_ok=True)

    def on_store(event: DicomEvent) -> int:
        ds = event.dataset
        target = folder / str(ds.StudyInstanceUID) / f"{ds.SOPInstanceUID}.dcm"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(event.encoded_dataset())
        log.info("demo PACS stored", extra={"study": str(ds.StudyInstanceUID), "path": str(target)})
        return 0x0000

    ae = AE(ae_title=ae_title)
    ae.add_supported_context(Verification)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    return ae.start_server(
        (host, port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
