"""Benchmark: DICOM SEG + SR of a 100-label whole-body CT segmentation, CPU and wall seconds.

Workload: a synthetic chest CT (300 x 512x512 slices, ``models.synthetic.generate_study``) and
a 100-organ segmentation result on it, made as the service makes it (``tests.result_factory.
organ_result``): organ logits on a 64x64x40 model grid, ``models.postprocess.postprocess`` for
the findings and ``serving.service.results.mask_on_source`` for the label map on the source
grid. Systems, in one process, alternating, after one warm-up build each:

* ``statlane`` - ``router.objects.build_seg`` + ``build_sr`` as the service runs them: the SEG's
  frames and per-frame functional groups written from each label's bounding box around a
  highdicom skeleton (``router.objects.seg.FAST_FRAMES``);
* ``highdicom-label-array`` - the named baseline "highdicom Segmentation from the whole label
  array": the same ``build_seg`` with ``FAST_FRAMES`` off, i.e. ``hd.seg.Segmentation`` given
  the whole (slices, rows, columns) label array, plus the same SR.

Each build is timed with ``time.process_time`` (CPU seconds of this process, all threads) and
``time.perf_counter`` (wall). Both systems must produce byte-identical SEGs (checked). Target:
statlane's SEG + SR within 5 s of CPU.

Usage: ``python -m benchmarks.result_objects [--smoke] [--repeats N] [--out benchmarks/results]``.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.report import Report, markdown_table, progress, targets_markdown, write_report

NAME = "result_objects"
SYSTEMS = ("statlane", "highdicom-label-array")
FULL: dict[str, Any] = {"labels": 100, "matrix": 512, "slices": 300, "model_grid": [64, 64, 40]}
SMOKE: dict[str, Any] = {"labels": 12, "matrix": 64, "slices": 32, "model_grid": [32, 32, 16]}
CPU_KEY = "statlane_seg_sr_cpu_s"
SPEED_KEY = "highdicom_seg_cpu_s_over_statlane_seg_cpu_s"
TARGETS = {CPU_KEY: {"at_most": 5.0}}


def _timed(build: Callable[[], Any]) -> tuple[Any, float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    out = build()
    return out, time.process_time() - cpu, time.perf_counter() - wall


def _encoded(ds: Any) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def measure(result: Any, repeats: int) -> tuple[dict[str, dict[str, Any]], bool]:
    """Per system: CPU and wall seconds of SEG, SR and both, per repeat; and SEG identity."""
    import router.objects.seg as seg_module
    from router.objects import build_seg, build_sr

    switch = seg_module.FAST_FRAMES

    def run(system: str) -> tuple[Any, dict[str, float]]:
        seg_module.FAST_FRAMES = system == "statlane"
        try:
            seg, seg_cpu, seg_wall = _timed(lambda: build_seg(result))
            _, sr_cpu, sr_wall = _timed(lambda: build_sr(result))
        finally:
            seg_module.FAST_FRAMES = switch
        times = {"seg_cpu_s": seg_cpu, "seg_wall_s": seg_wall, "sr_cpu_s": sr_cpu}
        times |= {"sr_wall_s": sr_wall, "cpu_s": seg_cpu + sr_cpu, "wall_s": seg_wall + sr_wall}
        return seg, times

    raw: dict[str, dict[str, Any]] = {s: {"repeats": []} for s in SYSTEMS}
    segs: dict[str, Any] = {}
    for system in SYSTEMS:  # warm-up: first-call costs (highdicom's IOD tables, imports)
        segs[system], _ = run(system)
        raw[system]["frames"] = int(segs[system].NumberOfFrames)
        raw[system]["segments"] = len(segs[system].SegmentSequence)
    identical = _encoded(segs["statlane"]) == _encoded(segs["highdicom-label-array"])
    for i in range(repeats):
        for system in SYSTEMS if i % 2 == 0 else SYSTEMS[::-1]:
            _, times = run(system)
            raw[system]["repeats"].append(times)
            progress(
                f"    {system}: SEG {times['seg_cpu_s']:.2f} s + SR {times['sr_cpu_s']:.2f} s "
                f"CPU, {times['wall_s']:.2f} s wall"
            )
    return raw, identical


def build_report(args: argparse.Namespace) -> Report:
    """Make the result, measure both systems, derive ratios."""
    from tests.result_factory import organ_result

    sizes = SMOKE if args.smoke else FULL
    repeats = args.repeats or (1 if args.smoke else 3)
    with tempfile.TemporaryDirectory(prefix="statlane-bench-") as tmp:
        progress(
            f"writing a {sizes['slices']} x {sizes['matrix']}^2 CT and a {sizes['labels']}-label "
            "segmentation result on it"
        )
        case = organ_result(
            Path(tmp),
            labels=sizes["labels"],
            matrix=sizes["matrix"],
            slices=sizes["slices"],
            model_grid=tuple(sizes["model_grid"]),
        )
        present = sum(f.present for f in case.result.findings)
        progress(f"measuring {', '.join(SYSTEMS)}: 1 warm-up + {repeats} timed builds each")
        raw, identical = measure(case.result, repeats)
    runs: list[dict[str, Any]] = []
    for system in SYSTEMS:
        record = raw[system]
        metrics: dict[str, Any] = {
            "frames": record["frames"],
            "segments": record["segments"],
            "repeats": record["repeats"],
            "seg_identical_to_statlane": identical,
        }
        for key in ("seg_cpu_s", "seg_wall_s", "sr_cpu_s", "sr_wall_s", "cpu_s", "wall_s"):
            metrics[f"median_{key}"] = statistics.median(r[key] for r in record["repeats"])
        runs.append({"system": system, "metrics": metrics})
    by: dict[str, dict[str, Any]] = {r["system"]: r["metrics"] for r in runs}
    ratios = {
        CPU_KEY: by["statlane"]["median_cpu_s"],
        SPEED_KEY: by["highdicom-label-array"]["median_seg_cpu_s"]
        / by["statlane"]["median_seg_cpu_s"],
        "statlane_seg_sr_wall_s": by["statlane"]["median_wall_s"],
    }
    workload = {
        "study": "synthetic chest/head CT (models.synthetic.generate_study) and organ logits "
        "(tests.result_factory.organ_result), seed 0",
        **sizes,
        "labels_present": present,
        "repeats": repeats,
        "warmup": 1,
        "timing": "time.process_time (CPU, this process) and time.perf_counter (wall) per "
        "build_seg and build_sr call; median over repeats, systems alternating",
    }
    return Report(
        NAME, args.smoke, workload, runs, ratios, {k: dict(v) for k, v in TARGETS.items()}
    )


def render(report: Report) -> tuple[str, Any]:
    """Markdown body and figure for ``report``."""
    from matplotlib.figure import Figure

    rows = []
    for run in report.runs:
        m = run["metrics"]
        rows.append(
            [
                run["system"],
                m["median_seg_cpu_s"],
                m["median_sr_cpu_s"],
                m["median_cpu_s"],
                m["median_seg_wall_s"],
                m["median_sr_wall_s"],
                m["median_wall_s"],
                m["frames"],
                m["segments"],
            ]
        )
    header = ["system", "SEG CPU s", "SR CPU s", "SEG+SR CPU s", "SEG wall s", "SR wall s"]
    header += ["SEG+SR wall s", "SEG frames", "segments"]
    w = report.workload
    identical = report.runs[0]["metrics"]["seg_identical_to_statlane"]
    why = {
        CPU_KEY: "profile build_seg (source headers, highdicom skeleton, per-frame items) and "
        "build_sr (highdicom's Comprehensive3DSR copies the content tree to collect evidence).",
    }
    body = (
        f"{w['labels']}-label segmentation ({w['labels_present']} labels present) on a "
        f"{w['slices']} x {w['matrix']}x{w['matrix']} CT; SEG (BINARY, empty frames left out) "
        "and TID 1500 SR (one measurement group with volume per label).\n\n"
        + markdown_table(header, rows)
        + "\n\n## Ratios and targets\n\n"
        + targets_markdown(report, why)
        + f"\n\nThe two SEGs are {'byte-identical' if identical else 'NOT identical'}: statlane "
        "writes the frames and their functional groups itself around a highdicom skeleton, "
        "the baseline gives highdicom the whole label array. CPU seconds are this process's "
        "(time.process_time), wall seconds perf_counter.\n"
    )
    fig = Figure(figsize=(8, 3))
    ax = fig.subplots()
    names = [r["system"] for r in report.runs]
    seg = [r["metrics"]["median_seg_cpu_s"] for r in report.runs]
    sr = [r["metrics"]["median_sr_cpu_s"] for r in report.runs]
    ax.barh(names, seg, color="tab:green", label="SEG")
    ax.barh(names, sr, left=seg, color="tab:blue", label="SR")
    ax.axvline(TARGETS[CPU_KEY]["at_most"], color="tab:red", linestyle="--", label="target")
    ax.set_xlabel("CPU seconds per result (median, lower is better)")
    ax.invert_yaxis()
    ax.legend(loc="lower right")
    fig.suptitle(f"SEG + SR, {w['labels']} labels on {w['slices']} x {w['matrix']}^2")
    return body, fig


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; see the module docstring."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.result_objects", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--smoke", action="store_true", help="tiny inputs, 1 repeat (CI)")
    parser.add_argument("--repeats", type=int, default=0, help="timed builds per system")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    report = build_report(args)
    body, fig = render(report)
    paths = write_report(report, args.out, body, fig)
    for key, ok in report.target_status().items():
        progress(f"{key} = {report.ratios[key]:.3f} ({'met' if ok else 'MISSED'})")
    progress("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
