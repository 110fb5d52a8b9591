import sys

from pacsor.cli.launcher import main

sys.exit(main())
