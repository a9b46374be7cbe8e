"""Sliding-window chunking equals MONAI's ``sliding_window_inference`` (differential tests)."""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from monai.data.utils import dense_patch_slices
from monai.inferers import sliding_window_inference

from models.backends import BackendModel, RequestContext, create_backend
from models.chunking import (
    BlendMode,
    ChunkingError,
    ChunkSpec,
    PatchMerger,
    importance_map,
    pad_volume,
    patch,
    plan_windows,
    scan_interval,
    sliding_window,
)
from models.manifest import (
    BackendKind,
    Chunking,
    ManifestError,
    OutputSpec,
    RuntimeHints,
    dump_manifest,
    load_manifest,
)
from models.postprocess import Finding, postprocess
from models.reference.data import case_for, model_sample
from models.reference.export import export_onnx
from models.reference.recipes import EVAL_SEED_START, recipe_for
from models.registry import Registry, onnx_io
from models.runner import ModelRunner
from models.triton_export import build_config
from router.vocabulary import PriorityClass
from serving.engine import Engine, InferenceJob, ModelEntry
from serving.scheduler import LatencyTable, ModelLatency, Scheduler
from tests.model_factory import INPUT_NAME, SPATIAL, tiny_manifest

# (volume spatial shape, roi, overlap): even and uneven splits, an axis shorter than its roi
# (padded), an axis equal to its roi (one window), no overlap, and a 2D case.
CASES = [
    ((24, 20, 28), (16, 16, 8), 0.25),
    ((17, 23, 19), (8, 12, 10), 0.5),
    ((12, 12, 30), (12, 12, 8), 0.25),
    ((10, 14, 9), (12, 8, 12), 0.25),
    ((16, 16, 16), (8, 8, 8), 0.0),
    ((33, 21), (16, 9), 0.4),
]


