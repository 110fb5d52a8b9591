"""Real peers for end-to-end tests: the gateway in-process, a receiving PACS, event waits."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import DeliverPolicy
from pynetdicom.events import Event as DicomEvent

from pacsor.config import Settings, load_settings
from pacsor.devtools.demo_pacs import start_storage_scp
from pacsor.devtools.sample_study import make_study
from pacsor.devtools.simulator.state import SimulatorState
from pacsor.dicom.scp_transport import received_instance
from pacsor.dicom.storage_scu import echo, send_files
from pacsor.domain import events as ev
from pacsor.jetstream.eventlog import EventLog
from pacsor.jetstream.subjects import EVENTS_STREAM, study_subjects
from pacsor.process.gateway import components_of_up, run_gateway
from tests.dicom_factory import make_image, new_uid
from tests.nats_server import free_port


class Simulator(NamedTuple):
    """The running API simulator of the `simulator` fixture (tests/conftest.py)."""

    url: str
    state: SimulatorState


# The API key every test gives the simulator: a uuid-v4, as Milvue issues them.
TOKEN = "22209633-26ea-4b35-a197-e55c375dc36f"


def site_settings(nats_url: str, **env: str) -> Settings:
    """The settings of a test's site: this NATS, a free DICOM port, TOKEN, short waits, no
    .env file; `env` adds or overrides variables, as a site file would."""
    return load_settings(
        {
            "NATS_URL": nats_url,
            "PORT": str(free_port()),
            "TOKEN": TOKEN,
            "STUDY_QUIET_SECONDS": "1",
            "POLL_INTERVAL_SECONDS": "0.2",
            "RETRY_INITIAL_SECONDS": "0.2",
            "RETRY_MAX_SECONDS": "1",
            **env,
        },
        dotenv=None,
    )


def to_the_ris(port: int) -> dict[str, str]:
    """The variables that send each study's ORU to a RIS listening on this machine's `port`."""
    return {"HL7_ENABLE": "true", "HL7_RIS_IP": "127.0.0.1", "HL7_RIS_PORT": str(port)}


def gateway_settings(nats_url: str, api_url: str, pacs: ReceivingPacs, **extra: str) -> Settings:
    """Settings for a whole pipeline against `pacs`."""
    return site_settings(
        nats_url,
        API_URL=api_url,
        PACS_IP="127.0.0.1",
        PACS_PORT=str(pacs.port),
        PACS_AET=pacs.ae_title,
        **extra,
    )


@contextlib.asynccontextmanager
async def running_gateway(
    settings: Settings, components: tuple[str, ...] | None = None
) -> AsyncIterator[dict[str, Any]]:
    """Run the gateway in this event loop; yields what it reports when ready.

    `components` defaults to what `pacsor up` runs with these settings.

    Unless the test chose them, the admin gets a free port and a read model of its own.
    """
    if components is None:
        components = components_of_up(settings)
    own_folder: Path | None = None
    if "admin" in components and settings.admin_port == Settings().admin_port:
        own_folder = Path(tempfile.mkdtemp(prefix="pacsor-admin-"))
        settings = msgspec.structs.replace(settings, admin_port=free_port(), data_dir=own_folder)
    stop = asyncio.Event()
    ready: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run_gateway(settings, components, stop, ready.set_result))
    done, _ = await asyncio.wait({task, ready}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()  # raises the start-up error
    if ready not in done:
        task.cancel()
        raise TimeoutError("gateway did not become ready")
    try:
        yield ready.result()
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        if own_folder is not None:
            shutil.rmtree(own_folder, ignore_errors=True)


class ReceivingPacs:
    """A pynetdicom Storage SCP that records what it receives (the test's PACS).

    `answer(n, sop)` picks the status of the n-th C-STORE (0-based); `calls` lists every
    C-STORE with the status answered, `received` the objects stored.
    """

    def __init__(
        self,
        ae_title: str = "TESTPACS",
        status: int = 0x0000,
        answer: Callable[[int, str], int] | None = None,
    ) -> None:
        self.ae_title = ae_title
        self.port = free_port()
        self.status = status
        self.answer = answer
        self.calls: list[tuple[str, int]] = []  # (sop, status answered)
        self.received: list[tuple[str, str, bytes]] = []  # (study, sop, encoded)
        self._changed = threading.Condition()
        self._server: Any = None

    def start(self) -> ReceivingPacs:
        self._server = start_storage_scp(self.ae_title, self.port, self._on_store)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _on_store(self, event: DicomEvent) -> int:
        ds = event.dataset
        with self._changed:
            status = self.status
            if self.answer is not None:
                status = self.answer(len(self.calls), str(ds.SOPInstanceUID))
            self.calls.append((str(ds.SOPInstanceUID), status))
        if status != 0x0000:
            return status
        with self._changed:
            self.received.append(
                (str(ds.StudyInstanceUID), str(ds.SOPInstanceUID), received_instance(event))
            )
            self._changed.notify_all()
        return 0x0000

    def sop_uids(self) -> list[str]:
        with self._changed:
            return [sop for _, sop, _ in self.received]

    async def wait_for(self, count: int, timeout: float = 60.0) -> list[str]:
        def wait() -> bool:
            with self._changed:
                return self._changed.wait_for(lambda: len(self.received) >= count, timeout)

        if not await asyncio.to_thread(wait):
            raise TimeoutError(f"{self.ae_title} received {len(self.received)} of {count} objects")
        return self.sop_uids()

    @property
    def destination(self) -> str:
        return f"{self.ae_title}@127.0.0.1:{self.port}"


async def wait_for_event(
    nc: Client,
    study_uid: str,
    match: Callable[[ev.AnyEvent], bool],
    timeout: float = 60.0,
) -> ev.AnyEvent:
    """The first event of the study matching `match`, waiting for it to be published."""
    js = nc.jetstream()
    async with asyncio.timeout(timeout):
        while True:
            try:
                sub = await js.subscribe(
                    study_subjects(study_uid),
                    stream=EVENTS_STREAM,
                    ordered_consumer=True,
                    deliver_policy=DeliverPolicy.ALL,
                )
                break
            except NatsTimeoutError:
                continue  # the client is reconnecting after a server restart
    try:
        async with asyncio.timeout(timeout):
            while True:
                msg = await sub.next_msg(timeout=timeout)
                event = ev.decode(msg.data)
                if match(event):
                    return event
    finally:
        await sub.unsubscribe()


def of_type(kind: type[ev.Event]) -> Callable[[ev.AnyEvent], bool]:
    return lambda event: isinstance(event, kind)


async def result_objects(nc: Client, study_uid: str) -> tuple[ev.ResultObject, ...]:
    """The result objects of the study's (first) ResultReady, read back from its pages."""
    ready = await wait_for_event(nc, study_uid, of_type(ev.ResultReady))
    assert isinstance(ready, ev.ResultReady)
    return await EventLog(nc.jetstream()).result_objects(ready)


async def dispatched_uids(nc: Client, done: ev.Dispatched) -> list[str]:
    """The SOP Instance UIDs a Dispatched counts: those of its attempt's result list."""
    ready = await wait_for_event(
        nc,
        done.study_uid,
        lambda e: (
            isinstance(e, ev.ResultReady) and (e.core, e.attempt) == (done.core, done.attempt)
        ),
    )
    assert isinstance(ready, ev.ResultReady) and ready.results_digest == done.results_digest
    listed = await EventLog(nc.jetstream()).result_objects(ready)
    assert len(listed) == done.object_count
    return [r.sop_instance_uid for r in listed]


def write_study(folder: Path, datasets: list[Any]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, ds in enumerate(datasets):
        path = folder / f"{n:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


async def wait_for_dicom(
    port: int, ae_title: str, process: subprocess.Popen[bytes], timeout: float = 30.0
) -> None:
    """Wait until a DICOM peer started as `process` answers C-ECHO."""
    async with asyncio.timeout(timeout):
        while await asyncio.to_thread(echo, "127.0.0.1", port, ae_title, "PROBE", 2.0):
            if process.poll() is not None:
                raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
            await asyncio.sleep(0.05)  # polling the peer's readiness: it has no event to await


PROJECT = Path(__file__).resolve().parents[1]


def cli_env(**extra: str) -> dict[str, str]:
    """This environment, with the project importable and `extra` settings."""
    return {**os.environ, "PYTHONPATH": str(PROJECT), "ADMIN_PORT": str(free_port()), **extra}


async def pacsor_process(
    *args: str, cwd: Path, stdout: int = asyncio.subprocess.PIPE, **env: str
) -> asyncio.subprocess.Process:
    """Start `pacsor ARGS` in `cwd` with extra settings, its stderr piped, without waiting."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pacsor",
        *args,
        cwd=cwd,
        env=cli_env(**env),
        stderr=asyncio.subprocess.PIPE,
        stdout=stdout,
    )


def pacsor_cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `pacsor ARGS` in `cwd` with extra settings, as a person would, and wait for it."""
    return subprocess.run(
        [sys.executable, "-m", "pacsor", *args],
        env=cli_env(**env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def send_study(settings: Settings, folder: Path, images: int = 3) -> tuple[str, list[str]]:
    study = make_study(images, rows=128, columns=128)
    paths = write_study(folder, study)
    results = await asyncio.to_thread(
        send_files, "127.0.0.1", settings.port, settings.milvue_aet, paths
    )
    assert [status for _, status in results] == [0] * images
    return str(study[0].StudyInstanceUID), [str(ds.SOPInstanceUID) for ds in study]


async def send_datasets(settings: Settings, folder: Path, datasets: list[Any]) -> str:
    paths = write_study(folder, datasets)
    statuses = await asyncio.to_thread(
        send_files, "127.0.0.1", settings.port, settings.milvue_aet, paths
    )
    assert [status for _, status in statuses] == [0] * len(datasets)
    return str(datasets[0].StudyInstanceUID)


def images(count: int, study: str | None = None, **attributes: Any) -> list[Any]:
    study = study or new_uid()
    return [make_image(study, rows=96, cols=96, **attributes) for _ in range(count)]
