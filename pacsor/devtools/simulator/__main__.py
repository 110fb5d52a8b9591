"""`python -m pacsor.devtools.simulator [--host H] [--port P]`: the same as `pacsor simulator`."""

import sys

from pacsor.cli.main import main

sys.exit(main(["simulator", *sys.argv[1:]]))
