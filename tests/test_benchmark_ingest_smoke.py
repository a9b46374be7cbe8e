"""The ingest benchmark's --smoke mode runs end to end against real dcmtk and writes its files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.ingest import LATENCY_KEYS, SYSTEMS, TARGETS
from benchmarks.report import REQUIRED_KEYS
from tests.peers import require_dcmtk

pytestmark = [pytest.mark.peers, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]


def test_smoke_writes_json_markdown_and_png(tmp_path: Path) -> None:
    for tool in ("storescp", "storescu", "echoscu"):
        require_dcmtk(tool)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "benchmarks.ingest", "--smoke", "--out", str(out)]
    cmd += ["--tmp", str(tmp_path)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[bench]" in done.stderr  # progress is shown
    names = sorted(p.name for p in out.iterdir())
    assert names == ["ingest.smoke.json", "ingest.smoke.md", "ingest.smoke.png"]
    assert (out / "ingest.smoke.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    doc = json.loads((out / "ingest.smoke.json").read_text())
    assert list(doc) == list(REQUIRED_KEYS)
    assert doc["benchmark"] == "ingest"
    assert doc["smoke"] is True
    assert "--smoke" in doc["command"]
    n = doc["workload"]["instances"]
    assert n == sum(doc["workload"]["study_sizes"]) > 0
    assert [r["system"] for r in doc["runs"]] == list(SYSTEMS)
    for run in doc["runs"]:
        m = run["metrics"]
        assert m["instances"] == n
        assert m["instances_per_s"] > 0
        assert m["median_s"] > 0
        assert len(m["seconds"]) == doc["workload"]["repeats"] == 1
    statlane = doc["runs"][-1]["metrics"]
    assert statlane["durable_before_ack"] is True
    quiet = statlane["quiet_period_s"]
    for key in LATENCY_KEYS:
        assert isinstance(statlane[key], float)
    # the task cannot be queued before the quiet period has passed since the last instance
    assert statlane["last_instance_to_task_queued_s"] >= quiet
    assert statlane["last_instance_to_task_started_s"] >= statlane["last_instance_to_task_queued_s"]
    assert set(doc["targets"]) == set(TARGETS)
    assert set(TARGETS) <= set(doc["ratios"])
    md = (out / "ingest.smoke.md").read_text()
    assert "| statlane-durable |" in md
    assert "| dcmtk-storescp |" in md
    assert "smoke" in md
    assert "| gateway-spool |" in md
    assert "| gateway-ack-only |" in md
