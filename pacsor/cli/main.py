"""The `pacsor` command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pacsor.components import BY_NAME
from pacsor.config import (
    ConfigError,
    CoreSettings,
    Settings,
    demo_env_path,
    load_settings,
    read_dotenv,
    running_demo_settings,
    write_demo_env,
)
from pacsor.domain.event_text import describe, describe_short
from pacsor.errors import StartupError
from pacsor.jetstream.broker import (
    NatsAccess,
    credentials_folder,
    embedded_folder,
    nats_access,
)
from pacsor.jetstream.nats_auth import READER_USER, password_file
from pacsor.process import logs
from pacsor.process.gateway import components_of_up, run_gateway

log = logging.getLogger("pacsor")

DEMO_PACS_PORT = 11112
DEMO_PACS_AET = "DEMOPACS"
DEMO_RIS_PORT = 0  # any free port: only the demo itself talks to its RIS
# Commands that do one thing and end: they read a running demo's settings, and log only
# warnings (their output is their own lines).
ONE_SHOT = frozenset({"send", "events", "echo", "check", "relaunch"})
PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pacsor")
    except PackageNotFoundError:  # run from a tree that was never installed
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pacsor", description="DICOM gateway for radiology AI")
    parser.add_argument("--version", action="version", version=f"pacsor {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="run every component in one process")
    up.add_argument(
        "--demo",
        action="store_true",
        help="also run the API simulator and a demo PACS writing to ./demo-pacs",
    )
    run = commands.add_parser(
        "run",
        help="run one component",
        description="\n".join(f"{c.name:<12} {c.summary}" for c in BY_NAME.values()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("component", choices=tuple(BY_NAME))
    sim = commands.add_parser("simulator", help="serve the Milvue API simulator")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8421)
    events = commands.add_parser("events", help="print the event history (of one study)")
    events.add_argument("--study", help="StudyInstanceUID")
    events.add_argument(
        "-f", "--follow", action="store_true", help="then print new events as they come"
    )
    send = commands.add_parser("send", help="C-STORE DICOM files (or a sample study) to pacsor")
    send.add_argument("paths", nargs="*", type=Path, help="files or folders")
    send.add_argument("--sample", type=int, metavar="N", help="send a synthetic study of N images")
    send.add_argument("--host", default="127.0.0.1")
    send.add_argument("--port", type=int, help="default: PORT")
    send.add_argument("--aet", help="called AE title, default: MILVUE_AET")

    relaunch = commands.add_parser(
        "relaunch", help="send a study to the AI again, as a new attempt"
    )
    relaunch.add_argument("study", metavar="UID", help="StudyInstanceUID")
    relaunch.add_argument("--cores", default="", help="comma-separated AI cores (default: all)")
    relaunch.add_argument("--by", default="", help="who asks (default: your user name)")
    relaunch.add_argument(
        "--wait", action="store_true", help="follow the new attempt and print it until it ends"
    )

    echo = commands.add_parser(
        "echo", help="C-ECHO DICOM peers: by default the PACS and every destination"
    )
    echo.add_argument("peers", nargs="*", metavar="AET@host:port")
    commands.add_parser(
        "check", help="before going live: NATS, streams, destinations, AI cores, RIS; one line each"
    )
    health = commands.add_parser(
        "health",
        help="exit 0 when the component running in this container or machine is healthy",
    )
    health.add_argument("component", choices=tuple(BY_NAME))
    demo_pacs = commands.add_parser(
        "demo-pacs", help="run a PACS that writes what it receives to a folder (demo)"
    )
    demo_pacs.add_argument("--host", default="127.0.0.1")
    demo_pacs.add_argument("--port", type=int, default=DEMO_PACS_PORT)
    demo_pacs.add_argument("--aet", default=DEMO_PACS_AET)
    demo_pacs.add_argument("--folder", type=Path, default=Path("demo-pacs"))

    demo_ris = commands.add_parser(
        "demo-ris", help="run a RIS that acknowledges every HL7 message it receives (demo)"
    )
    demo_ris.add_argument("--host", default="127.0.0.1")
    demo_ris.add_argument("--port", type=int, default=2575)

    setup = commands.add_parser(
        "setup",
        help="answer a site's questions once: writes env-files/.env.SITE and links .env to it",
    )
    setup.add_argument("--show", action="store_true", help="print the current configuration")
    setup.add_argument("--project-dir", type=Path, default=Path("."), help="where .env lives")
    setup.add_argument(
        "--encrypt-nats-store",
        action="store_true",
        help="a new site: nats-server encrypts its store, with a key written beside its passwords",
    )
    from pacsor.cli.setup_wizard import QUESTIONS

    for question in QUESTIONS:
        if question.kind == "yes-no":
            setup.add_argument(
                question.option, action=argparse.BooleanOptionalAction, help=question.message
            )
        else:
            setup.add_argument(question.option, metavar="VALUE", help=question.message)

    migrate = commands.add_parser(
        "migrate",
        help="turn an original gateway's .env and compose files into pacsor's site file",
    )
    migrate.add_argument(
        "original", type=Path, nargs="?", default=Path("."), help="the original's folder"
    )
    migrate.add_argument("--project-dir", type=Path, default=Path("."), help="where .env goes")
    migrate.add_argument("--site", help="the site's name (default: the original's client name)")
    migrate.add_argument("--force", action="store_true", help="replace a different site file")

    credentials = commands.add_parser(
        "nats-credentials",
        help="make the NATS credentials of a compose deployment (`pacsor setup` does it per site)",
    )
    credentials.add_argument(
        "folder", type=Path, nargs="?", default=Path("env-files/nats"), help="where to write them"
    )
    credentials.add_argument(
        "--encrypt-nats-store", action="store_true", help="nats-server encrypts its store"
    )

    args = parser.parse_args(argv)
    if args.command == "migrate":  # before the settings, like setup: it writes them
        try:
            return _migrate(args.original, args.project_dir, args.site, args.force)
        except ConfigError as err:
            print(f"pacsor: {err}", file=sys.stderr)
            return 2
    if args.command == "nats-credentials":
        return _nats_credentials(args.folder, args.encrypt_nats_store)
    if args.command == "setup":  # before the settings: setup is how they come to exist
        try:
            return _setup(args)
        except ConfigError as err:
            print(f"pacsor: {err}", file=sys.stderr)
            return 2
    try:
        settings = load_settings()
        if args.command in ONE_SHOT:
            demo = running_demo_settings(demo_env_path(settings.data_dir))
            if demo:
                settings = load_settings(running_demo=demo)
    except ConfigError as err:
        print(f"pacsor: {err}", file=sys.stderr)
        return 2
    _export_proxies(settings)
    quiet = args.command in ONE_SHOT and settings.log_level == "INFO"
    logs.configure("WARNING" if quiet else settings.log_level, settings.log_format)
    try:
        if args.command == "up":
            return _up(settings, args.demo)
        if args.command == "run":
            return _serve(settings, (args.component,))
        if args.command == "simulator":
            return _simulator(args.host, args.port)
        if args.command == "events":
            return asyncio.run(_events(settings, args.study, args.follow))
        if args.command == "send":
            return _send(settings, args)
        if args.command == "echo":
            return _echo(settings, args.peers)
        if args.command == "relaunch":
            return asyncio.run(_relaunch(settings, args.study, args.cores, args.by, args.wait))
        if args.command == "check":
            return asyncio.run(_check(settings))
        if args.command == "health":
            from pacsor.cli.container_health import check_component

            return asyncio.run(check_component(settings, args.component))
        if args.command == "demo-pacs":
            return _demo_pacs(args.host, args.port, args.aet, args.folder)
        if args.command == "demo-ris":
            return asyncio.run(_demo_ris(args.host, args.port))
    except StartupError as err:  # a setting, NATS, a port: one line naming it
        print(f"pacsor: {err}", file=sys.stderr)
        return 2
    return 0


def _export_proxies(settings: Settings) -> None:
    """The proxy settings, from .env too, where the HTTP client looks: the environment."""
    for name in PROXY_VARIABLES:
        value = getattr(settings, name.lower())
        if value and not os.environ.get(name):
            os.environ[name] = value


def _stopping_line(busy: dict[str, int]) -> str:
    if not busy:
        return "pacsor: stopping (nothing in flight); Ctrl-C again to stop at once"
    steps = ", ".join(durable + (f" x{n}" if n > 1 else "") for durable, n in busy.items())
    return (
        f"pacsor: stopping: finishing {sum(busy.values())} step(s) in flight ({steps}); "
        "Ctrl-C again to stop at once"
    )


def _say(line: str) -> None:
    """A line on stderr, if stderr is still there (a closed terminal, a dead pipe)."""
    with contextlib.suppress(OSError, ValueError):
        print(line, file=sys.stderr, flush=True)


def _serve(settings: Settings, components: Sequence[str], on_ready: Any = None) -> int:
    """Run until SIGINT or SIGTERM: the first finishes the steps in flight, the second stops
    at once (those steps are done again after a restart), a third exits on the spot."""
    from pacsor.jetstream.handler_runner import in_flight

    forced = False

    async def serve() -> None:
        nonlocal forced
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        main_task = asyncio.current_task()
        assert main_task is not None
        presses = 0

        def on_signal() -> None:
            # Act first, then say so: a closed stderr (the terminal gone) must not stop a stop.
            nonlocal presses, forced
            presses += 1
            if presses == 1:
                busy = in_flight()
                stop.set()
                _say(_stopping_line(busy))
            elif presses == 2:
                forced = True
                main_task.cancel()
                _say(
                    "pacsor: stopping now; the steps that were in flight are done again "
                    "after a restart (Ctrl-C once more exits on the spot)"
                )
            else:
                os._exit(130)

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        try:
            await run_gateway(settings, components, stop, on_ready)
        except asyncio.CancelledError:
            if not forced:
                raise

    asyncio.run(serve())
    return 130 if forced else 0


def _up(settings: Settings, demo: bool) -> int:
    if not demo:
        return _serve(settings, components_of_up(settings))
    # The demo's own peers log as they start: as quietly as the demo will.
    demo_level = _demo_defaults(settings).get("LOG_LEVEL", settings.log_level)
    logs.configure(demo_level, settings.log_format)
    with _demo_peers() as overrides:
        settings = load_settings(overrides={**_demo_defaults(settings), **overrides})
        logs.configure(settings.log_level, settings.log_format)

        background: list[asyncio.Future[None]] = []
        demo_env = demo_env_path(settings.data_dir)

        def announce(ready: dict[str, Any]) -> None:
            port = int(ready.get("dicom_port", settings.port))
            # Where `pacsor send`, `events`, `echo`, `check` and `relaunch` find the demo.
            write_demo_env(demo_env, _demo_env_values(settings, overrides, port), os.getpid())
            print(_demo_banner(settings, ready, port), file=sys.stderr, flush=True)
            loop = asyncio.get_running_loop()
            background.append(loop.create_task(_print_events(nats_access(settings))))
            background.append(
                loop.run_in_executor(None, _send_sample_study, port, settings.milvue_aet)
            )

        try:
            return _serve(settings, components_of_up(settings), announce)
        finally:
            demo_env.unlink(missing_ok=True)


def _demo_env_values(settings: Settings, overrides: dict[str, str], port: int) -> dict[str, str]:
    """The settings that reach the demo's peers, as the other commands need them."""
    values = {
        **overrides,
        "TOKEN": settings.token,
        "PORT": str(port),
        "MILVUE_AET": settings.milvue_aet,
        "ADMIN_HOST": settings.admin_host,
        "ADMIN_PORT": str(settings.admin_port),
    }
    if settings.nats_servers:
        values["NATS_URL"] = settings.nats_servers
    else:
        values["EMBEDDED_NATS_PORT"] = str(settings.embedded_nats_port)
    return values


