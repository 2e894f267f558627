"""`python -m leek.cli`: the `leek` command."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
