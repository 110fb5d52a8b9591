"""The settings of a running demo, where the other commands find them.

`pacsor up --demo` makes up its own peers (the simulator, a demo PACS, a demo RIS, each on its
port) and writes the settings that reach them to PACSOR_DATA_DIR/demo.env, with its process
ID; it removes the file when it stops. While that process lives, `pacsor send`, `events`,
`echo`, `check` and `relaunch` read the file over `.env`, so they talk to the demo.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pacsor.config.variables import read_dotenv

DEMO_ENV = "demo.env"
PID_VARIABLE = "PACSOR_DEMO_PID"


def demo_env_path(data_dir: Path) -> Path:
    return data_dir / DEMO_ENV


def write_demo_env(path: Path, values: Mapping[str, str], pid: int) -> None:
    """Written whole under another name, then renamed: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        "# The running demo's settings (pacsor up --demo); removed when it stops.",
        f"{PID_VARIABLE}={pid}",
        *(f"{name}={value}" for name, value in sorted(values.items())),
    ]
    partial = path.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    # It holds the demo's API key and admin token: its owner's alone, whatever the umask.
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write("\n".join(lines) + "\n")
    partial.replace(path)


def running_demo_settings(path: Path) -> dict[str, str]:
    """The file's settings while the demo that wrote it runs; {} otherwise."""
    values = read_dotenv(path)
    pid = values.pop(PID_VARIABLE, "")
    if not pid.isdigit() or not _alive(int(pid)):
        return {}
    return values


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive, but not a demo of ours
        return False
    return True