def _command() -> str:
    """How this terminal runs pacsor: `.venv/bin/pacsor` from the project folder."""
    here = Path(sys.argv[0])
    if here.name == "pacsor" and here.is_file():
        try:
            return str(here.resolve().relative_to(Path.cwd().resolve()))
        except ValueError:
            return str(here)
    return "pacsor"


def _reader_hint(settings: Settings) -> str:
    """How a person reads the embedded server's streams, as its read-only user."""
    if settings.nats_servers:
        return ""
    path = password_file(credentials_folder(embedded_folder(settings)), READER_USER)
    return f'\n              nats --user reader --password "$(cat {path})" stream view PACSOR'


def _demo_banner(settings: Settings, ready: dict[str, Any], port: int) -> str:
    pacsor = _command()
    dashboard = ready.get("admin_url", f"http://{settings.admin_host}:{settings.admin_port}")
    return (
        "\npacsor is up (demo)\n"
        f"  dashboard   {dashboard}/\n"
        f"  DICOM SCP   {settings.milvue_aet}@127.0.0.1:{port} (C-STORE, C-ECHO)\n"
        f"  AI          the Milvue API simulator at {settings.api_url}\n"
        f"  results     demo PACS {settings.pacs_aet}@{settings.pacs_ip}:{settings.pacs_port} "
        "(writes to ./demo-pacs), HL7 to a demo RIS\n"
        f"  NATS        {ready['nats_url']}{_reader_hint(settings)}\n"
        "A sample study is on its way. Next, from another terminal in this folder:\n"
        f"  1. {pacsor} send --sample 3      send another study\n"
        f"  2. {pacsor} events --follow      every event, live\n"
        f"  3. {pacsor} check                everything pacsor depends on, one line each\n"
        f"or   storescu -aec {settings.milvue_aet} 127.0.0.1 {port} FILE.dcm\n"
        "Ctrl-C stops (twice: at once).\n"
    )


