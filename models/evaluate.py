"""Measure reference packages on held-out synthetic studies, beside a named baseline rule.

Cases come from seeds at or above :data:`~models.reference.recipes.EVAL_SEED_START`, a range
training never draws from. Each case is built in-process exactly as ``generate_study`` would
write it (held equal by a test) and goes through the package's own manifest, runner and
postprocessing. Metrics: sensitivity and specificity at the manifest's presence threshold, AUC
(Mann-Whitney), and for segmentation Dice and the median relative volume error against the
ground-truth volume. ``python -m models.evaluate`` evaluates every shipped package, writes the
metrics into each model card and ``benchmarks/results/models_eval.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage
from tqdm import tqdm

from models.manifest import Manifest, dump_manifest, load_manifest
from models.postprocess import postprocess
from models.reference.data import ModelSample, case_for, model_sample
from models.reference.recipes import EVAL_SEED_START, TRAIN_SEEDS, Recipe, recipe_for
from models.runner import ModelRunner

PACKAGES_ROOT = Path(__file__).resolve().parent / "packages"
RESULTS_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
TARGETS: dict[str, dict[str, dict[str, float]]] = {
    "ich-ct-head": {
        "sensitivity": {"at_least": 0.95},
        "specificity": {"at_least": 0.90},
        "median_volume_error": {"at_most": 0.20},
    },
    "cxr-pneumothorax": {"auc": {"at_least": 0.95}},
    "ct-chest-nodule": {"auc": {"at_least": 0.95}},
}


def auc(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """Area under the ROC curve as the Mann-Whitney U statistic (ties count one half)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    pos, neg = s[y], s[~y]
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    ranks = _average_ranks(np.concatenate([pos, neg]))
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(values.size, dtype=np.float64)
    sorted_values = values[order]
    i = 0
    while i < values.size:
        j = i
        while j + 1 < values.size and sorted_values[j + 1] == sorted_values[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def rates(predicted: npt.ArrayLike, labels: npt.ArrayLike) -> tuple[float, float]:
    """(sensitivity, specificity) of binary calls."""
    p = np.asarray(predicted, dtype=bool)
    y = np.asarray(labels, dtype=bool)
    sens = float((p & y).sum() / max(int(y.sum()), 1))
    spec = float((~p & ~y).sum() / max(int((~y).sum()), 1))
    return sens, spec


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice overlap of two boolean masks (1.0 when both are empty)."""
    total = int(prediction.sum()) + int(truth.sum())
    return 1.0 if total == 0 else float(2.0 * (prediction & truth).sum() / total)


# --- baselines: trivial, named rules on the model input --------------------------------------


def _ich_baseline(sample: ModelSample) -> float:
    """Voxels > 55 HU inside the (eroded) brain, 0..100 HU: any voxel calls a haemorrhage."""
    hu = sample.image[0] * 140.0 - 20.0  # undo Window(center 50, width 140)
    brain = ndimage.binary_erosion((hu > 0.0) & (hu < 100.0), structure=np.ones((3, 3, 3)))
    return float(((hu > 55.0) & brain).sum())


def _cxr_baseline(sample: ModelSample) -> float:
    """Darkness of the upper-lateral lung zones (a pneumothorax lowers attenuation there)."""
    image = sample.image[0]  # [column, row], row 0 at the top
    n = image.shape[0]
    rows = slice(int(0.15 * n), int(0.5 * n))
    zones = [image[int(0.1 * n) : int(0.3 * n), rows], image[int(0.7 * n) : int(0.9 * n), rows]]
    return float(-min(float(z.mean()) for z in zones))


def _nodule_baseline(sample: ModelSample) -> float:
    """Soft-tissue voxels (> -300 HU) enclosed by lung (< -500 HU) not connected to outside air."""
    hu = sample.image[0] * 1500.0 - 1350.0  # undo Window(center -600, width 1500)
    low, _ = ndimage.label(hu < -500.0)
    border = np.unique(np.concatenate([low[[0, -1]].ravel(), low[:, [0, -1]].ravel()]))
    lung = (low > 0) & ~np.isin(low, border)
    filled = np.stack([ndimage.binary_fill_holes(lung[:, :, k]) for k in range(lung.shape[2])], 2)
    return float(((hu > -300.0) & filled & ~lung).sum())


BASELINES: dict[str, tuple[str, Callable[[ModelSample], float], float | None]] = {
    "ich-ct-head": ("threshold-55HU-in-brain", _ich_baseline, 1.0),
    "cxr-pneumothorax": ("dark-upper-lateral-zones", _cxr_baseline, None),
    "ct-chest-nodule": ("soft-tissue-inside-lung", _nodule_baseline, 1.0),
}
"""Name, score and fixed call threshold (``None``: best Youden threshold on the cases)."""


def _youden(scores: np.ndarray, labels: np.ndarray) -> float:
    best, best_t = -1.0, float(scores.max())
    for t in np.unique(scores):
        sens, spec = rates(scores >= t, labels)
        if sens + spec > best:
            best, best_t = sens + spec, float(t)
    return best_t


# --- evaluation -------------------------------------------------------------------------------


def evaluate_package(
    folder: Path,
    *,
    cases: int = 200,
    seed: int = EVAL_SEED_START,
    backend: str = "onnxruntime",
    record: bool = False,
) -> dict[str, Any]:
    """Evaluate one version folder on ``cases`` held-out phantoms from seed ``seed`` on.

    Args:
        folder: A package version folder (manifest and weights).
        cases: Number of studies (findings on odd seeds, so about half positive).
        seed: First seed; must lie above the training range.
        backend: ``onnxruntime`` or ``torchscript``.
        record: Write the metrics into the manifest's model card.

    Returns:
        ``{"system", "model", "cases", "seeds", "backend", "seconds", "metrics",
        "baseline": {"system", "metrics"}}``; metrics are floats (rates in [0, 1]).
    """
    return evaluate_packages([folder], cases=cases, seed=seed, backend=backend, record=record)[0]


def evaluate_packages(
    folders: Sequence[Path],
    *,
    cases: int = 200,
    seed: int = EVAL_SEED_START,
    backend: str = "onnxruntime",
    record: bool = False,
) -> list[dict[str, Any]]:
    """Like :func:`evaluate_package` for several folders; versions of one model share cases."""
    if seed <= TRAIN_SEEDS[1]:
        raise ValueError(f"evaluation seed {seed} overlaps the training seeds {TRAIN_SEEDS}")
    manifests = [load_manifest(Path(f)) for f in folders]
    results: dict[int, dict[str, Any]] = {}
    for name in dict.fromkeys(m.name for m in manifests):
        group = [i for i, m in enumerate(manifests) if m.name == name]
        runners = [ModelRunner(manifests[i], Path(folders[i]), backend) for i in group]
        results_of = _evaluate_model(recipe_for(name), runners, cases, seed)
        for i, result in zip(group, results_of, strict=True):
            results[i] = result
            if record:
                record_metrics(Path(folders[i]), manifests[i], result)
    return [results[i] for i in range(len(manifests))]


def _evaluate_model(
    recipe: Recipe, runners: list[ModelRunner], cases: int, seed: int
) -> list[dict[str, Any]]:
    pipeline = runners[0].manifest.pipeline()
    labels: list[bool] = []
    baseline_scores: list[float] = []
    per_model: list[dict[str, list[float]]] = [
        {"score": [], "present": [], "dice": [], "volume_error": [], "seconds": []} for _ in runners
    ]
    base_name, base_score, base_threshold = BASELINES[recipe.name]
    for s in tqdm(range(seed, seed + cases), desc=f"evaluate {recipe.name}", unit="case"):
        case = case_for(recipe, s)
        sample = model_sample(recipe, case, pipeline)
        labels.append(case.finding)
        baseline_scores.append(base_score(sample))
        for runner, acc in zip(runners, per_model, strict=True):
            started = time.perf_counter()
            outputs = runner.run(sample.image[None])
            acc["seconds"].append(time.perf_counter() - started)
            finding = postprocess(outputs, runner.manifest, sample.affine_ras)[0]
            acc["score"].append(finding.probability)
            acc["present"].append(float(finding.present))
            if recipe.task == "segmentation" and case.finding and sample.target is not None:
                rules = runner.manifest.postprocessing
                prob = 1.0 / (1.0 + np.exp(-outputs[recipe.output_name][0, 0]))
                acc["dice"].append(dice(prob > rules.voxel_threshold, sample.target[0] > 0.5))
                truth = case.truth_volume_ml or 0.0
                measured = finding.volume_ml or 0.0
                acc["volume_error"].append(abs(measured - truth) / max(truth, 1e-9))
    y = np.asarray(labels)
    b = np.asarray(baseline_scores)
    threshold = base_threshold if base_threshold is not None else _youden(b, y)
    b_sens, b_spec = rates(b >= threshold, y)
    baseline = {
        "system": base_name,
        "metrics": {"sensitivity": b_sens, "specificity": b_spec, "auc": auc(b, y)},
        "threshold": threshold,
        "threshold_rule": "fixed" if base_threshold is not None else "best Youden on these cases",
    }
    out = []
    for runner, acc in zip(runners, per_model, strict=True):
        sens, spec = rates([bool(p) for p in acc["present"]], labels)
        metrics: dict[str, float] = {
            "sensitivity": sens,
            "specificity": spec,
            "auc": auc(acc["score"], labels),
            "cases": float(cases),
            "positives": float(y.sum()),
            "latency_median_s": float(np.median(acc["seconds"])),
        }
        if acc["dice"]:
            metrics["dice"] = float(np.mean(acc["dice"]))
            metrics["median_volume_error"] = float(np.median(acc["volume_error"]))
        out.append(
            {
                "system": runner.manifest.ident,
                "model": runner.manifest.name,
                "version": runner.manifest.version,
                "cases": cases,
                "seeds": [seed, seed + cases - 1],
                "backend": runner.backend.value,
                "metrics": metrics,
                "baseline": baseline,
            }
        )
    return out


def record_metrics(folder: Path, manifest: Manifest, result: dict[str, Any]) -> Manifest:
    """Write ``result``'s metrics and evaluation data into the version's model card."""
    lo, hi = result["seeds"]
    card = manifest.card.model_copy(
        update={
            "metrics": {k: round(float(v), 4) for k, v in result["metrics"].items()},
            "evaluation_data": (
                f"{result['cases']} held-out synthetic studies, seeds {lo}-{hi} (never used in "
                f"training), findings on odd seeds, backend {result['backend']}; baseline "
                f"{result['baseline']['system']}: "
                + ", ".join(f"{k} {v:.3f}" for k, v in result["baseline"]["metrics"].items())
            ),
        }
    )
    updated = manifest.model_copy(update={"card": card})
    dump_manifest(updated, folder)
    return updated


def shipped_packages(root: Path = PACKAGES_ROOT) -> list[Path]:
    """Every version folder under ``root`` (``<name>/<version>/manifest.yaml``), sorted."""
    folders = [p.parent for p in root.glob("*/*/manifest.yaml") if p.parent.name.isdigit()]
    return sorted(folders, key=lambda p: (p.parent.name, int(p.name)))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m models.evaluate``: evaluate shipped packages, record cards, write results."""
    from models.reference.report import build_report, write_report

    parser = argparse.ArgumentParser(prog="python -m models.evaluate", description=__doc__)
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--seed", type=int, default=EVAL_SEED_START)
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--smoke", action="store_true", help="20 cases, no card update")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    cases = 20 if args.smoke else args.cases
    results = evaluate_packages(
        shipped_packages(), cases=cases, seed=args.seed, backend=args.backend, record=not args.smoke
    )
    report = build_report(results, TARGETS, smoke=args.smoke)
    for path in write_report(report, args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
