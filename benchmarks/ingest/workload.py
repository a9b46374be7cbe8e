"""What is sent: synthetic CT studies written once, in storescu's order (full and smoke sizes)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.report import progress

FULL: dict[str, Any] = {
    "kind": "ct-chest",
    "instances": 500,
    "slices_per_study": 250,
    "matrix": 512,
    "slice_thickness_mm": 1.25,
    "quiet_period_s": {"stat": 1.0, "urgent": 2.0, "routine": 2.0},
}
SMOKE: dict[str, Any] = {
    "kind": "ct-head",
    "instances": 40,
    "slices_per_study": 40,
    "matrix": 128,
    "slice_thickness_mm": 5.0,
    "quiet_period_s": {"stat": 0.5, "urgent": 0.5, "routine": 0.5},
}
SLICE_LIMITS = {"ct-chest": (100, 10_000), "ct-head": (32, 64)}  # models/synthetic/spec.py


@dataclass(frozen=True)
class Workload:
    """The files in storescu's order (study by study, slices in order) and their studies."""

    files: list[Path]
    study_uids: list[str]  # send order: the last one holds the association's last instance
    study_sizes: list[int]
    total_bytes: int


def study_sizes(instances: int, per_study: int, kind: str) -> list[int]:
    """Split ``instances`` into near-equal studies of at most ``per_study`` slices."""
    count = max(1, -(-instances // per_study))
    sizes = [instances // count + (i < instances % count) for i in range(count)]
    low, high = SLICE_LIMITS[kind]
    if not all(low <= s <= high for s in sizes):
        raise SystemExit(f"{kind} studies take {low}-{high} slices; {instances} split as {sizes}")
    return sizes


def generate(root: Path, sizes: dict[str, Any]) -> Workload:
    """Write the synthetic studies once (deterministic; study ``i`` has seed ``i``)."""
    from models.synthetic import generate_study

    files: list[Path] = []
    uids: list[str] = []
    split = study_sizes(sizes["instances"], sizes["slices_per_study"], sizes["kind"])
    for i, slices in enumerate(split):
        progress(
            f"writing study {i + 1}/{len(split)}: {sizes['kind']} {slices} x {sizes['matrix']}^2"
        )
        study = generate_study(
            sizes["kind"],
            root / "studies",
            seed=i,
            slices=slices,
            slice_thickness_mm=sizes["slice_thickness_mm"],
            matrix=sizes["matrix"],
        )
        files += study.files
        uids.append(str(study.study_uid))
    return Workload(files, uids, split, sum(f.stat().st_size for f in files))