def _demo_defaults(settings: Settings) -> dict[str, str]:
    """Demo settings, for what the site has not set itself."""
    demo = {
        "TOKEN": "demo-token",
        "STUDY_QUIET_SECONDS": "5",
        "POLL_INTERVAL_SECONDS": "1",
        # Quieter logs: the demo prints each event as a line of its own.
        "LOG_LEVEL": "WARNING",
    }
    chosen = {**read_dotenv(Path(".env")), **os.environ}
    return {name: value for name, value in demo.items() if not chosen.get(name)}


async def _print_events(access: NatsAccess) -> None:
    """Print every new event as it is published: the demo's progress."""
    from pacsor.domain import events as ev
    from pacsor.jetstream.broker import connect
    from pacsor.jetstream.subjects import ALL_EVENTS

    nc = await connect(access, "pacsor demo")
    sub = await nc.subscribe(ALL_EVENTS)
    try:
        async for msg in sub.messages:
            print(describe_short(ev.decode(msg.data)), file=sys.stderr, flush=True)
    finally:
        await nc.close()


def _send_sample_study(port: int, ae_title: str) -> None:
    import tempfile

    from pacsor.devtools.sample_study import make_study
    from pacsor.dicom.storage_scu import send_files

    with tempfile.TemporaryDirectory(prefix="pacsor-sample-") as folder:
        paths = []
        for n, ds in enumerate(make_study(3)):
            paths.append(Path(folder) / f"sample{n + 1}.dcm")
            ds.save_as(paths[-1], enforce_file_format=True)
        try:
            results = send_files("127.0.0.1", port, ae_title, paths, "DEMO_MODALITY")
        except ConnectionError as err:
            log.error("the sample study could not be sent: %s", err)
            return
    failed = [status for _, status in results if status != 0]
    if failed:
        log.error("the sample study was refused: %s", [f"0x{s:04X}" for s in failed])


