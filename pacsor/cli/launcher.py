"""The `pacsor` command's entry point.

`pacsor health`, which container healthchecks run every few seconds, goes straight to its
light module; everything else to the full command line (pacsor.cli.main).
"""

from __future__ import annotations

import sys


def main() -> int:
    if sys.argv[1:2] == ["health"] and not {"-h", "--help"} & set(sys.argv[2:]):
        from pacsor.cli.container_health import main as health

        return health(sys.argv[2:])
    from pacsor.cli.main import main as cli

    return cli()
