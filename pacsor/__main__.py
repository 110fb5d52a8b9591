import sys

from pacsor.launcher import main

sys.exit(main())