@contextlib.contextmanager
def _demo_peers() -> Iterator[dict[str, str]]:
    from pacsor.devtools.demo_pacs import start_folder_pacs
    from pacsor.devtools.demo_ris import running_demo_ris
    from pacsor.devtools.simulator import SimulatorSettings, running_simulator

    raw = os.environ.get("DEMO_PACS_PORT", str(DEMO_PACS_PORT))
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ConfigError(f"DEMO_PACS_PORT: expected a port number, got {raw!r}")
    port = int(raw)
    try:
        pacs = start_folder_pacs(Path("demo-pacs"), DEMO_PACS_AET, port)
    except OSError as err:
        raise StartupError(f"DEMO_PACS_PORT: cannot listen on {port}: {err.strerror}") from None
    ris_raw = os.environ.get("DEMO_RIS_PORT", str(DEMO_RIS_PORT))
    with contextlib.ExitStack() as stack:
        stack.callback(pacs.shutdown)
        if not ris_raw.isdigit() or not 0 <= int(ris_raw) < 65536:
            raise ConfigError(f"DEMO_RIS_PORT: expected a port number, got {ris_raw!r}")
        try:
            ris = stack.enter_context(running_demo_ris(int(ris_raw)))
        except OSError as err:
            raise StartupError(
                f"DEMO_RIS_PORT: cannot listen on {ris_raw}: {err.strerror}"
            ) from None
        base_url, _state = stack.enter_context(
            running_simulator(SimulatorSettings(running_polls=2))
        )
        yield {
            "API_URL": base_url,
            "PACS_IP": "127.0.0.1",
            "PACS_PORT": str(port),
            "PACS_AET": DEMO_PACS_AET,
            # The demo RIS takes each study's ORU^R01, with the simulator's written report.
            "HL7_ENABLE": "true",
            "HL7_RIS_IP": "127.0.0.1",
            "HL7_RIS_PORT": str(ris.port),
            "HL7_INCLUDE_TCR": "true",
            "TCR_API_URL": base_url,
        }


