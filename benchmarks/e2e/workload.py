"""What is sent: the priority classes, the synthetic studies and when they arrive.

Every system receives the same studies at the same offsets; :class:`Mode` holds the durations of
a full run and of ``--smoke``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

CLASSES = ("stat", "urgent", "routine")
QUIET_S = {"stat": 1.0, "urgent": 2.0, "routine": 3.0}
DEADLINES_S = {"stat": 60.0, "urgent": 300.0, "routine": 3600.0}
# kind -> (priority class the default rules give it, matrix in pixels, slices or None)
KINDS: dict[str, tuple[str, int, int | None]] = {
    "ct-head": ("stat", 256, None),
    "ct-chest": ("routine", 192, 100),
    "cr-chest": ("urgent", 512, None),
    "dx-chest": ("urgent", 512, None),
}


@dataclass(frozen=True)
class Study:
    """One synthetic study on disk, sent at most once per service."""

    kind: str
    seed: int
    finding: bool
    study_uid: str
    files: tuple[Path, ...]

    @property
    def priority(self) -> str:
        """The priority class the default rules give this kind."""
        return KINDS[self.kind][0]


@dataclass
class Sent:
    """A study handed to storescu: when it was due (offset, seconds) and when it was acked."""

    study: Study
    due_s: float
    ack_at: datetime | None = None
    error: str | None = None


def make_studies(root: Path, wanted: Sequence[tuple[str, int, bool]]) -> list[Study]:
    """Generate ``(kind, seed, finding)`` studies under ``root`` (reused when already there).

    ``root/index.json`` remembers what was written; the generator is deterministic, so a study
    with the same kind, seed, finding and size is the same files.
    """
    from models.synthetic import generate_study

    root.mkdir(parents=True, exist_ok=True)
    index_path = root / "index.json"
    index: dict[str, Any] = json.loads(index_path.read_text()) if index_path.exists() else {}
    studies = []
    for kind, seed, finding in wanted:
        _, matrix, slices = KINDS[kind]
        key = f"{kind}:{seed}:{int(finding)}:{matrix}:{slices}"
        entry = index.get(key)
        if entry is None or not all(Path(f).exists() for f in entry["files"]):
            made = generate_study(
                kind, root, seed=seed, finding=finding, matrix=matrix, slices=slices
            )
            entry = {"uid": made.study_uid, "files": [str(f) for f in made.files]}
            index[key] = entry
            index_path.write_text(json.dumps(index))
        studies.append(Study(kind, seed, finding, entry["uid"], tuple(map(Path, entry["files"]))))
    return studies


def arrivals(
    rate_per_s: float, duration_s: float, ct_fraction: float, stat_interval_s: float, seed: int
) -> list[tuple[float, str]]:
    """``(offset_s, kind)`` sorted by time: Poisson background at ``rate_per_s`` plus a stat CT
    head every ``stat_interval_s`` seconds (random phase), all within ``duration_s``."""
    rng = np.random.default_rng(seed)
    plan: list[tuple[float, str]] = []
    t, radiographs = float(rng.exponential(1.0 / rate_per_s)), 0
    while t < duration_s:
        if rng.random() < ct_fraction:
            plan.append((t, "ct-chest"))
        else:
            plan.append((t, ("cr-chest", "dx-chest")[radiographs % 2]))
            radiographs += 1
        t += float(rng.exponential(1.0 / rate_per_s))
    t = float(rng.uniform(0.2, 0.8)) * stat_interval_s
    while t < duration_s:
        plan.append((t, "ct-head"))
        t += stat_interval_s
    return sorted(plan)


def with_studies(plan: Sequence[tuple[float, str]], root: Path, first_seed: int) -> list[Sent]:
    """One distinct study per arrival (findings on every other study of a kind)."""
    count: dict[str, int] = {}
    wanted = []
    for i, (_, kind) in enumerate(plan):
        n = count[kind] = count.get(kind, 0) + 1
        wanted.append((kind, first_seed + i, n % 2 == 0))
    studies = make_studies(root, wanted)
    return [Sent(study, offset) for (offset, _), study in zip(plan, studies, strict=True)]


@dataclass(frozen=True)
class Mode:
    """Defaults of a full run and of ``--smoke`` (seconds)."""

    duration_s: float
    stat_interval_s: float
    calibration_s: float  # the closed-loop capacity measurement
    warmup: bool


FULL = Mode(duration_s=120.0, stat_interval_s=10.0, calibration_s=60.0, warmup=True)
SMOKE = Mode(duration_s=12.0, stat_interval_s=4.0, calibration_s=15.0, warmup=False)
IN_FLIGHT = 8  # studies in flight while capacity is measured
SEED_BASE = 2_000_000  # far from the reference models' training seeds