def _conv_predictor(spatial_dims: int, out_channels: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    conv = torch.nn.Conv3d if spatial_dims == 3 else torch.nn.Conv2d
    return conv(1, out_channels, kernel_size=3, padding=1).eval()


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
@pytest.mark.parametrize(("shape", "roi", "overlap"), CASES)
def test_merged_output_equals_monai(
    shape: tuple[int, ...], roi: tuple[int, ...], overlap: float, mode: BlendMode
) -> None:
    net = _conv_predictor(len(shape))
    volume = np.random.default_rng(len(shape) + sum(shape)).normal(size=(1, *shape))
    volume = volume.astype(np.float32)
    with torch.no_grad():
        expected = sliding_window_inference(
            torch.from_numpy(volume[None]), roi, 3, net, overlap, mode=mode
        )

        def predict(batch: np.ndarray) -> Mapping[str, np.ndarray]:
            return {"out": net(torch.from_numpy(batch)).numpy()}

        spec = ChunkSpec(roi, overlap, mode)
        merged = sliding_window(volume, spec, predict, batch_size=2)
    assert merged["out"].shape == (2, *shape)
    np.testing.assert_allclose(merged["out"], np.asarray(expected)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("shape", "roi", "overlap"), CASES)
def test_windows_follow_monai_scan_order(
    shape: tuple[int, ...], roi: tuple[int, ...], overlap: float
) -> None:
    plan = plan_windows(shape, ChunkSpec(roi, overlap))
    padded = plan.padded_shape
    assert all(p >= r for p, r in zip(padded, roi, strict=True))
    expected = dense_patch_slices(padded, roi, scan_interval(padded, roi, overlap))
    assert list(plan.windows) == [tuple(s) for s in expected]


def test_nodule_roi_gives_four_windows_along_the_slices() -> None:
    plan = plan_windows((112, 112, 84), ChunkSpec((112, 112, 32), 0.25))
    assert [w[2] for w in plan.windows] == [
        slice(0, 32),
        slice(24, 56),
        slice(48, 80),
        slice(52, 84),
    ]
    assert all(w[:2] == (slice(0, 112), slice(0, 112)) for w in plan.windows)


def test_gaussian_weights_peak_in_the_centre_and_keep_monai_floor() -> None:
    weights = importance_map((8, 8, 32), "gaussian", 0.125)
    assert weights.dtype == np.float32
    assert not weights.flags.writeable
    assert weights.max() == weights[3:5, 3:5, 15:17].max()
    assert weights.min() == pytest.approx(1e-3)


def test_merger_refuses_repeats_missing_windows_and_sparse_outputs() -> None:
    plan = plan_windows((8, 8, 12), ChunkSpec((8, 8, 8), 0.5))
    merger = PatchMerger(plan)
    merger.add(0, {"out": np.ones((1, 8, 8, 8), np.float32)})
    with pytest.raises(ChunkingError, match="merged twice"):
        merger.add(0, {"out": np.ones((1, 8, 8, 8), np.float32)})
    with pytest.raises(ChunkingError, match="windows missing"):
        merger.result()
    with pytest.raises(ChunkingError, match="not dense"):
        merger.add(1, {"logits": np.ones((2,), np.float32)})


def test_patches_are_views_of_the_padded_volume() -> None:
    volume = np.arange(6 * 6 * 4, dtype=np.float32).reshape(1, 6, 6, 4)
    plan = plan_windows((6, 6, 4), ChunkSpec((4, 4, 8), 0.5))
    padded = pad_volume(volume, plan)
    assert plan.pad == ((0, 0), (0, 0), (2, 2))
    first = patch(padded, plan, 0)
    assert first.shape == (1, 4, 4, 8)
    assert np.shares_memory(first, padded)
    np.testing.assert_array_equal(first[0, :, :, 2:6], volume[0, :4, :4])
    with pytest.raises(ChunkingError, match="does not match"):
        pad_volume(volume[:, :5], plan)


def test_spec_validates_eagerly() -> None:
    with pytest.raises(ValueError, match="overlap"):
        ChunkSpec((8, 8, 8), 1.0)
    with pytest.raises(ValueError, match="roi_size"):
        ChunkSpec((8, 0, 8))
    with pytest.raises(ChunkingError, match="spatial axes"):
        ChunkSpec((8, 8, 8)).item_shape((1, 8, 8))
    assert ChunkSpec((8, 8, 4)).item_shape((2, 16, 16, 16)) == (2, 8, 8, 4)


# ---- the shipped chunked model: whole volume and chunked engine agree ------------------------


@pytest.mark.slow
def test_chunked_engine_finds_what_the_whole_volume_run_finds() -> None:
    """Two held-out synthetic chest CTs (odd seed: a nodule) through the engine in patches give
    the findings of one whole-volume ONNX run: presence equal, volume within 10 %."""
    registry = Registry.default()
    version = registry.get("ct-chest-nodule")
    manifest = version.manifest
    spec = ChunkSpec.from_manifest(manifest)
    assert spec is not None
    assert spec.mode == "gaussian"
    recipe = recipe_for(manifest.name)
    runner = ModelRunner(manifest, version.folder, "onnxruntime")
    model = BackendModel.from_package(manifest, version.folder)

    def findings(outputs: Mapping[str, np.ndarray], affine: np.ndarray) -> list[Finding]:
        return postprocess({k: v[None] for k, v in outputs.items()}, manifest, affine)

    samples = {}
    for seed in (EVAL_SEED_START + 4, EVAL_SEED_START + 5):
        case = case_for(recipe, seed)
        samples[f"s{seed}"] = (case.finding, model_sample(recipe, case, manifest.pipeline()))
    whole = {
        key: findings({k: v[0] for k, v in runner.run(s.image[None]).items()}, s.affine_ras)[0]
        for key, (_, s) in samples.items()
    }
    entry = ModelEntry(
        model,
        tuple(manifest.input.shape[1:]),
        prepare=lambda key: (samples[key][1].image, samples[key][1].affine_ras),
        postprocess=findings,
        chunking=spec,
    )
    latency = LatencyTable({model.ident: ModelLatency.from_mapping({1: 0.5}, model.max_batch)})
    engine = Engine(
        {model.ident: entry},
        [create_backend("onnxruntime", device="cpu")],
        Scheduler(latency, "edf"),
        clock=time.monotonic,
    )
    futures = {
        key: engine.submit(InferenceJob(key, model.ident, PriorityClass.ROUTINE, volume=key))
        for key in samples
    }
    results = {key: future.result(timeout=300) for key, future in futures.items()}
    engine.stop()
    for key, (truth, _) in samples.items():
        result = results[key]
        assert result.error is None
        assert result.chunks == 3
        chunked = result.findings[0]
        assert chunked.present == whole[key].present == truth
        if truth:
            assert chunked.volume_ml == pytest.approx(whole[key].volume_ml, rel=0.10)


# ---- manifests and registry validation of chunked packages ------------------------------------


def _dense_package(root: Path, *, dynamic: bool, roi: list[int], **overrides: Any) -> Path:
    """A one-conv segmentation package whose graph has dynamic (or fixed) spatial axes."""
    folder = root / "dense-ct" / "1"
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 1, kernel_size=3, padding=1).eval()
    example = torch.zeros(1, 1, *SPATIAL)
    export_onnx(
        net,
        example,
        folder / "model.onnx",
        input_name=INPUT_NAME,
        output_name="heatmap",
        dynamic_spatial=dynamic,
    )
    fields: dict[str, Any] = {
        "task": "segmentation",
        "outputs": [OutputSpec(name="heatmap", shape=[-1, 1, *SPATIAL], meaning="logits")],
        "findings": [],
        "runtime": RuntimeHints(
            max_batch=2, backends=[BackendKind.ONNXRUNTIME], chunking=Chunking(roi_size=roi)
        ),
        **overrides,
    }
    dump_manifest(tiny_manifest("dense-ct", 1, folder, **fields), folder / "manifest.yaml")
    return folder