def _simulator(host: str, port: int) -> int:
    from pacsor.devtools.simulator import serve, settings_from_env

    try:
        sim_settings = settings_from_env(os.environ)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    serve(sim_settings, host, port)
    return 0


async def _events(settings: Settings, study: str | None, follow: bool = False) -> int:
    from pacsor.jetstream.broker import connect
    from pacsor.jetstream.eventlog import EventLog
    from pacsor.jetstream.subjects import ALL_EVENTS, is_valid_uid, study_subjects

    if study is not None and not is_valid_uid(study):
        raise ConfigError(f"--study: not a DICOM UID: {study!r}")
    # Without NATS_URL, read the embedded server that `pacsor up` starts.
    access = nats_access(settings)
    try:
        nc = await asyncio.wait_for(connect(access, "pacsor events"), 10)
    except Exception as err:
        raise ConfigError(f"NATS_URL: cannot connect to {access}: {err}") from None
    try:
        log_of = EventLog(nc.jetstream())
        # Following: what is there up to now, then everything after it, each event once.
        last = await log_of.last_sequence() if follow else None
        recorded = await log_of.read(study_subjects(study) if study else ALL_EVENTS, last)
        for r in recorded:
            print(f"{r.sequence:>7}  {describe(r.event)}", flush=follow)
        if last is not None:
            stop = _stop_on_ctrl_c()
            async for batch, _ in log_of.follow(last + 1, stop):
                for r in batch:
                    if study is None or r.event.study_uid == study:
                        print(f"{r.sequence:>7}  {describe(r.event)}", flush=True)
    finally:
        await nc.close()
    return 0


