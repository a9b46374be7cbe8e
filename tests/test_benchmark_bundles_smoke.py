"""The bundles benchmark's --smoke mode runs end to end and writes its three files."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.bundles import E2E_KEY, STAGES, SYSTEMS, TARGETS, TS_KEY
from benchmarks.report import REQUIRED_KEYS

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def test_smoke_writes_json_markdown_and_png(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "benchmarks.bundles", "--smoke", "--out", str(tmp_path)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[bench]" in done.stderr  # progress is shown
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["bundles.smoke.json", "bundles.smoke.md", "bundles.smoke.png"]
    assert (tmp_path / "bundles.smoke.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    doc = json.loads((tmp_path / "bundles.smoke.json").read_text())
    assert list(doc) == list(REQUIRED_KEYS)
    assert doc["benchmark"] == "bundles"
    assert doc["smoke"] is True
    assert doc["when"].endswith("Z")
    assert "--smoke" in doc["command"]
    assert {"cpu", "cores", "gpu", "python", "packages"} <= set(doc["machine"])
    workload = doc["workload"]
    assert workload["inferer"] == {"roi_size": [96, 96, 96], "sw_batch_size": 4, "overlap": 0.5}
    assert workload["windows"] >= 1
    assert len(workload["model_grid"]) == 3
    source_shape = workload["source_shape_slices_rows_columns"]
    assert [r["system"] for r in doc["runs"]] == list(SYSTEMS)
    for run in doc["runs"]:
        m = run["metrics"]
        assert len(m["e2e_s"]) == workload["repeats"] >= 1
        assert m["median_e2e_s"] > 0
        assert m["model_load_s"] > 0
        assert set(m["median_stage_s"]) == set(STAGES)
        assert all(len(v) == workload["repeats"] for v in m["stage_s"].values())
        # the stages partition the end-to-end time but for a little bookkeeping
        assert sum(m["median_stage_s"].values()) <= m["median_e2e_s"] + 1e-6
        assert m["peak_rss_bytes"] >= m["rss_after_load_bytes"] > 0
        assert m["label_map_shape"] == source_shape
        assert 0.0 <= m["spleen_fraction"] <= 1.0
    by = {r["system"]: r["metrics"] for r in doc["runs"]}
    assert 0.0 <= by["statlane-onnxruntime"]["dice_spleen_vs_monai"] <= 1.0
    assert 0.0 <= by["statlane-torchscript"]["dice_spleen_vs_statlane_onnxruntime"] <= 1.0
    assert set(doc["targets"]) == set(TARGETS)
    assert set(TARGETS) <= set(doc["ratios"])
    assert {E2E_KEY, TS_KEY} <= set(doc["ratios"])
    assert all(math.isfinite(v) for v in doc["ratios"].values())
    md = (tmp_path / "bundles.smoke.md").read_text()
    assert "smoke" in md
    assert "| statlane-onnxruntime |" in md
    assert "| monai |" in md
