"""The end-to-end benchmark's --smoke mode: stat CT heads under routine load, SRs in a real Orthanc.

Runs ``python -m benchmarks.e2e --smoke`` against a real Orthanc and dcmtk's storescu (missing
peers skip on a laptop and fail in CI), then checks the three result files and that every SR
the service delivered is really stored in Orthanc.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.e2e import CLASSES, STAGES, SYSTEMS, TARGETS
from benchmarks.report import REQUIRED_KEYS
from tests.peers import require_dcmtk, require_executable

pytestmark = pytest.mark.peers

ROOT = Path(__file__).resolve().parents[1]


def test_smoke_stores_every_sr_in_orthanc_and_writes_three_files(tmp_path: Path) -> None:
    require_executable("Orthanc", "apt-get install orthanc")
    require_dcmtk("storescu")
    out = tmp_path / "out"
    # A given capacity skips the calibration backlog, keeping the test near a minute.
    cmd = [sys.executable, "-m", "benchmarks.e2e", "--smoke", "--capacity", "0.3"]
    cmd += ["--drain-timeout", "240", "--workdir", str(tmp_path / "work"), "--out", str(out)]
    # Outlives both systems' drains, so a slow run fails with the benchmark's own message.
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[bench]" in done.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "e2e.smoke.json",
        "e2e.smoke.md",
        "e2e.smoke.png",
    ]
    assert (out / "e2e.smoke.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    doc = json.loads((out / "e2e.smoke.json").read_text())
    assert list(doc) == list(REQUIRED_KEYS)
    assert doc["benchmark"] == "e2e"
    assert doc["smoke"] is True
    assert "--smoke" in doc["command"]
    assert doc["workload"]["quiet_period_s"] == {"stat": 1.0, "urgent": 2.0, "routine": 3.0}
    assert [r["system"] for r in doc["runs"]] == [system for system, _ in SYSTEMS]
    for run in doc["runs"]:
        metrics = run["metrics"]
        assert metrics["stat"]["sent"] >= 2
        for cls in CLASSES:
            m = metrics[cls]
            assert m["undelivered"] == 0, (run["system"], cls, m)
            if m["count"]:
                assert 0 < m["p50_s"] <= m["p95_s"] <= m["p99_s"] <= m["max_s"]
        assert metrics["throughput_per_s"] > 0
        assert set(run["stat_stages_s"]) == set(STAGES)
        assert run["stat_overhead_s"]["count"] == metrics["stat"]["count"]
        orthanc = run["orthanc"]
        assert orthanc["srs_delivered"] == len(run["studies"])
        assert orthanc["srs_found_in_orthanc"] == orthanc["srs_delivered"]
        for study in run["studies"]:
            assert study["in_orthanc"] is True
            assert study["error"] is None
            # The stages partition the latency: last instance acknowledged → SR stored.
            assert math.isclose(sum(study["stages_s"].values()), study["total_s"], abs_tol=2e-3)
    assert set(doc["targets"]) == set(TARGETS)
    assert set(TARGETS) <= set(doc["ratios"])
    assert all(math.isfinite(v) for v in doc["ratios"].values())
    md = (out / "e2e.smoke.md").read_text()
    assert "smoke" in md
    assert "| statlane-edf | stat |" in md
    assert "| baseline-fifo | stat |" in md
