"""``python -m benchmarks.e2e``: runs :func:`benchmarks.e2e.cli.main`."""

from __future__ import annotations

import sys

from benchmarks.e2e.cli import main

if __name__ == "__main__":
    sys.exit(main())