def _stop_on_ctrl_c() -> asyncio.Event:
    """An event set by Ctrl-C or SIGTERM: a command that follows the stream ends cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _relaunch(settings: Settings, study: str, cores: str, by: str, wait: bool) -> int:
    import getpass
    import socket

    from pacsor.admin.operations import Refused, request_relaunch
    from pacsor.jetstream.blobs import BlobStore
    from pacsor.jetstream.broker import connect
    from pacsor.jetstream.eventlog import EventLog
    from pacsor.jetstream.subjects import INSTANCES_BUCKET

    access = nats_access(settings)
    _require_grant(access.who, "RelaunchRequested")
    try:
        nc = await asyncio.wait_for(connect(access, "pacsor relaunch"), 10)
    except Exception as err:
        raise ConfigError(f"NATS_URL: cannot connect to {access}: {err}") from None
    who = by or f"{getpass.getuser()}@{socket.gethostname()} (pacsor relaunch)"
    try:
        js = nc.jetstream()
        accepted = await request_relaunch(
            EventLog(js),
            BlobStore(nc, js, INSTANCES_BUCKET),
            settings,
            study,
            tuple(c.strip() for c in cores.split(",") if c.strip()),
            who,
        )
        print(
            f"{accepted.message}; relaunch {accepted.relaunch_id} at sequence {accepted.sequence}",
            flush=True,
        )
        if wait:
            return await _follow_attempt(settings, EventLog(js), study, accepted)
    except Refused as err:
        print(f"pacsor: {err.message}", file=sys.stderr)
        return 2 if err.status == 400 else 1
    finally:
        await nc.close()
    return 0


def _require_grant(user: str, event_type: str) -> None:
    """Refuse at once, in one line, a command whose NATS user's role may not publish what it
    would: nats-server would drop the publish, and the command only time out."""
    from pacsor.components import BY_NAME
    from pacsor.domain.events import by_name

    component = BY_NAME.get(user)
    if component is not None and by_name(event_type) not in component.publishes.events:
        raise ConfigError(
            f"NATS_USER: {user} may not publish {event_type}; run this as the admin's user "
            "(docker compose run --rm --no-deps admin ...) or as pacsor"
        )


async def _follow_attempt(settings: Settings, log_of: Any, study: str, accepted: Any) -> int:
    """Print the relaunched attempt's events until every core has ended; 1 if any failed."""
    from pacsor.domain.attempt_end import attempt_end

    destinations = {core.name: tuple(str(d) for d in core.destinations) for core in settings.cores}
    seen: list[Any] = []
    stop = _stop_on_ctrl_c()
    async for batch, _ in log_of.follow(accepted.sequence + 1, stop):
        for r in batch:
            if r.event.study_uid != study:
                continue
            seen.append(r.event)
            print(describe_short(r.event), flush=True)
        end = attempt_end(seen, accepted.relaunch_id, destinations, settings.hl7.enable)
        if end.ended:
            outcome = "failed" if end.failed else "ended"
            print(f"attempt {end.attempt} {outcome}", flush=True)
            return 1 if end.failed else 0
    print("pacsor: stopped following; the attempt goes on", file=sys.stderr)
    return 130


def _send(settings: Settings, args: argparse.Namespace) -> int:
    import tempfile
    import time

    from pacsor.devtools.sample_study import make_study
    from pacsor.dicom.storage_scu import NotDicom, send_files, stored_as

    with tempfile.TemporaryDirectory(prefix="pacsor-sample-") as folder:
        files: list[Path] = []
        for n, ds in enumerate(make_study(args.sample or 0)):
            files.append(Path(folder) / f"sample{n + 1}.dcm")
            ds.save_as(files[-1], enforce_file_format=True)
        for path in args.paths:
            files.extend(
                sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
            )
        if not files:
            raise ConfigError("send: give DICOM files or folders, or --sample N")
        # A file that is not DICOM (notes.txt in the folder) is said and left out.
        sendable: list[Path] = []
        skipped = 0
        for path in files:
            try:
                stored_as(path)
            except NotDicom as err:
                print(f"skipped  {err}", file=sys.stderr, flush=True)
                skipped += 1
            else:
                sendable.append(path)
        if not sendable:
            print(f"pacsor: nothing to send ({skipped} skipped)", file=sys.stderr)
            return 1
        sizes = {path: path.stat().st_size for path in sendable}
        total, started, sent_bytes = len(sendable), time.monotonic(), 0

        def answered(n: int, path: Path, status: int) -> None:
            nonlocal sent_bytes
            sent_bytes += sizes[path]
            rate = sent_bytes / 1e6 / max(time.monotonic() - started, 1e-3)
            code = f"0x{status:04X}" if status >= 0 else "no answer"
            failed = "  FAILED" if status != 0 else ""
            print(
                f"{n:>{len(str(total))}}/{total}  {code}  {path.name}  {rate:.1f} MB/s{failed}",
                flush=True,
            )

        destination = f"{args.aet or settings.milvue_aet}@{args.host}:{args.port or settings.port}"
        print(
            f"sending {total} files ({sum(sizes.values()) / 1e6:.1f} MB) to {destination}",
            file=sys.stderr,
            flush=True,
        )
        try:
            results = send_files(
                args.host,
                args.port or settings.port,
                args.aet or settings.milvue_aet,
                sendable,
                on_result=answered,
            )
        except (ConnectionError, NotDicom) as err:
            print(f"pacsor: {err}", file=sys.stderr)
            return 1
    failed = [r for r in results if r[1] != 0]
    unsent = total - len(results)  # the association was lost: these were never answered
    took = time.monotonic() - started
    print(
        f"{len(results) - len(failed)} sent, {len(failed) + unsent} failed, {skipped} skipped "
        f"in {took:.1f} s ({sent_bytes / 1e6 / max(took, 1e-3):.1f} MB/s)",
        file=sys.stderr,
    )
    return 1 if failed or unsent else 0


