"""``python -m compute.cli``: the ``rosetta`` command."""

import sys

from compute.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
