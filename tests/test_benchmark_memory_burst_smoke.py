"""``python -m benchmarks.memory_burst --smoke`` still runs and writes its three files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.memory_burst import TARGETS
from benchmarks.report import REQUIRED_KEYS
from tests.peers import require_dcmtk

pytestmark = pytest.mark.peers


def test_memory_burst_smoke_writes_its_report(tmp_path: Path) -> None:
    require_dcmtk("storescu")
    cmd = [sys.executable, "-m", "benchmarks.memory_burst", "--smoke", "--out", str(tmp_path)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    document = json.loads((tmp_path / "memory_burst.smoke.json").read_text(encoding="utf-8"))
    assert set(REQUIRED_KEYS) <= set(document)
    assert set(TARGETS) <= set(document["ratios"])
    assert {run["variant"] for run in document["runs"]} == {"no-trim (baseline)", "trim"}
    for ext in ("md", "png"):
        assert (tmp_path / f"memory_burst.smoke.{ext}").stat().st_size > 0
