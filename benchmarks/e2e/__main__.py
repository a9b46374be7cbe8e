"""``python -m benchmarks.e2e``: runs :func:`benchmarks.e2e.cli.main`."""

from __future__ import annotations

import sys

import benchmarks.e2e as package
from benchmarks.e2e.cli import main

if __name__ == "__main__":
    # The results record the command as ``python -m <__main__.__spec__.name> ...``
    # (benchmarks.report.command_line): name the package, as before it was split into modules,
    # not this __main__ module.
    __spec__ = package.__spec__
    sys.exit(main())