def _echo(settings: Settings, peers: list[str]) -> int:
    from pacsor.config import parse_destination
    from pacsor.dicom.storage_scu import probe
    from pacsor.dicom.tls import client_context
    from pacsor.domain import negotiation

    failed = 0
    destinations = [parse_destination("echo", peer) for peer in peers]
    if not destinations:
        # Every AI core's API (reachable, token accepted), then every destination of any core.
        for core, problem in asyncio.run(_check_cores(settings)):
            failed += problem is not None
            print(f"core {core.name} ({core.api_url}): {problem or 'ok, token accepted'}")
        destinations = list(dict.fromkeys(d for core in settings.cores for d in core.destinations))
        if not destinations:
            print("no destination: PACS_IP is not set and DESTINATIONS is empty")
            return 1
    tls = None
    if any(d.tls for d in destinations):
        tls = client_context(settings.dicom_tls_ca, settings.dicom_tls_cert, settings.dicom_tls_key)
    # Each peer is asked for C-ECHO and for the SOP classes pacsor's results come in.
    classes = result_classes(settings)
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)  # each line says what failed
    for destination in destinations:
        found = probe(
            destination.host,
            destination.port,
            destination.ae_title,
            classes,
            settings.milvue_aet,
            tls=tls if destination.tls else None,
        )
        if found.problem is not None:
            failed += 1
            print(f"{destination.label}: {found.problem}")
            continue
        problem, stores = negotiation.verdict(found.proposed, found.accepted)
        failed += problem is not None
        print(f"{destination.label}: " + (f"C-ECHO ok; {problem}" if problem else f"ok; {stores}"))
    return 1 if failed else 0


def result_classes(settings: Settings) -> tuple[str, ...]:
    """The SOP classes of the results the AI makes with these settings' result options."""
    from pacsor.domain import negotiation

    return negotiation.result_sop_classes(
        settings.output_format, settings.structured_report_format, settings.static_report_format
    )


async def _check_cores(settings: Settings) -> list[tuple[CoreSettings, str | None]]:
    """Each core's API asked at once: a core that is down delays no other's answer."""
    from pacsor.ai.milvue_api import core_clients

    async with core_clients(settings) as clients:
        inference = [(core, api) for core, api in clients if core.kind == "inference"]
        problems = await asyncio.gather(*(api.check_access() for _, api in inference))
        return [(core, problem) for (core, _), problem in zip(inference, problems, strict=True)]


def _nats_credentials(folder: Path, encrypt_store: bool) -> int:
    from pacsor.components import NATS_ROLES
    from pacsor.jetstream.nats_auth import ensure_deployment_secrets

    try:
        ensure_deployment_secrets(folder, NATS_ROLES, encrypt_store)
    except (OSError, ValueError) as err:
        print(f"pacsor: {folder}: {err}", file=sys.stderr)
        return 2
    print(f"NATS credentials in {folder} (existing ones kept)")
    return 0


