"""``python -m benchmarks.ingest``: runs :func:`benchmarks.ingest.cli.main`."""

from __future__ import annotations

from benchmarks.ingest.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
