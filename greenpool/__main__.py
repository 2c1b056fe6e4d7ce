"""``python -m greenpool``: the command line (see :mod:`greenpool.cli`)."""
from __future__ import annotations

import sys

from greenpool.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
