"""Tiny valid model packages for tests: a 3D conv classifier exported to ONNX and TorchScript.

``build_package(root, "tiny-ct", 1)`` writes ``root/tiny-ct/1/{manifest.yaml, model.onnx,
model.ts}`` in well under a second (the export runs once per process and is cached).
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.manifest import (
    BackendKind,
    CodedConcept,
    FindingSpec,
    Manifest,
    ModelCard,
    OutputSpec,
    Postprocessing,
    RuntimeHints,
    Task,
    TensorSpec,
    Weights,
    WeightsFile,
    dump_manifest,
    sha256_of,
)

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
SPATIAL = (16, 16, 8)
CLASSES = 2
_EXPORTS: dict[tuple[int, ...], tuple[bytes, bytes]] = {}


class TinyClassifier(nn.Module):
    """Conv3d -> global average pool -> linear: (B, 1, *spatial) -> (B, classes) logits."""

    def __init__(self, classes: int = CLASSES) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 4, kernel_size=3, padding=1)
        self.head = nn.Linear(4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.conv(x)).mean(dim=(2, 3, 4))
        return self.head(features)


def tiny_model(seed: int = 0) -> TinyClassifier:
    """A deterministic untrained tiny classifier."""
    torch.manual_seed(seed)
    return TinyClassifier().eval()


def write_onnx(path: Path) -> Path:
    """Write the tiny model as ONNX (batch axis dynamic) to ``path``."""
    path.write_bytes(_exports(SPATIAL)[0])
    return path


def write_torchscript(path: Path) -> Path:
    """Write the tiny model as traced TorchScript to ``path``."""
    path.write_bytes(_exports(SPATIAL)[1])
    return path


def _exports(spatial: tuple[int, ...]) -> tuple[bytes, bytes]:
    """ONNX and TorchScript bytes; the exporter (dynamo=False: dynamo fails here) runs once."""
    if spatial not in _EXPORTS:
        model = tiny_model()
        example = torch.zeros(1, 1, *spatial)
        with (
            tempfile.TemporaryDirectory() as scratch,
            torch.no_grad(),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated in 2.13
            onnx_path, ts_path = Path(scratch) / "model.onnx", Path(scratch) / "model.ts"
            torch.onnx.export(
                model,
                (example,),
                str(onnx_path),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
            torch.jit.save(torch.jit.trace(model, example), str(ts_path))
            _EXPORTS[spatial] = (onnx_path.read_bytes(), ts_path.read_bytes())
    return _EXPORTS[spatial]


def tiny_manifest(name: str, version: int, folder: Path, **overrides: Any) -> Manifest:
    """A valid manifest for the weight files already in ``folder``."""
    onnx_file, ts_file = folder / "model.onnx", folder / "model.ts"
    weights = Weights(
        onnx=WeightsFile(path=onnx_file.name, sha256=sha256_of(onnx_file))
        if onnx_file.exists()
        else None,
        torchscript=WeightsFile(path=ts_file.name, sha256=sha256_of(ts_file))
        if ts_file.exists()
        else None,
    )
    backends = [BackendKind.ONNXRUNTIME] if weights.onnx else []
    backends += [BackendKind.TORCHSCRIPT] if weights.torchscript else []
    fields: dict[str, Any] = {
        "name": name,
        "version": version,
        "task": Task.CLASSIFICATION,
        "description": "tiny test classifier",
        "modality": ["CT"],
        "body_part": ["HEAD"],
        "input": TensorSpec(name=INPUT_NAME, shape=[-1, 1, *SPATIAL]),
        "outputs": [OutputSpec(name=OUTPUT_NAME, shape=[-1, CLASSES], meaning="class logits")],
        "preprocessing": [
            {"transform": "Window", "center": 40, "width": 80},
            {"transform": "Resize", "spatial_size": list(SPATIAL)},
        ],
        "postprocessing": Postprocessing(activation="softmax"),
        "findings": [
            FindingSpec(
                name="finding",
                concept=CodedConcept(value="T-1", scheme="99STATLANE", meaning="test finding"),
                output=OUTPUT_NAME,
                channel=1,
                derive=["presence", "probability"],
            )
        ],
        "weights": weights,
        "runtime": RuntimeHints(max_batch=4, backends=backends),
        "card": ModelCard(intended_use="tests only", training_data="none"),
    }
    fields.update(overrides)
    return Manifest(**fields)


def build_package(
    root: Path,
    name: str = "tiny-ct",
    version: int = 1,
    *,
    onnx: bool = True,
    torchscript: bool = True,
    **overrides: Any,
) -> Path:
    """Write a valid package version folder ``root/name/version``; returns the folder."""
    folder = root / name / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    if onnx:
        write_onnx(folder / "model.onnx")
    if torchscript:
        write_torchscript(folder / "model.ts")
    dump_manifest(tiny_manifest(name, version, folder, **overrides), folder / "manifest.yaml")
    return folder
