"""A receiving PACS for the demo (and the tests' and benchmark's peers): a Storage SCP."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.events import Event as DicomEvent
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from pacsor.dicom.scp_transport import received_instance

log = logging.getLogger("pacsor.demo_pacs")


def start_storage_scp(
    ae_title: str, port: int, on_store: Callable[[DicomEvent], int], host: str = "127.0.0.1"
) -> ThreadedAssociationServer:
    """Serve C-ECHO and C-STORE of every storage SOP class in every transfer syntax."""
    ae = AE(ae_title=ae_title)
    ae.maximum_associations = 32
    ae.maximum_pdu_size = 0
    ae.add_supported_context(Verification)
    for context in AllStoragePresentationContexts:
        assert context.abstract_syntax is not None
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    server = ae.start_server((host, port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert server is not None  # block=False always returns the server
    return server


def start_folder_pacs(
    folder: Path, ae_title: str, port: int, host: str = "127.0.0.1"
) -> ThreadedAssociationServer:
    """A PACS writing each received object to `<folder>/<study>/<sop>.dcm`."""
    folder.mkdir(parents=True, exist_ok=True)

    def on_store(event: DicomEvent) -> int:
        ds = event.dataset
        target = folder / str(ds.StudyInstanceUID) / f"{ds.SOPInstanceUID}.dcm"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(received_instance(event))
        log.info("demo PACS stored", extra={"study": str(ds.StudyInstanceUID), "path": str(target)})
        return 0x0000

    return start_storage_scp(ae_title, port, on_store, host)
