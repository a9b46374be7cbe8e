"""``python -m benchmarks.ingest``: runs :func:`benchmarks.ingest.cli.main`."""

from __future__ import annotations

import benchmarks.ingest as package
from benchmarks.ingest.cli import main

if __name__ == "__main__":
    # The results record the command as ``python -m <__main__.__spec__.name> ...``
    # (benchmarks.report.command_line): name the package, as before it was split into modules,
    # not this __main__ module.
    __spec__ = package.__spec__
    raise SystemExit(main())
