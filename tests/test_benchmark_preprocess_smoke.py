"""The preprocessing benchmark's --smoke mode runs end to end and writes its three files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.preprocess import SYSTEMS, TARGETS
from benchmarks.report import REQUIRED_KEYS

ROOT = Path(__file__).resolve().parents[1]


def test_smoke_writes_json_markdown_and_png(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "benchmarks.preprocess", "--smoke", "--out", str(tmp_path)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[bench]" in done.stderr  # progress is shown
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["preprocess.smoke.json", "preprocess.smoke.md", "preprocess.smoke.png"]
    assert (tmp_path / "preprocess.smoke.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    doc = json.loads((tmp_path / "preprocess.smoke.json").read_text())
    assert list(doc) == list(REQUIRED_KEYS)
    assert doc["benchmark"] == "preprocess"
    assert doc["smoke"] is True
    assert doc["when"].endswith("Z")
    assert "--smoke" in doc["command"]
    assert {"cpu", "cores", "gpu", "python", "packages"} <= set(doc["machine"])
    assert doc["workload"]["slices"] > 0
    assert doc["workload"]["pipeline"]
    assert [r["system"] for r in doc["runs"]] == list(SYSTEMS)
    for run in doc["runs"]:
        m = run["metrics"]
        assert m["median_s"] > 0
        assert m["volumes_per_s"] > 0
        assert m["slices_per_s"] > 0
        assert m["peak_rss_bytes"] > 0
        assert m["output_shape"] == [1, *doc["workload"]["pipeline"][-1]["spatial_size"]]
        assert m["max_abs_diff_vs_statlane"] < 1e-3  # every system computed the same tensor
    assert set(doc["targets"]) == set(TARGETS)
    assert set(TARGETS) <= set(doc["ratios"])
    md = (tmp_path / "preprocess.smoke.md").read_text()
    assert "| statlane |" in md
    assert "smoke" in md
