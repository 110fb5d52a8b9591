"""A real Orthanc (Debian's /usr/sbin/Orthanc) as the destination PACS, started by the test.

Each instance has its own generated configuration: free DICOM and HTTP ports on 127.0.0.1, a
storage folder of its own, no plugins, and the transfer syntaxes it accepts. A service the
Debian package may have started keeps its own ports and configuration: this one never reads
/etc/orthanc. What it stored, and in which syntax, is read over its REST API.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO

from tests.nats_server import free_port

ORTHANC = shutil.which("Orthanc", path="/usr/sbin:/usr/bin:/usr/local/bin")


class Orthanc:
    def __init__(
        self, folder: Path, accepted_syntaxes: list[str] | None = None, ae_title: str = "ORTHANC"
    ) -> None:
        self.folder = folder
        self.ae_title = ae_title
        self.port = free_port()
        self.http_port = free_port()
        self.accepted_syntaxes = accepted_syntaxes or ["1.2.840.10008.1.*"]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def destination(self) -> str:
        return f"{self.ae_title}@127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> Orthanc:
        assert ORTHANC is not None, "Orthanc is not installed (apt-get install orthanc)"
        storage = self.folder / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {
            "Name": "pacsor-test",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": self.http_port,
            "DicomPort": self.port,
            "DicomAet": self.ae_title,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "AcceptedTransferSyntaxes": self.accepted_syntaxes,
            # Stored as received: what the test asserts is what pacsor sent.
            "StorageCompression": False,
            "Plugins": [],
            "HttpServerEnabled": True,
        }
        path = self.folder / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        self.process = subprocess.Popen(
            [ORTHANC, str(path)],
            stdout=(self.folder / "orthanc.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            # Its REST API answers once the DICOM server is listening too.
            try:
                if httpx.get(f"{self.url}/system", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = (self.folder / "orthanc.log").read_text(errors="replace")[-2000:]
                self.stop()
                raise RuntimeError(f"Orthanc did not start:\n{log}")
            time.sleep(0.1)  # polling its readiness: it has no event to await

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
            self.process = None

    def instances(self) -> dict[str, str]:
        """SOP Instance UID -> the transfer syntax Orthanc stored it in."""
        stored: dict[str, str] = {}
        for orthanc_id in httpx.get(f"{self.url}/instances", timeout=10).json():
            tags = httpx.get(f"{self.url}/instances/{orthanc_id}/simplified-tags", timeout=10)
            syntax = httpx.get(
                f"{self.url}/instances/{orthanc_id}/metadata/TransferSyntax", timeout=10
            )
            stored[tags.json()["SOPInstanceUID"]] = syntax.text
        return stored

    def dataset(self, sop_uid: str) -> Dataset:
        """The stored file of one instance, read back."""
        found = httpx.post(f"{self.url}/tools/lookup", content=sop_uid, timeout=10).json()
        [orthanc_id] = [f["ID"] for f in found if f["Type"] == "Instance"]
        data = httpx.get(f"{self.url}/instances/{orthanc_id}/file", timeout=10).content
        return dcmread(DicomBytesIO(data))
