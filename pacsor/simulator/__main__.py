"""`python -m pacsor.simulator [--host H] [--port P]`, configured from the environment."""

from __future__ import annotations

import argparse
import sys

from pacsor.simulator import serve, settings_from_env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pacsor simulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8421)
    args = parser.parse_args(argv)
    try:
        settings = settings_from_env()
    except ValueError as exc:
        print(f"pacsor simulator: {exc}", file=sys.stderr)
        return 2
    serve(settings, args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