def _setup(args: argparse.Namespace) -> int:
    from pacsor.cli.setup_wizard import options_of, run_setup, show

    if args.show:
        print("\n".join(show(args.project_dir)))
        return 0
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    try:
        written = run_setup(
            args.project_dir, options_of(args), interactive, args.encrypt_nats_store
        )
    except KeyboardInterrupt:
        print("pacsor: setup stopped; nothing written", file=sys.stderr)
        return 130
    print(f"wrote {written.relative_to(args.project_dir)}; .env now points to it")
    print(
        "next: `pacsor check`, then `docker compose up -d` "
        f"(or `docker compose --env-file {written.relative_to(args.project_dir)} up -d`)"
    )
    return 0


def _migrate(original: Path, project: Path, site: str | None, force: bool) -> int:
    from pacsor.cli.setup_wizard import (
        ENV_DIR,
        check_site,
        nats_secrets_folder,
        site_file,
        write_site,
    )
    from pacsor.config.migration import migrate
    from pacsor.config.original import read_original_site

    found = read_original_site(original)
    name = site or found.client
    if not name:
        raise ConfigError("--site: needed, the original's .env names no env-files/.env.<client>")
    if problem := check_site(name):
        raise ConfigError(f"--site: {problem}, got {name!r}")
    migration = migrate(found)
    # The site as pacsor will read it: a problem is found now, not at start-up.
    load_settings(environ=migration.variables, dotenv=None)
    for line in migration.lines:
        print(line)
    target = site_file(project, name)
    wanted = {
        "PACSOR_ENV_FILE": f"{ENV_DIR}/.env.{name}",
        "PACSOR_NATS_SECRETS": nats_secrets_folder(name),
        **migration.variables,
    }
    if target.exists() and target.resolve() == (original / ".env").resolve():
        raise ConfigError(f"--site: {name!r} would replace the original's own file; name another")
    if target.exists() and read_dotenv(target) == wanted:
        print(f"{target.relative_to(project)} is already this migration: unchanged")
        return 0
    if target.exists() and not force:
        print(
            f"pacsor: {target.relative_to(project)} exists and differs; --force replaces it",
            file=sys.stderr,
        )
        return 1
    written = write_site(project, name, migration.variables, written_by="pacsor migrate")
    print(f"wrote {written.relative_to(project)}; .env now points to it")
    print("next: `pacsor check`, then `docker compose up -d`")
    return 0


async def _check(settings: Settings) -> int:
    from pacsor.cli.preflight import run_checks

    # Each check reports its own failure in its line; pynetdicom would say it again on stderr.
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    failed = 0
    async for check in run_checks(settings):
        print(check.line(), flush=True)
        failed += check.problem is not None
    return 1 if failed else 0


def _demo_pacs(host: str, port: int, ae_title: str, folder: Path) -> int:
    from pacsor.devtools.demo_pacs import start_folder_pacs

    if not 0 < port < 65536:
        raise ConfigError(f"--port: expected a port number, got {port}")
    # Blocked before the server's threads start, so that they inherit the mask and the signal
    # waits for sigwait below.
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    try:
        server = start_folder_pacs(folder, ae_title, port, host)
    except OSError as err:
        raise StartupError(f"--port: cannot listen on {port}: {err.strerror}") from None
    log.info("demo PACS ready", extra={"aet": ae_title, "port": port, "folder": str(folder)})
    stopped = signal.sigwait(stop_signals)
    log.info("demo PACS stopping", extra={"signal": signal.Signals(stopped).name})
    server.shutdown()
    return 0


async def _demo_ris(host: str, port: int) -> int:
    from pacsor.devtools.demo_ris import DemoRis

    if not 0 < port < 65536:
        raise ConfigError(f"--port: expected a port number, got {port}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        ris = await DemoRis(host, port).start()
    except OSError as err:
        raise StartupError(f"--port: cannot listen on {port}: {err.strerror}") from None
    await stop.wait()
    await ris.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
