"""``python -m benchmarks``: the whole suite (see benchmarks/README.rst)."""
import sys

from benchmarks.run import main

sys.exit(main())
