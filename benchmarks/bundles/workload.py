"""The workload: the spleen bundle with random weights, imported; a synthetic abdominal CT.

Everything here runs once, in the driver, before any system is measured (nothing is timed but
the import, which is reported for the record).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

NAME = "bundles"
SYSTEMS = ("statlane-onnxruntime", "statlane-torchscript", "monai")
STAGES = ("load", "preprocess", "inference", "postprocess", "placement")
E2E_KEY = "statlane_over_monai_e2e"
TS_KEY = "statlane_torchscript_over_monai_e2e"
TARGETS: dict[str, dict[str, float]] = {E2E_KEY: {"at_most": 0.7}}
AIM = 0.5
"""What the e2e target aims at (the target itself is ``at_most 0.7``)."""
SEED = 0
FULL: dict[str, Any] = {
    "matrix": 512,
    "slices": 200,
    "slice_thickness_mm": 2.5,
    "repeats": 3,
    "warmup": 1,
    "pixdim": None,
}
SMOKE: dict[str, Any] = {
    "matrix": 64,
    "slices": 48,
    "slice_thickness_mm": 2.0,
    "repeats": 1,
    "warmup": 0,
    # The phantom's field of view is 380 mm whatever the matrix, so at the bundle's 1.5 mm the
    # model grid is 253 voxels across (25+ windows of 96^3); 4 mm makes it one window.
    "pixdim": [4.0, 4.0, 4.0],
}


@dataclass(frozen=True)
class Workload:
    """What the systems read: the bundle, its statlane package, the DICOM series folder."""

    bundle: Path
    package: Path
    series_dir: Path
    study_dir: Path
    source_affine_lps: np.ndarray
    """Source voxel ``[column, row, slice]`` -> LPS mm (from the study's ground truth)."""
    source_shape: tuple[int, int, int]
    """``(slices, rows, columns)``: the label maps' shape on the source grid."""
    import_s: float
    bundle_config: dict[str, Any]


def _set_spacing(bundle: Path, pixdim: list[float]) -> None:
    """Smoke only: the bundle copy's ``Spacingd`` pixdim (both systems read this copy)."""
    path = bundle / "configs" / "inference.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    for transform in config["preprocessing"]["transforms"]:
        if transform["_target_"] == "Spacingd":
            transform["pixdim"] = list(pixdim)
    path.write_text(json.dumps(config, indent=4), encoding="utf-8")


def prepare(root: Path, sizes: dict[str, Any], say: Callable[[str], None]) -> Workload:
    """Write the bundle (random weights), import it, write the CT and its DICOM-only folder."""
    from models.bundle import import_bundle
    from models.synthetic import generate_study, load_label_map
    from tests.bundle_factory import published_bundle

    say("writing the spleen bundle with random weights (models/model.pt, as published)")
    bundle = published_bundle(root / "bundles", pt=True, seed=SEED)
    if sizes["pixdim"] is not None:
        _set_spacing(bundle, sizes["pixdim"])
    started = time.perf_counter()
    report = import_bundle(bundle, root / "repo")
    import_s = time.perf_counter() - started
    say(f"imported {report.ident} in {import_s:.1f} s (ONNX + TorchScript export, parity checked)")
    say(
        f"writing synthetic ct-abdomen: {sizes['slices']} x {sizes['matrix']}^2 slices, "
        f"{sizes['slice_thickness_mm']} mm"
    )
    study = generate_study(
        "ct-abdomen",
        root / "study",
        seed=SEED,
        slices=sizes["slices"],
        slice_thickness_mm=sizes["slice_thickness_mm"],
        matrix=sizes["matrix"],
    )
    # One folder holding only the series' DICOM files: MONAI's PydicomReader reads every file
    # of the folder it is given (the study folder also holds labels.npy and ground truth).
    series_dir = root / "series"
    series_dir.mkdir()
    for i, path in enumerate(sorted(study.files)):
        os.link(path, series_dir / f"{i:04d}.dcm")
    truth, affine = load_label_map(study.study_dir)
    columns, rows, slices = truth.shape
    config = json.loads((bundle / "configs" / "inference.json").read_text(encoding="utf-8"))
    return Workload(
        bundle=bundle,
        package=report.folder,
        series_dir=series_dir,
        study_dir=study.study_dir,
        source_affine_lps=affine,
        source_shape=(slices, rows, columns),
        import_s=import_s,
        bundle_config=config,
    )


def windows(grid: list[int], roi: list[int], overlap: float) -> int:
    """Sliding-window patches MONAI's ``SlidingWindowInferer`` runs over ``grid``."""
    count = 1
    for n, r in zip(grid, roi, strict=True):
        step = max(int(r * (1 - overlap)), 1)
        count *= 1 if n <= r else -(-(n - r) // step) + 1
    return count


def describe(work: Workload, sizes: dict[str, Any], device: str) -> dict[str, Any]:
    """The workload section of the report (the grid of the model comes from the runs)."""
    config = work.bundle_config
    pre = {t["_target_"]: t for t in config["preprocessing"]["transforms"]}
    return {
        "bundle": "spleen_ct_segmentation (MONAI model zoo), published configs, random weights "
        f"(seed {SEED}) saved as the bundle saves them (state dict in models/model.pt)",
        "network": {k: v for k, v in config["network_def"].items() if k != "_target_"}
        | {"class": config["network_def"]["_target_"]},
        "inferer": {k: v for k, v in config["inferer"].items() if k != "_target_"},
        "preprocessing": {
            "orientation": pre["Orientationd"]["axcodes"],
            "pixdim_mm": pre["Spacingd"]["pixdim"],
            "intensity": [pre["ScaleIntensityRanged"][k] for k in ("a_min", "a_max")],
        },
        "postprocessing": "Activations softmax, Invertd (MONAI: bilinear on probabilities; "
        "statlane: labels placed nearest), AsDiscrete argmax",
        "study": f"synthetic ct-abdomen (models.synthetic.generate_study), seed {SEED}",
        "matrix": sizes["matrix"],
        "slices": sizes["slices"],
        "slice_thickness_mm": sizes["slice_thickness_mm"],
        "source_shape_slices_rows_columns": list(work.source_shape),
        "source_voxel_mm": [float(np.linalg.norm(work.source_affine_lps[:3, i])) for i in range(3)],
        "smoke_pixdim_override": sizes["pixdim"],
        "device": device,
        "bundle_import_s": work.import_s,
        "input": "one folder holding only the series' DICOM files; every system reads it",
        "output": "label map on the source grid, (slices, rows, columns), 1 = spleen",
    }
