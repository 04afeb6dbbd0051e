"""``python -m mrcnn <command> ...``: the command line of mrcnn.cli."""

import sys

from mrcnn.cli import main

if __name__ == "__main__":
    sys.exit(main())
