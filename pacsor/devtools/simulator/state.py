"""What the simulator received, shared between the server thread and the tests.

Instances are stored as files in a temporary directory (a study can be large); only their
UIDs and counters are kept in memory. Every method takes the lock, so tests may read while
the server writes.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

import msgspec


class StudySnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """A copy of what is known about one study at the time of the call."""

    study_uid: str
    instances: dict[str, int]  # SOP Instance UID -> times received, in first-upload order
    uploads: int  # accepted upload requests that carried this study
    status_polls: int
    result_requests: int
    findings_requests: int


@dataclass
class _Study:
    paths: dict[str, Path] = field(default_factory=dict)
    received: dict[str, int] = field(default_factory=dict)
    uploads: int = 0
    status_polls: int = 0
    result_requests: int = 0
    done_result_requests: int = 0
    findings_requests: int = 0


class SimulatorState:
    """Thread-safe record of uploads and requests; owns the directory of received files."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._studies: dict[str, _Study] = {}
        self._upload_requests = 0
        self._result_requests = 0
        self._root: Path | None = None
        self._closed = False

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Delete the received files; the counters stay readable."""
        with self._lock:
            root, self._root = self._root, None
            self._closed = True
            for study in self._studies.values():
                study.paths.clear()
        if root is not None:
            shutil.rmtree(root)

    # --- used by the app -------------------------------------------------------------------

    def staging_dir(self) -> Path:
        """Where the app writes files being received, created on first use."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the simulator state is closed; its files are gone")
            if self._root is None:
                self._root = Path(tempfile.mkdtemp(prefix="pacsor-simulator-"))
            return self._root

    def next_upload_request(self) -> int:
        """Count an upload request; returns its 0-based rank (to pick an injected fault)."""
        with self._lock:
            self._upload_requests += 1
            return self._upload_requests - 1

    def next_result_request(self) -> int:
        """Count a result request; returns its 0-based rank (to pick an injected fault)."""
        with self._lock:
            self._result_requests += 1
            return self._result_requests - 1

    def store(self, study_uid: str, files: list[tuple[str, Path]]) -> None:
        """Record one accepted upload: (SOP Instance UID, staged file) pairs, moved in place."""
        root = self.staging_dir()
        with self._lock:
            study = self._studies.setdefault(study_uid, _Study())
            study.uploads += 1
            for sop_uid, staged in files:
                target = root / _digest(study_uid) / f"{_digest(sop_uid)}.dcm"
                target.parent.mkdir(exist_ok=True)
                staged.replace(target)  # a re-sent instance replaces the previous copy
                study.paths[sop_uid] = target
                study.received[sop_uid] = study.received.get(sop_uid, 0) + 1

    def knows(self, study_uid: str) -> bool:
        with self._lock:
            return study_uid in self._studies

    def poll_status(self, study_uid: str) -> int | None:
        """Count a status poll; returns how many polls came before it, None if unknown."""
        with self._lock:
            study = self._studies.get(study_uid)
            if study is None:
                return None
            study.status_polls += 1
            return study.status_polls - 1

    def status_polls(self, study_uid: str) -> int:
        with self._lock:
            return self._studies[study_uid].status_polls

    def count_result_request(self, study_uid: str, done: bool) -> int:
        """Count a result request; returns how many came before it since the study is done."""
        with self._lock:
            study = self._studies[study_uid]
            study.result_requests += 1
            if not done:
                return 0
            study.done_result_requests += 1
            return study.done_result_requests - 1

    def count_findings_request(self, study_uid: str) -> None:
        with self._lock:
            self._studies[study_uid].findings_requests += 1

    def instance_paths(self, study_uid: str) -> list[tuple[str, Path]]:
        """(SOP Instance UID, file) of a study's instances, in the order first received."""
        with self._lock:
            return list(self._studies[study_uid].paths.items())

    # --- used by tests ---------------------------------------------------------------------

    def study(self, study_uid: str) -> StudySnapshot | None:
        with self._lock:
            study = self._studies.get(study_uid)
            if study is None:
                return None
            return StudySnapshot(
                study_uid=study_uid,
                instances=dict(study.received),
                uploads=study.uploads,
                status_polls=study.status_polls,
                result_requests=study.result_requests,
                findings_requests=study.findings_requests,
            )

    def study_uids(self) -> list[str]:
        with self._lock:
            return list(self._studies)

    @property
    def upload_requests(self) -> int:
        """Authenticated upload requests, including those refused (fault, bad body)."""
        with self._lock:
            return self._upload_requests


def _digest(uid: str) -> str:
    # UIDs from the outside world are not always valid file names; their hash is.
    return hashlib.sha256(uid.encode()).hexdigest()[:32]
