"""The driver side: one spawned worker per system, repeats interleaved, then agreement.

Workers start one after another (each loads its model alone), then every system runs its
warm-ups, then the timed repeats go round robin with the order rotated each round (round 1:
A B C, round 2: B C A, ...), so slow drift of a shared machine lands on every system alike.
Only one worker computes at a time; the others wait on their pipe.
"""

from __future__ import annotations

import multiprocessing
import statistics
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bundles import systems as worker_side
from benchmarks.bundles.workload import E2E_KEY, STAGES, SYSTEMS, TS_KEY, Workload


def _receive(conn: Connection, system: str) -> dict[str, Any]:
    message = conn.recv()
    if "error" in message:
        raise SystemExit(f"worker {system} failed:\n{message['error']}")
    return dict(message)


def measure(
    work: Workload,
    root: Path,
    repeats: int,
    warmup: int,
    device: str,
    say: Callable[[str], None],
) -> dict[str, dict[str, Any]]:
    """Raw records per system: model load, warm-up and timed runs, peak RSS; labels saved."""
    context = multiprocessing.get_context("spawn")
    workers: dict[str, tuple[BaseProcess, Connection]] = {}
    raw: dict[str, dict[str, Any]] = {}
    try:
        for i, system in enumerate(SYSTEMS, 1):
            parent, child = context.Pipe()
            args: tuple[Any, ...] = (child, system, work.bundle, work.package, work.series_dir)
            args += (device, work.source_affine_lps, root / f"{system}.npy")
            process: BaseProcess = context.Process(
                target=worker_side.worker, args=args, daemon=True
            )
            process.start()
            child.close()
            workers[system] = (process, parent)
            raw[system] = _receive(parent, system)
            raw[system].update(warmup_e2e_s=[], e2e_s=[], stage_s=[], order=[])
            say(
                f"[{i}/{len(SYSTEMS)}] {system}: spawned, model loaded in "
                f"{raw[system]['model_load_s']:.1f} s"
            )
        for w in range(warmup):
            for system in SYSTEMS:
                record = _run(workers[system][1], system)
                raw[system]["warmup_e2e_s"].append(record["e2e_s"])
                say(f"warm-up {w + 1}/{warmup} {system}: {record['e2e_s']:.1f} s")
        for r in range(repeats):
            order = SYSTEMS[r % len(SYSTEMS) :] + SYSTEMS[: r % len(SYSTEMS)]
            for position, system in enumerate(order):
                record = _run(workers[system][1], system)
                raw[system]["e2e_s"].append(record["e2e_s"])
                raw[system]["stage_s"].append(record["stage_s"])
                raw[system]["order"].append(position)
                stages = " ".join(f"{k} {v:.2f}" for k, v in record["stage_s"].items())
                say(f"repeat {r + 1}/{repeats} {system}: {record['e2e_s']:.2f} s ({stages})")
        for system in SYSTEMS:
            process, conn = workers[system]
            conn.send("finish")
            raw[system].update(_receive(conn, system))
            process.join(timeout=60)
    finally:
        for child_process, conn in workers.values():
            conn.close()
            if child_process.is_alive():
                child_process.terminate()
                child_process.join(timeout=10)
    return raw


def _run(conn: Connection, system: str) -> dict[str, Any]:
    conn.send("run")
    return _receive(conn, system)


def dice(a: np.ndarray, b: np.ndarray, label: int) -> float:
    """Dice of ``label`` between two label maps (1.0 when neither has it)."""
    x, y = a == label, b == label
    total = int(x.sum()) + int(y.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(x, y).sum()) / total


def agreement(labels: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Per system: label fractions, and Dice/voxel agreement with monai and statlane-onnxruntime."""
    out: dict[str, dict[str, float]] = {}
    for system, mine in labels.items():
        values: dict[str, float] = {
            "spleen_fraction": float((mine == 1).mean()),
            "background_fraction": float((mine == 0).mean()),
        }
        for other, tag in (("monai", "monai"), ("statlane-onnxruntime", "statlane_onnxruntime")):
            if other == system:
                continue
            values[f"dice_spleen_vs_{tag}"] = dice(mine, labels[other], 1)
            values[f"dice_background_vs_{tag}"] = dice(mine, labels[other], 0)
            values[f"voxels_equal_vs_{tag}"] = float((mine == labels[other]).mean())
        out[system] = values
    return out


def runs_and_ratios(
    raw: dict[str, dict[str, Any]], labels: dict[str, np.ndarray]
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """The report's ``runs`` (raw numbers and their medians) and ``ratios`` derived from them."""
    agree = agreement(labels)
    runs: list[dict[str, Any]] = []
    for system in SYSTEMS:
        r = raw[system]
        per_stage = {s: [float(rep.get(s, 0.0)) for rep in r["stage_s"]] for s in STAGES}
        other = [e - sum(rep.values()) for e, rep in zip(r["e2e_s"], r["stage_s"], strict=True)]
        metrics = {
            "e2e_s": r["e2e_s"],
            "median_e2e_s": statistics.median(r["e2e_s"]),
            "min_e2e_s": min(r["e2e_s"]),
            "stage_s": per_stage,
            "median_stage_s": {s: statistics.median(v) for s, v in per_stage.items()},
            "other_s": other,
            "median_other_s": statistics.median(other),
            "warmup_e2e_s": r["warmup_e2e_s"],
            "position_in_round": r["order"],
            "model_load_s": r["model_load_s"],
            "peak_rss_bytes": r["peak_rss_bytes"],
            "ru_maxrss_bytes": r["ru_maxrss_bytes"],
            "rss_after_load_bytes": r["rss_after_load_bytes"],
            "torch_threads": r["torch_threads"],
            "label_map_shape": list(labels[system].shape),
            **agree[system],
        }
        if "peak_cuda_torch_bytes" in r:
            metrics["peak_cuda_torch_bytes"] = r["peak_cuda_torch_bytes"]
        runs.append({"system": system, "metrics": metrics})
    med: dict[str, dict[str, Any]] = {run["system"]: run["metrics"] for run in runs}
    ratios = {
        E2E_KEY: med["statlane-onnxruntime"]["median_e2e_s"] / med["monai"]["median_e2e_s"],
        TS_KEY: med["statlane-torchscript"]["median_e2e_s"] / med["monai"]["median_e2e_s"],
    }
    for backend in ("onnxruntime", "torchscript"):
        mine = med[f"statlane-{backend}"]["median_stage_s"]
        theirs = med["monai"]["median_stage_s"]
        for stage in STAGES:
            if theirs[stage] > 0:
                ratios[f"{backend}_over_monai_{stage}"] = mine[stage] / theirs[stage]
    return runs, ratios
