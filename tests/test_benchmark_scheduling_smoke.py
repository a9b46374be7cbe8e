"""The scheduling benchmark's smoke mode runs end to end (so the benchmark never rots)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import scheduling
from benchmarks.report import REQUIRED_KEYS
from tests.triton_peer import require_triton

pytestmark = [pytest.mark.slow, pytest.mark.peers]


def test_smoke_writes_json_markdown_and_png(tmp_path: Path) -> None:
    require_triton()
    assert scheduling.main(["--smoke", "--out", str(tmp_path)]) == 0
    paths = [tmp_path / f"scheduling.smoke.{ext}" for ext in ("json", "md", "png")]
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths)
    document = json.loads(paths[0].read_text())
    assert list(document) == list(REQUIRED_KEYS)
    assert document["smoke"] is True
    systems = {run["system"] for run in document["runs"]}
    assert systems == {"fifo", "strict-priority", "statlane-edf", "triton"}
    for run in document["runs"]:
        assert run["metrics"]["throughput_per_s"] > 0
        assert "stat" in run["metrics"]
    assert document["targets"]
    assert set(document["targets"]) <= set(document["ratios"])
