"""``statlane demo``: the quick-start tour on embedded defaults.

Until the end-to-end service exists, the demo generates a small set of synthetic studies (CT
heads with and without a bleed, a gantry-tilted head, a JPEG 2000 head, a chest CT, CR and DX
radiographs, and one broken study) and shows what preprocessing makes of each: the volume's
geometry, Hounsfield range, the model-ready tensor, the time taken, and the typed error that
stops the broken study before any model sees it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from models.synthetic import generate_study
from preprocessing.pipeline import Pipeline
from serving.commands.inspect import format_report, inspect_study

# (label, kind, generator options, pipeline name)
_STUDIES: tuple[tuple[str, str, dict[str, Any], str], ...] = (
    ("CT head, bleed", "ct-head", {"finding": True, "priority": "STAT"}, "ct-head"),
    ("CT head, normal", "ct-head", {"finding": False}, "ct-head"),
    ("CT head, 20 deg tilt", "ct-head", {"gantry_tilt_deg": 20.0, "finding": True}, "ct-head"),
    ("CT head, JPEG 2000", "ct-head", {"compression": "jpeg2000"}, "ct-head"),
    ("CT chest, nodule", "ct-chest", {"finding": True}, "ct-chest"),
    ("CR chest, PTX", "cr-chest", {"finding": True}, "radiograph"),
    ("DX chest", "dx-chest", {}, "radiograph"),
    ("CT head, slice lost", "ct-head", {"fault": "missing-slice"}, "ct-head"),
)

# Embedded default pipelines; packaged models carry their own in their manifests.
PIPELINES: dict[str, list[dict[str, Any]]] = {
    "ct-head": [
        {"transform": "Orientation", "axcodes": "RAS"},
        {"transform": "Spacing", "pixdim": [1.0, 1.0, 5.0]},
        {"transform": "Window", "center": 40, "width": 80},
        {"transform": "Resize", "spatial_size": [128, 128, 32]},
    ],
    "ct-chest": [
        {"transform": "Orientation", "axcodes": "RAS"},
        {"transform": "Spacing", "pixdim": [1.5, 1.5, 2.5]},
        {"transform": "Window", "center": -600, "width": 1500},
        {"transform": "Resize", "spatial_size": [160, 160, 96]},
    ],
    "radiograph": [
        {"transform": "ScaleIntensity", "minv": 0.0, "maxv": 1.0},
        {"transform": "Resize", "spatial_size": [256, 256, 1]},
    ],
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``statlane demo``."""
    parser = subparsers.add_parser("demo", help="generate synthetic studies and preprocess them")
    parser.add_argument("--out", type=Path, default=Path("var/demo"), help="working folder")
    parser.add_argument("--seed", type=int, default=7, help="seed of the synthetic studies")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Generate the demo studies, preprocess each, print a table; 0 when all went as expected."""
    studies_dir: Path = args.out / "studies"
    if studies_dir.exists():
        shutil.rmtree(studies_dir)
    studies_dir.mkdir(parents=True)
    pipelines = {name: Pipeline.from_spec(spec) for name, spec in PIPELINES.items()}

    print(f"statlane demo: generating {len(_STUDIES)} synthetic studies in {studies_dir}")
    generated = []
    progress = tqdm(_STUDIES, desc="synthesize", unit="study", file=sys.stderr)
    for index, (label, kind, options, pipeline_name) in enumerate(progress):
        study = generate_study(kind, studies_dir, seed=args.seed + index, **options)
        generated.append((label, study, pipeline_name))

    print("\nseries -> volume -> model-ready tensor (ms on this machine):")
    unexpected = 0
    for label, study, pipeline_name in tqdm(generated, desc="preprocess", file=sys.stderr):
        reports = inspect_study(study.study_dir, pipelines[pipeline_name])
        for report in reports:
            print(f"  {label:<22} {format_report(report)}")
        rejected = any(report.error for report in reports)
        expected_rejection = study.fault is not None
        unexpected += rejected != expected_rejection
    print(
        "\nThe broken study was rejected with a typed error naming its series and the gap; "
        "no model would have seen it."
        if not unexpected
        else f"\n{unexpected} studies did not behave as expected"
    )
    return 1 if unexpected else 0