def test_a_chunked_package_with_dynamic_spatial_axes_validates_and_runs(tmp_path: Path) -> None:
    folder = _dense_package(tmp_path, dynamic=True, roi=[8, 8, 4])
    (result,) = Registry(tmp_path).validate("dense-ct@1")
    assert result.ok, result.problem
    inputs, outputs = onnx_io(folder / "model.onnx")
    assert inputs[INPUT_NAME] == ["batch", 1, "x", "y", "z"]
    assert outputs["heatmap"] == ["batch", 1, "x", "y", "z"]
    manifest = load_manifest(folder)
    backend = create_backend("onnxruntime", device="cpu")
    model = BackendModel.from_package(manifest, folder)
    patches = np.zeros((2, 1, 8, 8, 4), dtype=np.float32)
    out = backend.infer(model, patches, RequestContext("patches"))["heatmap"]
    assert out.shape == patches.shape  # a patch batch runs on the same graph as a whole volume


def test_a_chunked_package_with_fixed_spatial_axes_is_refused(tmp_path: Path) -> None:
    _dense_package(tmp_path, dynamic=False, roi=[8, 8, 4])
    (result,) = Registry(tmp_path).validate("dense-ct@1")
    assert "spatial axis 0 is fixed to 16 in the graph" in str(result.problem)
    assert "export it with dynamic spatial axes" in str(result.problem)


def test_chunking_needs_one_roi_size_per_axis_and_dense_outputs(tmp_path: Path) -> None:
    folder = _dense_package(tmp_path, dynamic=True, roi=[8, 8, 4])
    path = folder / "manifest.yaml"
    good = yaml.safe_load(path.read_text())
    flat = copy.deepcopy(good)
    flat["runtime"]["chunking"]["roi_size"] = [8, 8]
    path.write_text(yaml.safe_dump(flat))
    with pytest.raises(ManifestError, match="roi_size \\[8, 8\\] needs one size per spatial axis"):
        load_manifest(folder)
    sparse = copy.deepcopy(good)
    sparse["outputs"][0]["shape"] = [-1, 2]
    path.write_text(yaml.safe_dump(sparse))
    with pytest.raises(ManifestError, match="output 'heatmap' \\[-1, 2\\] is not dense"):
        load_manifest(folder)


def test_triton_config_of_a_chunked_model_has_variable_spatial_dims(tmp_path: Path) -> None:
    folder = _dense_package(tmp_path, dynamic=True, roi=[8, 8, 4])
    config = build_config(load_manifest(folder), [1])
    assert list(config.input[0].dims) == [1, -1, -1, -1]
    assert list(config.output[0].dims) == [1, -1, -1, -1]
