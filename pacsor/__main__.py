import sys

from pacsor.cli import main

sys.exit(main())
