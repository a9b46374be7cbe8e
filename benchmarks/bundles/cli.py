"""The command line: ``python -m benchmarks.bundles [options]`` (see the package docstring)."""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import benchmarks.bundles as package
from benchmarks.bundles.measure import measure, runs_and_ratios
from benchmarks.bundles.pages import figure, markdown
from benchmarks.bundles.workload import FULL, NAME, SMOKE, TARGETS, describe, prepare, windows
from benchmarks.report import Report, progress, write_report


def build_report(args: argparse.Namespace) -> Report:
    """Prepare the workload, measure every system, derive ratios and agreement."""
    sizes = SMOKE if args.smoke else FULL
    repeats = args.repeats or sizes["repeats"]
    warmup = sizes["warmup"] if args.warmup < 0 else args.warmup
    with tempfile.TemporaryDirectory(prefix="statlane-bench-bundles-") as tmp:
        root = Path(tmp)
        work = prepare(root, sizes, progress)
        raw = measure(work, root, repeats, warmup, args.device, progress)
        labels = {system: np.load(root / f"{system}.npy") for system in raw}
        for system, array in labels.items():
            if array.shape != work.source_shape:
                raise SystemExit(f"{system}: label map {array.shape}, source {work.source_shape}")
        workload = describe(work, sizes, args.device)
    runs, ratios = runs_and_ratios(raw, labels)
    grid = raw["monai"]["model_grid"]
    inferer: dict[str, Any] = workload["inferer"]
    workload |= {
        "model_grid": grid,
        "windows": windows(grid, inferer["roi_size"], inferer["overlap"]),
        "repeats": repeats,
        "warmup": warmup,
        "timing": "wall clock (perf_counter) per study, DICOM folder -> label map on the source "
        "grid; model loaded once per system before timing (model_load_s)",
        "order": "one spawned process per system; warm-ups first, then repeats round robin, "
        "order rotated each round, one system computing at a time",
        "memory": "peak RSS (VmHWM) of each system's own process: imports, model, runs",
    }
    return Report(
        f"{NAME}-gpu" if args.device == "cuda" else NAME,
        args.smoke,
        workload,
        runs,
        ratios,
        {k: dict(v) for k, v in TARGETS.items()},
    )


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; see the package docstring."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bundles", description=(package.__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--smoke", action="store_true", help="tiny CT, 1 repeat, no warm-up (CI)")
    parser.add_argument("--repeats", type=int, default=0, help="timed repeats per system")
    parser.add_argument("--warmup", type=int, default=-1, help="untimed runs per system first")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--render", type=Path, help=argparse.SUPPRESS)  # JSON -> .md/.png again
    args = parser.parse_args(argv)
    if args.render:
        report = Report(**json.loads(args.render.read_text(encoding="utf-8")))
        paths = write_report(report, args.out, markdown(report), figure(report))
        progress("wrote " + ", ".join(str(p) for p in paths.values()))
        return 0
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            progress("--device cuda: no CUDA device here")
            return 2
    report = build_report(args)
    paths = write_report(report, args.out, markdown(report), figure(report))
    for key, ok in report.target_status().items():
        progress(f"{key} = {report.ratios[key]:.3f} ({'met' if ok else 'MISSED'})")
    progress("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
