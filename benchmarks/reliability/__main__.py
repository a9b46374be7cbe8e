"""``python -m benchmarks.reliability``."""

from __future__ import annotations

import sys

from benchmarks.reliability.cli import main

sys.exit(main())
