"""GPU check in one script (under 8 minutes on an NVIDIA machine): GPU preprocessing, the Torch
backend on CUDA for every reference model, and a short scheduling benchmark on CUDA.

Each part compares the GPU with this machine's CPU in the same run (ratios). Results:
``benchmarks/results/gpu.{json,md,png}`` (and ``benchmarks/results/gpu/scheduling.*``).
Usage: ``python -m benchmarks.gpu.run [--out DIR] [--smoke] [--allow-cpu]``; ``--allow-cpu``
runs the same code on the CPU so the script is tested where there is no GPU (never a result).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from benchmarks import scheduling
from benchmarks.report import Report, markdown_table, progress, targets_markdown, write_report
from models.backends import BackendModel, RequestContext, create_backend
from models.registry import Registry
from models.synthetic import generate_study
from preprocessing import load_series
from preprocessing.pipeline import Pipeline

PIPELINE: list[dict[str, Any]] = [
    {"transform": "Orientation", "axcodes": "RAS"},
    {"transform": "Spacing", "pixdim": [1.0, 1.0, 5.0]},
    {"transform": "Window", "center": 40, "width": 80},
    {"transform": "Resize", "spatial_size": [128, 128, 32]},
]


def _median_s(work: Callable[[], Any], repeats: int, sync: bool) -> float:
    work()  # warm-up (CUDA context, kernels)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        if sync:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _preprocessing(device: str, repeats: int, matrix: int, workdir: Path) -> list[dict[str, Any]]:
    study = generate_study(
        "ct-head", workdir, seed=0, slices=64, slice_thickness_mm=2.5, matrix=matrix
    )
    volume = load_series(study.files)
    pipeline = Pipeline.from_spec(PIPELINE)
    cpu = pipeline(volume, "cpu")
    gpu = pipeline(volume, device)
    diff = float((gpu.cpu() - cpu).abs().max())
    runs = []
    for name, dev in (("preprocess-cpu", "cpu"), (f"preprocess-{device}", device)):
        seconds = _median_s(functools.partial(pipeline, volume, dev), repeats, dev == "cuda")
        runs.append({"system": name, "metrics": {"median_s": seconds, "max_abs_diff_vs_cpu": diff}})
        progress(f"{name}: {seconds * 1000:.1f} ms per volume")
    return runs


def _inference(device: str, repeats: int, smoke: bool) -> list[dict[str, Any]]:
    registry = Registry.default()
    runs = []
    for version in registry.active():
        model = BackendModel.from_package(version.manifest, version.folder)
        shape = tuple(version.manifest.input.shape[1:])
        size = 1 if smoke else model.max_batch
        batch = np.random.default_rng(0).normal(size=(size, *shape)).astype(np.float32)
        reference = create_backend("onnxruntime", device="cpu").infer(
            model, batch, RequestContext("parity")
        )
        for system, backend in (
            ("torchscript-cpu", create_backend("torchscript", device="cpu")),
            (f"torchscript-{device}", create_backend("torchscript", device=device)),
        ):
            out = backend.infer(model, batch, RequestContext("parity"))
            diff = max(float(np.abs(out[k] - reference[k]).max()) for k in reference)

            def infer_once(b: Any = backend, m: BackendModel = model, x: Any = batch) -> Any:
                return b.infer(m, x, RequestContext("t"))  # a fresh context per request

            seconds = _median_s(infer_once, repeats, False)
            runs.append(
                {
                    "system": system,
                    "model": model.ident,
                    "batch": size,
                    "metrics": {"median_s": seconds, "max_abs_diff_vs_onnxruntime": diff},
                }
            )
            progress(f"{model.ident} {system}: batch {size} in {seconds * 1000:.1f} ms")
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    """Run the GPU checks and write ``gpu.{json,md,png}``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--allow-cpu", action="store_true")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.allow_cpu:
        print(
            "benchmarks.gpu: no CUDA device here; use --allow-cpu to test the script",
            file=sys.stderr,
        )
        return 2
    repeats = 1 if args.smoke else 20
    report = Report(
        "gpu",
        args.smoke or device == "cpu",
        workload={
            "device": device,
            "repeats": repeats,
            "pipeline": PIPELINE,
            "volume": "ct-head 64 slices" + (" 64x64" if args.smoke else " 512x512"),
        },
    )
    with tempfile.TemporaryDirectory() as tmp:
        report.runs += _preprocessing(device, repeats, 64 if args.smoke else 512, Path(tmp))
    report.runs += _inference(device, repeats, args.smoke)
    by_system = {r["system"]: r["metrics"]["median_s"] for r in report.runs if "model" not in r}
    if f"preprocess-{device}" in by_system:
        report.ratios["preprocess_cpu_s_over_gpu_s"] = (
            by_system["preprocess-cpu"] / by_system[f"preprocess-{device}"]
        )
    for run in report.runs:
        if "model" in run and run["system"] == f"torchscript-{device}":
            cpu = next(
                r
                for r in report.runs
                if r.get("model") == run["model"] and r["system"] == "torchscript-cpu"
            )
            report.ratios[f"{run['model']}_cpu_s_over_gpu_s"] = (
                cpu["metrics"]["median_s"] / run["metrics"]["median_s"]
            )
    report.targets = {key: {"at_least": 1.0} for key in report.ratios}
    if not args.smoke:
        progress("short scheduling benchmark on the GPU backend")
        scheduling.main(
            [
                "--backend",
                "torchscript",
                "--device",
                device,
                "--duration",
                "20",
                "--no-triton",
                "--out",
                str(args.out / "gpu"),
            ]
        )
    rows = [
        [
            r["system"],
            r.get("model", "-"),
            r["metrics"]["median_s"],
            r["metrics"].get(
                "max_abs_diff_vs_cpu", r["metrics"].get("max_abs_diff_vs_onnxruntime")
            ),
        ]
        for r in report.runs
    ]
    body = markdown_table(["system", "model", "median s", "max abs diff"], rows)
    body += "\n\n## Ratios and targets\n\n" + targets_markdown(report)
    figure = Figure(figsize=(8, 4))
    axes = figure.subplots()
    axes.barh(
        [f"{r['system']} {r.get('model', '')}" for r in report.runs],
        [r["metrics"]["median_s"] for r in report.runs],
    )
    axes.set(xlabel="median seconds (lower is better)", xscale="log", title=f"GPU check ({device})")
    write_report(report, args.out, body, figure)
    return 0


if __name__ == "__main__":
    sys.exit(main())
