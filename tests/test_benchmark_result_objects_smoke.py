"""The result-objects benchmark's --smoke mode runs end to end and writes its three files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.report import REQUIRED_KEYS
from benchmarks.result_objects import CPU_KEY, SYSTEMS, TARGETS

ROOT = Path(__file__).resolve().parents[1]


def test_smoke_writes_json_markdown_and_png(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "benchmarks.result_objects", "--smoke", "--out", str(tmp_path)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[bench]" in done.stderr  # progress is shown
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "result_objects.smoke.json",
        "result_objects.smoke.md",
        "result_objects.smoke.png",
    ]
    assert (tmp_path / "result_objects.smoke.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    doc = json.loads((tmp_path / "result_objects.smoke.json").read_text())
    assert list(doc) == list(REQUIRED_KEYS)
    assert doc["benchmark"] == "result_objects"
    assert doc["smoke"] is True
    assert doc["when"].endswith("Z")
    assert "--smoke" in doc["command"]
    assert {"cpu", "cores", "gpu", "python", "packages"} <= set(doc["machine"])
    workload = doc["workload"]
    assert workload["labels"] > 1
    assert workload["labels_present"] == workload["labels"]
    assert [r["system"] for r in doc["runs"]] == list(SYSTEMS)
    for run in doc["runs"]:
        m = run["metrics"]
        assert m["segments"] == workload["labels"]
        assert m["frames"] >= m["segments"]
        assert m["median_seg_cpu_s"] > 0
        assert m["median_sr_cpu_s"] > 0
        assert m["median_cpu_s"] == max(m["median_cpu_s"], m["median_seg_cpu_s"])
        assert m["median_wall_s"] > 0
        assert m["seg_identical_to_statlane"] is True  # both systems built the same SEG
    assert set(doc["targets"]) == set(TARGETS)
    assert set(TARGETS) <= set(doc["ratios"])
    assert doc["ratios"][CPU_KEY] == doc["runs"][0]["metrics"]["median_cpu_s"]
    md = (tmp_path / "result_objects.smoke.md").read_text()
    assert "| statlane |" in md
    assert "| highdicom-label-array |" in md
    assert "smoke" in md
