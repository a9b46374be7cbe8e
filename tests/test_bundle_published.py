"""Published MONAI model-zoo bundles, imported as published (random weights of their networks).

The bundles' configs and metadata are the fixtures in ``tests/fixtures/monai-bundles``; their
weights are random, from ``network_def``, saved as the bundles save theirs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import models.bundle_network as bundle_network
from models.bundle import BundleImportError, import_bundle
from models.manifest import BackendKind, Task, load_manifest
from models.registry import Registry
from models.runner import ModelRunner
from serving.cli import main
from tests.bundle_factory import FIXTURES, SPLEEN, network_of, published_bundle

SPLEEN_STEPS = [
    {"transform": "Orientation", "axcodes": "RAS"},
    {"transform": "Spacing", "pixdim": [1.5, 1.5, 2.0], "mode": "bilinear"},
    {
        "transform": "ScaleIntensityRange",
        "a_min": -57,
        "a_max": 164,
        "b_min": 0,
        "b_max": 1,
        "clip": True,
    },
]


def _nothing_written(repo: Path) -> bool:
    return not repo.exists() or not any(repo.iterdir())


def test_the_spleen_bundle_imports_as_published_from_its_state_dict(tmp_path: Path) -> None:
    bundle = published_bundle(tmp_path, pt=True)
    lines: list[str] = []
    report = import_bundle(bundle, tmp_path / "repo", say=lines.append)
    assert report.ident == "spleen-ct-segmentation@1"
    manifest = load_manifest(report.folder)
    assert manifest.preprocessing == SPLEEN_STEPS  # "keys": "@image_key" followed as data
    assert manifest.task is Task.SEGMENTATION
    assert manifest.input.shape == [-1, 1, 96, 96, 96]
    assert [o.shape for o in manifest.outputs] == [[-1, 2, 96, 96, 96]]
    chunking = manifest.runtime.chunking
    assert chunking is not None
    assert (chunking.roi_size, chunking.overlap, chunking.mode, chunking.sw_batch_size) == (
        [96, 96, 96],
        0.5,
        "constant",  # SlidingWindowInferer's default blend mode
        4,
    )
    assert manifest.runtime.max_batch == 4
    post = manifest.postprocessing
    assert (post.activation, post.discrete, post.largest_component) == ("softmax", "argmax", False)
    [spleen] = manifest.findings
    assert (spleen.concept.value, spleen.concept.scheme, spleen.channel) == ("78961009", "SCT", 1)
    assert spleen.category is not None
    assert spleen.category.value == "91723000"
    assert manifest.manufacturer == "MONAI team"
    assert (manifest.card.authors, manifest.card.source_version) == ("MONAI team", "0.5.9")
    assert manifest.card.metrics == {"mean_dice": 0.961}
    record = manifest.imported
    assert record is not None
    assert record.weights_from == "models/model.pt"
    assert record.network_evaluated
    assert {c.format for c in record.exports} == {"onnx", "torchscript"}
    assert all(c.max_abs_diff <= c.tolerance for c in record.exports)
    assert manifest.runtime.backends == [BackendKind.ONNXRUNTIME, BackendKind.TORCHSCRIPT]
    assert all(r.ok for r in Registry(tmp_path / "repo").validate())
    text = "\n".join([*lines, *report.lines()])
    assert "EVALUATED at network_def#_target_: instantiate UNet" in text
    assert "models/model.pt: md5 verified against large_files.yml" in text
    assert "mapped   [1] postprocessing Invertd" in text
    assert "skipped  postprocessing SaveImaged" in text


def test_exports_run_the_same_network_on_both_backends(tmp_path: Path) -> None:
    report = import_bundle(published_bundle(tmp_path), tmp_path / "repo")
    manifest = load_manifest(report.folder)
    patch = np.random.default_rng(3).random((2, 1, 96, 96, 96), dtype=np.float32)
    with torch.inference_mode():
        expected = network_of(SPLEEN)(torch.from_numpy(patch)).numpy()
    for backend in ("onnxruntime", "torchscript"):
        got = ModelRunner(manifest, report.folder, backend).run(patch)["pred"]
        assert np.abs(got - expected).max() < 1e-3, backend


def test_no_eval_imports_the_shipped_torchscript_and_evaluates_nothing(tmp_path: Path) -> None:
    bundle = published_bundle(tmp_path, pt=False, ts=True)
    lines: list[str] = []
    report = import_bundle(bundle, tmp_path / "repo", evaluate=False, say=lines.append)
    manifest = load_manifest(report.folder)
    assert report.evaluated == []
    assert not any("evaluating" in line for line in lines)
    record = manifest.imported
    assert record is not None
    assert record.weights_from == "models/model.ts"
    assert not record.network_evaluated
    assert (report.folder / "model.ts").read_bytes() == (bundle / "models/model.ts").read_bytes()
    assert {c.format for c in record.exports} == {"onnx", "torchscript"}
    assert manifest.preprocessing == SPLEEN_STEPS


def test_no_eval_without_torchscript_is_refused(tmp_path: Path) -> None:
    bundle = published_bundle(tmp_path, pt=True)
    with pytest.raises(BundleImportError, match=r"--no-eval needs model\.ts"):
        import_bundle(bundle, tmp_path / "repo", evaluate=False)
    assert _nothing_written(tmp_path / "repo")


# ---- bad bundles: one clear error each, nothing half-written ------------------------------------


def test_weights_that_are_not_the_published_ones_fail_the_checksum(tmp_path: Path) -> None:
    bundle = published_bundle(tmp_path, checksums=False)  # large_files.yml as published
    with pytest.raises(BundleImportError, match=r"model.pt: md5 .* does not match large_files"):
        import_bundle(bundle, tmp_path / "repo")
    assert _nothing_written(tmp_path / "repo")


def test_missing_weights_and_configs_are_named(tmp_path: Path) -> None:
    bundle = shutil.copytree(FIXTURES / SPLEEN, tmp_path / "no-weights")
    with pytest.raises(BundleImportError, match=r"large_files\.yml lists where to download"):
        import_bundle(bundle, tmp_path / "repo")
    (bundle / "configs" / "metadata.json").unlink()
    with pytest.raises(BundleImportError, match=r"metadata.json: missing"):
        import_bundle(bundle, tmp_path / "repo")
    assert _nothing_written(tmp_path / "repo")


def _edit_config(bundle: Path, edit: dict[str, object]) -> None:
    path = bundle / "configs" / "inference.json"
    config = json.loads(path.read_text())
    for where, value in edit.items():
        node = config
        *parents, last = where.split("#")
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node.insert(int(last), value)
        else:
            node[last] = value
    path.write_text(json.dumps(config))


def test_an_unknown_transform_is_refused_unless_accepted(tmp_path: Path) -> None:
    bundle = published_bundle(tmp_path)
    lambda_step = {"_target_": "Lambdad", "keys": "@image_key", "func": "$lambda x: x * 2"}
    _edit_config(bundle, {"preprocessing#transforms#5": lambda_step})
    with pytest.raises(BundleImportError, match=r"unsupported transform.*\[5\] Lambdad"):
        import_bundle(bundle, tmp_path / "repo")
    assert _nothing_written(tmp_path / "repo")
    report = import_bundle(bundle, tmp_path / "repo", allow_unmapped=True)
    assert [u.target for u in report.unmapped] == ["Lambdad"]
    assert "UNMAPPED [5] Lambdad" in "\n".join(report.lines())


def test_a_network_def_that_fails_to_instantiate(tmp_path: Path) -> None:
    bundle = published_bundle(tmp_path)
    _edit_config(bundle, {"network_def#no_such_argument": 3})
    with pytest.raises(BundleImportError, match="network_def fails to instantiate"):
        import_bundle(bundle, tmp_path / "repo")
    assert _nothing_written(tmp_path / "repo")


def test_weights_that_do_not_fit_network_def(tmp_path: Path) -> None:
    bundle = published_bundle(tmp_path)
    _edit_config(bundle, {"network_def#out_channels": 3})
    with pytest.raises(BundleImportError, match="does not fit network_def"):
        import_bundle(bundle, tmp_path / "repo")
    assert _nothing_written(tmp_path / "repo")


def test_an_export_that_fails_parity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bundle_network, "PARITY_TOLERANCE", 1e-12)
    with pytest.raises(BundleImportError, match="export parity failed"):
        import_bundle(published_bundle(tmp_path), tmp_path / "repo")
    assert _nothing_written(tmp_path / "repo")


def test_a_shape_that_cannot_work(tmp_path: Path) -> None:
    bundle = published_bundle(tmp_path)
    _edit_config(bundle, {"inferer#roi_size": [90, 90, 90]})  # UNet halves four times
    meta = bundle / "configs" / "metadata.json"
    meta.write_text(meta.read_text().replace("96", "90"))
    with pytest.raises(BundleImportError, match=r"does not run on an input of shape \(2, 1, 90"):
        import_bundle(bundle, tmp_path / "repo")
    assert _nothing_written(tmp_path / "repo")


def test_the_cli_prints_progress_and_one_line_per_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = published_bundle(tmp_path, checksums=False)
    repo = tmp_path / "repo"
    assert main(["models", "import-bundle", str(bundle), "--out", str(repo)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("statlane models import-bundle: ")
    assert "does not match large_files.yml" in err[0]
    assert main(["models", "import-bundle", str(bundle), "--out", str(repo), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry run: no network built, nothing written" in out
    assert _nothing_written(repo)


# ---- other published CT bundles: their shapes import -------------------------------------------


def test_the_whole_body_bundle_maps_104_labels_and_evaluates_its_pixdim(tmp_path: Path) -> None:
    lines: list[str] = []
    report = import_bundle(
        FIXTURES / "wholeBody_ct_segmentation", tmp_path / "repo", dry_run=True, say=lines.append
    )
    steps = [m.step for m in report.mapped if "transform" in m.step]
    assert steps == [
        {"transform": "Orientation", "axcodes": "RAS"},
        {"transform": "Spacing", "pixdim": [1.5, 1.5, 1.5], "mode": "bilinear"},
        {"transform": "NormalizeIntensity", "nonzero": True},
        {"transform": "ScaleIntensity", "minv": -1.0, "maxv": 1.0},
    ]
    assert any("evaluating preprocessing#transforms#4#pixdim: $" in line for line in lines)
    assert report.unmapped == []
    # the rest carry reviewed SNOMED CT codes; the portal and splenic veins have only an
    # approximate one ("Portal vein") and stay a placeholder
    assert len(report.placeholders) == 104 - 66
    assert "portal-vein-and-splenic-vein" in report.placeholders
    assert "spleen" not in report.placeholders
    assert "liver" not in report.placeholders
    assert _nothing_written(tmp_path / "repo")
    with pytest.raises(BundleImportError, match=r"unsupported transform.*Spacingd.*pixdim"):
        import_bundle(FIXTURES / "wholeBody_ct_segmentation", tmp_path / "repo", evaluate=False)


def test_the_dynunet_bundle_maps_crop_foreground_and_label_def(tmp_path: Path) -> None:
    bundle = FIXTURES / "pediatric_abdominal_ct_segmentation"
    report = import_bundle(bundle, tmp_path / "repo", dry_run=True)
    steps = [m.step for m in report.mapped if "transform" in m.step]
    assert [s["transform"] for s in steps] == [
        "Orientation",
        "Spacing",
        "ScaleIntensityRange",
        "CropForeground",
    ]
    assert steps[3] == {"transform": "CropForeground", "mode": "minimum"}
    assert report.placeholders == []  # liver, spleen, pancreas: all coded
    assert report.unmapped == []


def test_the_swin_unetr_bundle_maps_and_names_why_its_network_cannot_be_built(
    tmp_path: Path,
) -> None:
    bundle = FIXTURES / "swin_unetr_btcv_segmentation"
    report = import_bundle(bundle, tmp_path / "repo", dry_run=True)
    assert [m.step.get("transform") for m in report.mapped][:3] == [
        "Orientation",
        "Spacing",
        "ScaleIntensityRange",
    ]
    # 12 of the 13 BTCV organs coded, "Left Kideny" included; not the portal and splenic veins
    assert report.placeholders == ["portal-and-splenic-veins"]
    copy = shutil.copytree(bundle, tmp_path / "swin")
    (copy / "models").mkdir()
    torch.save({}, copy / "models" / "model.pt")
    (copy / "large_files.yml").unlink()
    # MONAI >= 1.5 dropped SwinUNETR's img_size, which this published config still passes.
    with pytest.raises(BundleImportError, match="network_def fails to instantiate"):
        import_bundle(copy, tmp_path / "repo")
    assert _nothing_written(tmp_path / "repo")


@pytest.mark.slow
def test_the_whole_body_bundle_imports_with_its_105_channel_segresnet(tmp_path: Path) -> None:
    bundle = published_bundle(tmp_path, "wholeBody_ct_segmentation")
    report = import_bundle(bundle, tmp_path / "repo")
    manifest = load_manifest(report.folder)
    assert [o.shape for o in manifest.outputs] == [[-1, 105, 96, 96, 96]]
    assert len(manifest.findings) == 104
    assert manifest.runtime.chunking is not None
    assert manifest.runtime.chunking.mode == "gaussian"
    assert manifest.imported is not None
    assert all(c.max_abs_diff <= c.tolerance for c in manifest.imported.exports)
    assert ("network_def#_target_", "instantiate SegResNet") in report.evaluated
    sides = {f.name: f.laterality.meaning for f in manifest.findings if f.laterality}
    assert sides["kidney-left"] == "Left"
    assert sides["kidney-right"] == "Right"
    kidneys = [f.concept.value for f in manifest.findings if f.name.startswith("kidney-")]
    assert len(set(kidneys)) == 1  # one concept, told apart by the side
    assert all(r.ok for r in Registry(tmp_path / "repo").validate())
