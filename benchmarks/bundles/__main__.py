"""``python -m benchmarks.bundles``: runs :func:`benchmarks.bundles.cli.main`."""

from __future__ import annotations

import sys

from benchmarks.bundles.cli import main

if __name__ == "__main__":
    sys.exit(main())
