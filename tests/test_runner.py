"""The in-process runner: backends agree, altered weights are refused, shapes are checked."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from models.evaluate import shipped_packages
from models.manifest import WeightsMismatchError, load_manifest
from models.runner import BackendUnavailableError, InputShapeError, ModelRunner, to_model_layout

PACKAGES = shipped_packages()
IDS = [f"{p.parent.name}@{p.name}" for p in PACKAGES]


def test_every_reference_model_is_shipped() -> None:
    names = {p.parent.name for p in PACKAGES}
    assert names == {"ich-ct-head", "cxr-pneumothorax", "ct-chest-nodule"}
    assert {p.name for p in PACKAGES if p.parent.name == "ich-ct-head"} == {"1", "2"}


@pytest.mark.parametrize("folder", PACKAGES, ids=IDS)
def test_onnxruntime_and_torchscript_agree(folder: Path) -> None:
    manifest = load_manifest(folder)
    shape = (2, *manifest.input.shape[1:])
    batch = np.random.default_rng(7).random(shape, dtype=np.float32)
    onnx_out = ModelRunner(manifest, folder, "onnxruntime").run(batch)
    ts_out = ModelRunner(manifest, folder, "torchscript").run(batch)
    for output in manifest.outputs:
        a, b = onnx_out[output.name], ts_out[output.name]
        assert a.shape == b.shape == (2, *output.shape[1:])
        np.testing.assert_allclose(a, b, atol=1e-3, rtol=1e-3)


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    source = next(p for p in PACKAGES if p.parent.name == "cxr-pneumothorax")
    copy = tmp_path / "cxr-pneumothorax" / source.name
    shutil.copytree(source, copy)
    manifest = load_manifest(copy)
    ModelRunner(manifest, copy)  # intact: loads
    onnx_file = copy / "model.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx_file.write_bytes(bytes(data))
    with pytest.raises(WeightsMismatchError, match="altered"):
        ModelRunner(manifest, copy, "onnxruntime")
    with pytest.raises(WeightsMismatchError):  # every file is checked, whichever backend
        ModelRunner(manifest, copy, "torchscript")


def test_wrong_input_shape_and_backend() -> None:
    folder = next(p for p in PACKAGES if p.parent.name == "cxr-pneumothorax")
    manifest = load_manifest(folder)
    runner = ModelRunner(manifest, folder)
    with pytest.raises(InputShapeError, match="does not match"):
        runner.run(np.zeros((1, 1, 64, 64), dtype=np.float32))
    with pytest.raises(InputShapeError):
        runner.run(np.zeros((1, 128, 128), dtype=np.float32))
    with pytest.raises(BackendUnavailableError):
        ModelRunner(manifest, folder, "tensorflow")


def test_model_layout() -> None:
    assert to_model_layout(np.zeros((1, 8, 8, 1)), [-1, 1, 8, 8]).shape == (1, 1, 8, 8)
    assert to_model_layout(np.zeros((1, 8, 8, 4)), [-1, 1, 8, 8, 4]).shape == (1, 1, 8, 8, 4)
