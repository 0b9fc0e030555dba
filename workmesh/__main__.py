"""``python -m workmesh``: the command line."""

import sys

from workmesh.node.cli import main

if __name__ == "__main__":
    sys.exit(main())
