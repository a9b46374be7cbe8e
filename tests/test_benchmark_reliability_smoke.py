"""The reliability benchmark's --smoke mode: SIGKILL trials, a PACS outage, a burst and hostile
connections against a real Orthanc and dcmtk (missing peers skip on a laptop, fail in CI).

Checks the three result files, the JSON shape and that the smoke run met its zero targets.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.reliability.cli import TARGETS
from benchmarks.reliability.scenarios import PHASES
from benchmarks.report import REQUIRED_KEYS
from tests.peers import require_dcmtk, require_executable

pytestmark = pytest.mark.peers

ROOT = Path(__file__).resolve().parents[1]


def test_smoke_kills_restarts_and_writes_three_files(tmp_path: Path) -> None:
    require_executable("Orthanc", "apt-get install orthanc")
    require_dcmtk("storescu")
    require_dcmtk("echoscu")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "benchmarks.reliability", "--smoke"]
    cmd += ["--workdir", str(tmp_path / "work"), "--out", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[bench]" in done.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "reliability.smoke.json",
        "reliability.smoke.md",
        "reliability.smoke.png",
    ]
    assert (out / "reliability.smoke.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads((out / "reliability.smoke.json").read_text())
    assert list(doc) == list(REQUIRED_KEYS)
    assert doc["benchmark"] == "reliability"
    assert doc["smoke"] is True
    assert "--smoke" in doc["command"]
    kills = [r for r in doc["runs"] if r["scenario"] == "kill"]
    assert {r["phase"] for r in kills} == set(PHASES)
    assert len([r for r in doc["runs"] if r["scenario"] == "outage"]) == 1
    assert len([r for r in doc["runs"] if r["scenario"] == "burst"]) == 1
    assert len([r for r in doc["runs"] if r["scenario"] == "hostile"]) == 5
    assert set(doc["targets"]) == set(TARGETS)
    assert set(TARGETS) <= set(doc["ratios"])
    for key in ("lost_total", "duplicated_total", "stale_total", "stuck_total"):
        assert doc["ratios"][key] == 0, (key, doc["runs"])
    assert doc["ratios"]["modality_pass_fraction"] == 1.0
    assert "smoke" in (out / "reliability.smoke.md").read_text()
