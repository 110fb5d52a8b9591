"""What the simulator received, shared between the server thread and the tests.

Instances are stored as files in a temporary directory (a study can be large); only their
UIDs and counters are kept in memory. Every method takes the lock, so tests may read while
the server writes.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
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
    awaiting_put: tuple[str, ...] = ()  # SOP Instance UIDs announced with signed_url=true
    headers_received: int = 0  # instances posted without pixel data (signed_url=true)


class SignedUpload(msgspec.Struct, frozen=True):
    """What a signed upload URL is for."""

    study_uid: str
    sop_uid: str


class SignedResult(msgspec.Struct, frozen=True):
    """What a signed result URL serves."""

    study_uid: str
    sop_uid: str
    inference_command: str
    number: int


@dataclass
class _Study:
    paths: dict[str, Path] = field(default_factory=dict)
    received: dict[str, int] = field(default_factory=dict)
    uploads: int = 0
    status_polls: int = 0
    result_requests: int = 0
    done_result_requests: int = 0
    findings_requests: int = 0
    awaiting_put: set[str] = field(default_factory=set)
    headers_received: int = 0


class SimulatorState:
    """Thread-safe record of uploads and requests; owns the directory of received files."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._studies: dict[str, _Study] = {}
        self._upload_requests = 0
        self._result_requests = 0
        self._put_requests = 0
        self._puts_in_flight = 0
        self._max_puts_in_flight = 0
        self._status_requests = 0
        self._cut_requests = 0
        self._signed_uploads: dict[str, SignedUpload] = {}
        self._signed_results: dict[str, SignedResult] = {}
        self._arrivals: list[float] = []
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

    def next_put_request(self) -> int:
        """Count a PUT to a signed URL; returns its 0-based rank."""
        with self._lock:
            self._put_requests += 1
            return self._put_requests - 1

    @contextlib.contextmanager
    def put_in_flight(self) -> Iterator[None]:
        """Count a PUT as in flight while it is being answered."""
        with self._lock:
            self._puts_in_flight += 1
            self._max_puts_in_flight = max(self._max_puts_in_flight, self._puts_in_flight)
        try:
            yield
        finally:
            with self._lock:
                self._puts_in_flight -= 1

    def next_status_request(self) -> int:
        """Count a status request; returns its 0-based rank."""
        with self._lock:
            self._status_requests += 1
            return self._status_requests - 1

    def next_cut(self) -> int:
        """Count an upload request that may have its connection cut; its 0-based rank."""
        with self._lock:
            self._cut_requests += 1
            return self._cut_requests - 1

    def expect_puts(self, study_uid: str, sop_uids: list[str]) -> dict[str, str]:
        """Record instances posted without pixel data: a new secret token for each one."""
        tokens: dict[str, str] = {}
        with self._lock:
            study = self._studies.setdefault(study_uid, _Study())
            study.uploads += 1
            study.headers_received += len(sop_uids)
            for sop_uid in sop_uids:
                token = secrets.token_urlsafe(24)
                self._signed_uploads[token] = SignedUpload(study_uid, sop_uid)
                study.awaiting_put.add(sop_uid)
                tokens[sop_uid] = token
        return tokens

    def signed_upload(self, token: str) -> SignedUpload | None:
        with self._lock:
            return self._signed_uploads.get(token)

    def sign_result(self, result: SignedResult) -> str:
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._signed_results[token] = result
        return token

    def signed_result(self, token: str) -> SignedResult | None:
        with self._lock:
            return self._signed_results.get(token)

    def awaiting_put(self, study_uid: str) -> bool:
        """Whether an instance announced with signed_url=true has not been PUT yet."""
        with self._lock:
            study = self._studies.get(study_uid)
            return study is not None and bool(study.awaiting_put)

    def store(self, study_uid: str, files: list[tuple[str, Path]], put: bool = False) -> None:
        """Record one accepted upload: (SOP Instance UID, staged file) pairs, moved in place.

        `put`: the file came by PUT to a signed URL, not as an upload request of its own.
        """
        root = self.staging_dir()
        with self._lock:
            study = self._studies.setdefault(study_uid, _Study())
            if not put:
                study.uploads += 1
            now = time.monotonic()
            for sop_uid, staged in files:
                study.awaiting_put.discard(sop_uid)
                self._arrivals.append(now)
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
                awaiting_put=tuple(sorted(study.awaiting_put)),
                headers_received=study.headers_received,
            )

    def study_uids(self) -> list[str]:
        with self._lock:
            return list(self._studies)

    @property
    def upload_requests(self) -> int:
        """Authenticated upload requests, including those refused (fault, bad body)."""
        with self._lock:
            return self._upload_requests

    @property
    def put_requests(self) -> int:
        """PUTs to signed URLs, including those refused."""
        with self._lock:
            return self._put_requests

    @property
    def max_puts_in_flight(self) -> int:
        """The most PUTs that were being answered at once."""
        with self._lock:
            return self._max_puts_in_flight

    def arrivals(self) -> list[float]:
        """time.monotonic() at which each full instance was stored, in order."""
        with self._lock:
            return list(self._arrivals)


def _digest(uid: str) -> str:
    # UIDs from the outside world are not always valid file names; their hash is.
    return hashlib.sha256(uid.encode()).hexdigest()[:32]
