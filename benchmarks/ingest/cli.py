"""The command line: ``python -m benchmarks.ingest [options]`` (see the package docstring).

Also the entry point of the reference SCPs this benchmark starts as subprocesses (the hidden
options ``--ack-only-port`` and ``--spool-only-port PORT --spool-root DIR``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks.ingest.driver import build_report
from benchmarks.ingest.pages import render
from benchmarks.ingest.systems import serve_ack_only, serve_spool_only
from benchmarks.report import progress, write_report


def _summary() -> str:
    """The first line of the package's docstring (the package is loaded: it runs this module)."""
    doc = sys.modules[__name__.rpartition(".")[0]].__doc__ or ""
    return doc.splitlines()[0] if doc else ""


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; see the package docstring."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ingest", description=_summary())
    parser.add_argument("--smoke", action="store_true", help="40 small instances, 1 repeat (CI)")
    parser.add_argument("--instances", type=int, default=0, help="instances sent (default 500)")
    parser.add_argument("--repeats", type=int, default=0, help="runs per system (default 3)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--tmp", type=Path, default=None, help="parent of the scratch folder")
    parser.add_argument("--ack-only-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--spool-only-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--spool-root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ack_only_port:
        serve_ack_only(args.ack_only_port)
        return 0
    if args.spool_only_port:
        serve_spool_only(args.spool_only_port, args.spool_root)
        return 0
    report = build_report(args)
    body, fig = render(report)
    paths = write_report(report, args.out, body, fig)
    for key, ok in report.target_status().items():
        progress(f"{key} = {report.ratios[key]:.3f} ({'met' if ok else 'MISSED'})")
    progress("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
