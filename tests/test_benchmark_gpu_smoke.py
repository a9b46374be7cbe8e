"""The GPU script's code path runs on the CPU (``--allow-cpu --smoke``), so it never rots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.gpu import run

pytestmark = pytest.mark.slow


def test_gpu_script_runs_on_cpu_and_labels_itself_not_a_result(tmp_path: Path) -> None:
    assert run.main(["--smoke", "--allow-cpu", "--out", str(tmp_path)]) == 0
    document = json.loads((tmp_path / "gpu.smoke.json").read_text())
    assert document["smoke"] is True  # a CPU run of the GPU script is never a result
    systems = {r["system"] for r in document["runs"]}
    assert {"preprocess-cpu", "torchscript-cpu"} <= systems
    for r in document["runs"]:
        diff = r["metrics"].get(
            "max_abs_diff_vs_cpu", r["metrics"].get("max_abs_diff_vs_onnxruntime")
        )
        assert diff is not None
        assert diff < 1e-3


def test_gpu_script_refuses_to_pretend_without_a_gpu(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert run.main(["--out", str(tmp_path)]) == 2
