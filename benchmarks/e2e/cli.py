"""The command line: ``python -m benchmarks.e2e [options]`` (see the package docstring)."""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks.e2e.pages import figure, markdown
from benchmarks.e2e.phases import build_report
from benchmarks.e2e.systems import say
from benchmarks.e2e.targets import why_missed
from benchmarks.report import write_report


def _summary() -> str:
    """The first line of the package's docstring (the package is loaded: it runs this module)."""
    doc = sys.modules[__name__.rpartition(".")[0]].__doc__ or ""
    return doc.splitlines()[0] if doc else ""


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; see the package docstring."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.e2e", description=_summary())
    parser.add_argument("--smoke", action="store_true", help="12 s per system, no warm-up (CI)")
    parser.add_argument("--duration", type=float, default=0.0, help="arrival window per system, s")
    parser.add_argument("--load", type=float, default=0.8, help="background load / capacity")
    parser.add_argument(
        "--ct-fraction", type=float, default=0.5, help="chest CTs in the background"
    )
    parser.add_argument(
        "--stat-interval", type=float, default=0.0, help="seconds between stat CT heads"
    )
    parser.add_argument("--capacity", type=float, default=0.0, help="studies/s; skips measuring it")
    parser.add_argument(
        "--drain-timeout", type=float, default=300.0, help="wait for SRs after the window, s"
    )
    parser.add_argument("--seed", type=int, default=7, help="arrival process seed")
    parser.add_argument("--workdir", type=Path, help="studies (kept), services and Orthanc (wiped)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("pynetdicom", "highdicom"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    report, records = build_report(args)
    paths = write_report(
        report, args.out, markdown(report, why_missed(report)), figure(report.runs, records)
    )
    for key, ok in report.target_status().items():
        say(f"{key} = {report.ratios.get(key, math.nan):.3f}: {'met' if ok else 'MISSED'}")
    say(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0
