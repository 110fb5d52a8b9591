"""The layers of the tree hold: each package imports only what its rule allows.

The rules are the Layout section of docs/architecture.md.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Every layer may count: the counters module is the one piece of the process runtime anyone imports.
COUNTERS = "pacsor.process.counters"
# Every layer may raise pacsor's errors: the hierarchy imports nothing.
ERRORS = "pacsor.errors"
IO_LIBRARIES = {"nats", "pynetdicom", "httpx", "litestar", "uvicorn", "hl7apy", "hl7", "sqlite3"}


def modules(*folders: str) -> Iterator[Path]:
    for folder in folders:
        yield from sorted((ROOT / folder).rglob("*.py"))


def imported(path: Path) -> set[str]:
    """Every module `path` imports, at any depth of its code (lazy imports included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def top(name: str) -> str:
    return name.split(".")[0]


def pacsor_package(name: str) -> str:
    """pacsor.jetstream.subjects -> pacsor.jetstream; consumers install as pacsor.consumers."""
    parts = name.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else name


@pytest.mark.parametrize("path", list(modules("pacsor/domain")), ids=lambda p: p.name)
def test_domain_is_pure(path: Path) -> None:
    """Facts and decisions: the standard library, msgspec and other domain modules only."""
    for name in imported(path):
        if top(name) == "pacsor":
            assert name.startswith(("pacsor.domain", ERRORS)), f"{path.name} imports {name}"
        else:
            assert top(name) in sys.stdlib_module_names | {"msgspec"}, f"{path.name}: {name}"
            assert top(name) not in IO_LIBRARIES, f"{path.name} imports {name}"


def test_metrics_depend_on_nothing_of_pacsor() -> None:
    """Every layer may count; so the metrics module may import nothing of pacsor itself."""
    counters = ROOT / "pacsor" / "process" / "counters.py"
    assert not any(top(n) == "pacsor" for n in imported(counters))


@pytest.mark.parametrize("path", list(modules("pacsor/config")), ids=lambda p: p.name)
def test_config_imports_nothing_else_of_pacsor(path: Path) -> None:
    for name in imported(path):
        assert top(name) != "pacsor" or name.startswith(("pacsor.config", ERRORS)), name
        assert top(name) not in IO_LIBRARIES, name


@pytest.mark.parametrize(
    "path",
    [
        p
        for p in modules("pacsor", "consumers")
        if "devtools" not in p.parts and p.parts[-2:] != ("cli", "main.py")
    ],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_runtime_never_imports_devtools(path: Path) -> None:
    """The simulator, demo PACS and sample studies stay off the runtime path."""
    assert not any(n.startswith("pacsor.devtools") for n in imported(path))


@pytest.mark.parametrize("path", list(modules("pacsor", "consumers")), ids=lambda p: p.name)
def test_only_the_jetstream_package_talks_to_nats(path: Path) -> None:
    relative = path.relative_to(ROOT)
    allowed = relative.parts[:2] == ("pacsor", "jetstream") or relative.as_posix() in {
        "pacsor/process/runtime.py",
        "pacsor/process/gateway.py",
    }
    if not allowed:
        assert not any(top(n) == "nats" for n in imported(path)), f"{relative} imports nats"


@pytest.mark.parametrize("path", list(modules("pacsor/jetstream")), ids=lambda p: p.name)
def test_jetstream_does_not_know_the_peers(path: Path) -> None:
    """The broker layer serves every component and depends on none of them."""
    for name in imported(path):
        if top(name) == "pacsor":
            allowed = {"pacsor.jetstream", "pacsor.domain", "pacsor.streams"}
            assert pacsor_package(name) in allowed or name.startswith((COUNTERS, ERRORS)), name


def string_constants(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.value
        elif isinstance(node, ast.JoinedStr):
            parts = [v.value for v in node.values if isinstance(v, ast.Constant)]
            yield "".join(p for p in parts if isinstance(p, str))


NAMES = ("pacsor.study.", "pacsor.timer.", "$O.", "$JS.", "$KV.", "Nats-")


@pytest.mark.parametrize(
    "path",
    [
        p
        for p in modules("pacsor", "consumers")
        if p.name != "subjects.py" and "devtools" not in p.parts
    ],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_subject_and_header_names_live_in_one_place(path: Path) -> None:
    """Every subject, header and durable name is spelled in pacsor/jetstream/subjects.py."""
    for text in string_constants(path):
        assert not text.startswith(NAMES), f"{text!r}: spell it in pacsor.jetstream.subjects"


def test_profile_names_agree() -> None:
    """The settings know the profile names without importing the DICOM package; they agree."""
    from typing import get_args

    from pacsor.config.settings import Profile
    from pacsor.dicom.profiles import PROFILES

    assert set(get_args(Profile)) == set(PROFILES)


def test_the_error_hierarchy_imports_nothing_of_pacsor() -> None:
    assert not any(top(n) == "pacsor" for n in imported(ROOT / "pacsor" / "errors.py"))


def raised_classes(path: Path) -> Iterator[tuple[str, list[str]]]:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ClassDef):
            bases = [ast.unparse(b) for b in node.bases]
            if any(b.endswith(("Error", "Exception")) for b in bases):
                yield node.name, bases


@pytest.mark.parametrize(
    "path",
    [
        p
        for p in modules("pacsor", "consumers")
        if "devtools" not in p.parts and any(raised_classes(p))
    ],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_every_error_is_a_pacsor_error(path: Path) -> None:
    """One hierarchy (pacsor/errors.py): the runner's retry decision reads `retryable`."""
    import importlib

    relative = path.relative_to(ROOT).with_suffix("")
    parts = relative.parts if relative.parts[0] == "pacsor" else ("pacsor", *relative.parts)
    module = importlib.import_module(".".join(parts))
    from pacsor.errors import PacsorError

    for name, _ in raised_classes(path):
        cls = getattr(module, name)
        if issubclass(cls, BaseException):
            assert issubclass(cls, PacsorError), f"{relative}: {name} is not a PacsorError"


@pytest.mark.parametrize("path", list(modules("tests/unit")), ids=lambda p: p.name)
def test_the_fast_tests_start_no_server(path: Path) -> None:
    """tests/unit is what `make test-fast` runs in seconds: nothing there reaches a server."""
    network = {"nats", "pynetdicom", "httpx", "litestar", "uvicorn", "selenium", "subprocess"}
    servers = {"tests.harness", "tests.nats_server", "pacsor.devtools.simulator.server"}
    for name in imported(path):
        assert top(name) not in network and name not in servers, f"{path.name}: {name}"
