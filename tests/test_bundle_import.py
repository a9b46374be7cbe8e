"""MONAI bundle import: configs read as plain data, expressions reported and never run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from models.bundle import BundleImportError, import_bundle
from models.bundle_config import chunking_from
from models.manifest import BackendKind, Task, load_manifest
from models.registry import Registry
from serving.cli import main
from tests.model_factory import SPATIAL, write_onnx, write_torchscript


def _metadata(spatial: list[Any]) -> dict[str, Any]:
    return {
        "name": "Tiny Head CT",
        "version": "0.1.0",
        "description": "tiny bundle for tests",
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "hounsfield",
                    "modality": "CT",
                    "num_channels": 1,
                    "spatial_shape": spatial,
                    "dtype": "float32",
                }
            },
            "outputs": {
                "pred": {
                    "type": "probabilities",
                    "format": "classification",
                    "num_channels": 2,
                    "spatial_shape": [],
                    "dtype": "float32",
                    "channel_def": {"0": "background", "1": "hemorrhage"},
                }
            },
        },
    }


def _inference(sentinel: Path) -> dict[str, Any]:
    return {
        "imports": ["$import glob"],
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "image_size": list(SPATIAL),
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "image"},
                {"_target_": "EnsureChannelFirstd", "keys": "image"},
                {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
                {
                    "_target_": "Spacingd",
                    "keys": ["image", "label"],
                    "pixdim": [1.0, 1.0, 2.0],
                    "mode": ["bilinear", "nearest"],
                },
                {
                    "_target_": "monai.transforms.ScaleIntensityRanged",
                    "keys": "image",
                    "a_min": -20,
                    "a_max": 100,
                    "b_min": 0.0,
                    "b_max": 1.0,
                    "clip": True,
                },
                {"_target_": "CropForegroundd", "keys": "image", "source_key": "image"},
                {"_target_": "Resized", "keys": "image", "spatial_size": "@image_size"},
                {"_target_": "Lambdad", "keys": "image", "func": f"$open('{sentinel}', 'w')"},
                {"_target_": "EnsureTyped", "keys": "image"},
            ],
        },
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [{"_target_": "Activationsd", "keys": "pred", "softmax": True}],
        },
        "run": f"$open('{sentinel}', 'w').write('ran')",
    }


def make_bundle(
    root: Path,
    *,
    onnx: bool = False,
    spatial: list[Any] | None = None,
    inference: dict[str, Any] | None = None,
    yaml_config: bool = False,
) -> Path:
    """A tiny bundle: metadata.json, inference.json (or .yaml), models/model.ts (or .onnx)."""
    bundle = root / "bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    if onnx:
        write_onnx(bundle / "models" / "model.onnx")
    else:
        write_torchscript(bundle / "models" / "model.ts")
    meta = _metadata(spatial if spatial is not None else list(SPATIAL))
    (bundle / "configs" / "metadata.json").write_text(json.dumps(meta))
    config = inference if inference is not None else _inference(root / "sentinel")
    if yaml_config:
        (bundle / "configs" / "inference.yaml").write_text(yaml.safe_dump(config))
    else:
        (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    return bundle


def test_torchscript_bundle_becomes_a_valid_package(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path)
    report = import_bundle(bundle, tmp_path / "repo", allow_unmapped=True)
    assert report.ident == "tiny-head-ct@1"
    assert report.folder == tmp_path / "repo" / "tiny-head-ct" / "1"
    results = Registry(tmp_path / "repo").validate()
    assert all(r.ok for r in results), [r.problem for r in results]

    manifest = load_manifest(report.folder)
    assert manifest.preprocessing == [
        {"transform": "Orientation", "axcodes": "RAS"},
        {"transform": "Spacing", "pixdim": [1.0, 1.0, 2.0], "mode": "bilinear"},
        {
            "transform": "ScaleIntensityRange",
            "a_min": -20,
            "a_max": 100,
            "b_min": 0.0,
            "b_max": 1.0,
            "clip": True,
        },
        {"transform": "CropForeground"},
        {"transform": "Resize", "spatial_size": list(SPATIAL)},
    ]
    assert manifest.task is Task.CLASSIFICATION
    assert manifest.input.shape == [-1, 1, *SPATIAL]
    assert manifest.input.spacing_mm == [1.0, 1.0, 2.0]
    assert manifest.input.orientation == "RAS"
    assert [(o.name, o.shape) for o in manifest.outputs] == [("pred", [-1, 2])]
    assert manifest.postprocessing.activation == "softmax"
    assert [(f.name, f.channel) for f in manifest.findings] == [("hemorrhage", 1)]
    # The shipped TorchScript is kept; ONNX is exported from it and checked against it.
    assert manifest.weights.onnx is not None
    assert manifest.weights.torchscript is not None
    assert manifest.runtime.backends == [BackendKind.ONNXRUNTIME, BackendKind.TORCHSCRIPT]
    assert manifest.imported is not None
    assert manifest.imported.weights_from == "models/model.ts"
    assert manifest.modality == ["CT"]
    assert manifest.card.not_for_clinical_use


def test_unmapped_steps_and_expressions_are_reported_never_run(tmp_path: Path) -> None:
    sentinel = tmp_path / "sentinel"
    with pytest.raises(BundleImportError, match=r"unsupported transform.*\[7\] Lambdad"):
        import_bundle(make_bundle(tmp_path), tmp_path / "repo")
    report = import_bundle(tmp_path / "bundle", tmp_path / "repo", allow_unmapped=True)
    assert not sentinel.exists(), "a bundle expression was evaluated"
    assert [m.target for m in report.mapped] == [
        "Orientationd",
        "Spacingd",
        "monai.transforms.ScaleIntensityRanged",
        "CropForegroundd",
        "Resized",
        "postprocessing Activationsd",
    ]
    assert report.skipped == ["LoadImaged", "EnsureChannelFirstd", "EnsureTyped"]
    unmapped = {u.target: u.reason for u in report.unmapped}
    assert set(unmapped) == {"Lambdad"}
    assert "not in the allow-list" in unmapped["Lambdad"]
    found = dict(report.expressions)
    assert found["preprocessing#transforms#7#func"] == f"$open('{sentinel}', 'w')"
    assert found["run"].startswith("$open(")
    assert found["imports#0"] == "$import glob"
    assert found["preprocessing#transforms#6#spatial_size"] == "@image_size"
    text = "\n".join(report.lines())
    assert f"expression at run NOT evaluated: $open('{sentinel}', 'w').write('ran')" in text
    assert "UNMAPPED [7] Lambdad" in text


def test_onnx_bundle_takes_names_and_dims_from_the_graph(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path, onnx=True, spatial=["8*n", "8*n", "8*n"], yaml_config=True)
    report = import_bundle(
        bundle, tmp_path / "repo", name="head-onnx", version=3, max_batch=2, allow_unmapped=True
    )
    manifest = load_manifest(report.folder)
    assert manifest.ident == "head-onnx@3"
    assert manifest.input.name == "image"
    assert manifest.input.shape == [-1, 1, *SPATIAL]
    assert [o.name for o in manifest.outputs] == ["logits"]  # graph name, not the metadata key
    assert manifest.runtime.backends == [BackendKind.ONNXRUNTIME]
    assert manifest.runtime.max_batch == 2
    assert any("used the ONNX graph's" in note for note in report.notes)
    assert all(r.ok for r in Registry(tmp_path / "repo").validate())


def test_symbolic_shape_needs_a_concrete_size(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path, spatial=["16*n", "16*n", "8*n"])
    with pytest.raises(BundleImportError, match=r"symbolic .* pass --input-shape"):
        import_bundle(bundle, tmp_path / "repo")
    assert not (tmp_path / "repo" / "tiny-head-ct" / "1").exists()
    report = import_bundle(
        bundle, tmp_path / "repo", input_shape=list(SPATIAL), allow_unmapped=True
    )
    assert load_manifest(report.folder).input.shape == [-1, 1, *SPATIAL]


def test_sliding_window_inferer_settings_are_read() -> None:
    config = {
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [16, 16, 8], "overlap": 0.5}
    }
    assert chunking_from(config, [32, 32, 16]) == {
        "roi_size": [16, 16, 8],
        "overlap": 0.5,
        "mode": "constant",
        "sigma_scale": 0.125,
        "sw_batch_size": 1,
    }


def test_sliding_window_inferer_on_a_classifier_is_reported_not_chunked(tmp_path: Path) -> None:
    config = _inference(tmp_path / "sentinel")
    config["inferer"] = {
        "_target_": "SlidingWindowInferer",
        "roi_size": list(SPATIAL),
        "overlap": 0.5,
    }
    bundle = make_bundle(tmp_path, spatial=["8*n", "8*n", "8*n"], inference=config)
    report = import_bundle(bundle, tmp_path / "repo", allow_unmapped=True)
    manifest = load_manifest(report.folder)
    assert manifest.input.shape == [-1, 1, *SPATIAL]
    assert manifest.runtime.chunking is None  # windows of class scores cannot be merged
    assert any("SlidingWindowInferer not used" in note for note in report.notes)


def test_nothing_mappable_is_refused(tmp_path: Path) -> None:
    config = {"preprocessing": "$Compose(transforms)"}
    bundle = make_bundle(tmp_path, inference=config)
    with pytest.raises(BundleImportError, match="no preprocessing step maps to the allow-list"):
        import_bundle(bundle, tmp_path / "repo")


def test_second_import_gets_the_next_version(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path)
    import_bundle(bundle, tmp_path / "repo", allow_unmapped=True)
    assert import_bundle(bundle, tmp_path / "repo", allow_unmapped=True).ident == "tiny-head-ct@2"
    with pytest.raises(BundleImportError, match="already exists"):
        import_bundle(bundle, tmp_path / "repo", version=1)


def test_cli_prints_the_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = make_bundle(tmp_path)
    repo = tmp_path / "repo"
    args = ["models", "import-bundle", str(bundle), "--out", str(repo), "--allow-unmapped"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"imported tiny-head-ct@1 -> {repo / 'tiny-head-ct' / '1'}" in out
    assert "UNMAPPED [7] Lambdad" in out
    assert "NOT evaluated" in out
    assert not (tmp_path / "sentinel").exists()
    assert main(["models", "--root", str(repo), "validate", "tiny-head-ct"]) == 0
    assert main(["models", "import-bundle", str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"statlane models import-bundle: not a folder: {tmp_path / 'absent'}"]
