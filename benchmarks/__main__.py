"""`python -m benchmarks`: the benchmark command (see benchmarks/run.py)."""

import sys

from benchmarks.run import main

sys.exit(main())
