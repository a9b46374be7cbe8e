"""StreamingPreprocessor: per-slice in-plane work, then a short tail, equal to the batch path."""

from __future__ import annotations

import gc
import math
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydicom.dataset import Dataset

from models.synthetic import generate_study
from preprocessing import IncompleteSeriesError, InconsistentGeometryError, load_series
from preprocessing.pipeline import FAST_PATH_ATOL, Pipeline
from preprocessing.resample import area_resize
from preprocessing.streaming_pipeline import StreamingPreprocessor
from tests.series_factory import CORONAL, SAGITTAL, make_series, to_bytes, write_series

PIPELINES: dict[str, list[dict[str, Any]]] = {
    "head-ct": [
        {"transform": "Orientation", "axcodes": "RAS"},
        {"transform": "Spacing", "pixdim": [2.0, 2.0, 3.0], "mode": "bilinear"},
        {"transform": "Window", "center": 40, "width": 80},
        {"transform": "Resize", "spatial_size": [32, 32, 16]},
    ],
    "lps-trilinear": [
        {"transform": "Orientation", "axcodes": "LPS"},
        {"transform": "Spacing", "pixdim": [4.4, 3.1, 6.5]},
        {"transform": "Window", "center": 40, "width": 400},
        {"transform": "Resize", "spatial_size": [20, 24, 9], "mode": "trilinear"},
    ],
    "pli-nearest-crop-pad": [
        {"transform": "Orientation", "axcodes": "PLI"},
        {
            "transform": "Spacing",
            "pixdim": [2.9, 4.1, 3.3],
            "mode": "nearest",
            "padding_mode": "zeros",
        },
        {"transform": "ThresholdIntensity", "threshold": 300, "above": False, "cval": 300},
        {"transform": "ScaleIntensityRange", "a_min": -100, "a_max": 300, "b_min": 0, "b_max": 1},
        {"transform": "CenterSpatialCrop", "roi_size": [40, -1, 20]},
        {"transform": "SpatialPad", "spatial_size": [48, 48, 24]},
    ],
    "two-spacings-pad-crop": [
        {"transform": "Orientation", "axcodes": "RAS"},
        {"transform": "Spacing", "pixdim": [5.0, 5.0, 4.0]},
        {"transform": "Spacing", "pixdim": [3.0, 3.0, 6.0]},
        {"transform": "Window", "center": 40, "width": 120, "b_min": -1, "b_max": 1},
        {"transform": "ResizeWithPadOrCrop", "spatial_size": [70, 64, 30]},
    ],
    "window-first": [  # no leading spatial step: per slice only a copy, the whole pipeline last
        {"transform": "Window", "center": 40, "width": 80},
        {"transform": "Spacing", "pixdim": [3.0, 3.0, 3.0]},
    ],
}


@pytest.fixture(scope="module")
def head_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A synthetic CT head, 32 x 64x64 slices (3.75 mm pixels, 5 mm slices)."""
    out = tmp_path_factory.mktemp("head")
    study = generate_study("ct-head", out, seed=0, slices=32, slice_thickness_mm=5.0, matrix=64)
    return sorted(study.files)


@pytest.fixture(scope="module")
def tilted_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The same head with a 20 degree gantry tilt (sheared affine)."""
    out = tmp_path_factory.mktemp("tilted")
    study = generate_study(
        "ct-head", out, seed=0, slices=32, slice_thickness_mm=5.0, matrix=64, gantry_tilt_deg=20
    )
    return sorted(study.files)


def stream(
    pipe: Pipeline, sources: list[Any], seed: int | None = 0, **kwargs: Any
) -> StreamingPreprocessor:
    """All ``sources`` added in a random order (``seed``) or as given (``None``)."""
    sp = StreamingPreprocessor(pipe, expected_count=len(sources), **kwargs)
    order = (
        range(len(sources))
        if seed is None
        else np.random.default_rng(seed).permutation(len(sources))
    )
    for index in order:
        assert not sp.is_complete
        sp.add(sources[index])
    assert sp.is_complete
    return sp


def assert_same(out: Any, batch: Any) -> None:
    """Same shape, same affine, voxels within ``FAST_PATH_ATOL``."""
    assert out.dtype == torch.float32
    assert tuple(out.shape) == tuple(batch.shape)
    assert np.array_equal(np.asarray(out.affine), np.asarray(batch.affine))
    diff = (out.cpu().as_tensor() - batch.cpu().as_tensor()).abs().max().item()
    assert diff <= FAST_PATH_ATOL, f"streaming differs from batch by {diff}"


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_random_arrival_equals_batch(name: str, seed: int, head_files: list[Path]) -> None:
    pipe = Pipeline.from_spec(PIPELINES[name])
    sp = stream(pipe, head_files, seed)
    out = sp.tensor()
    assert sp.fallback_reason is None  # the short tail was taken
    assert_same(out, pipe(load_series(head_files)))


def test_in_order_and_reversed_arrival(head_files: list[Path]) -> None:
    pipe = Pipeline.from_spec(PIPELINES["head-ct"])
    batch = pipe(load_series(head_files))
    for files in (head_files, head_files[::-1]):
        sp = stream(pipe, files, seed=None)
        assert_same(sp.tensor(), batch)
        assert sp.fallback_reason is None


@pytest.mark.parametrize("name", ["head-ct", "pli-nearest-crop-pad"])
def test_gantry_tilt_takes_the_fallback(name: str, tilted_files: list[Path]) -> None:
    pipe = Pipeline.from_spec(PIPELINES[name])
    volume = load_series(tilted_files)
    assert volume.is_sheared
    sp = stream(pipe, tilted_files, seed=3)
    out = sp.tensor()
    assert sp.fallback_reason is not None
    assert "not separable" in sp.fallback_reason
    assert_same(out, pipe(volume))


_C, _S = math.cos(math.radians(10.0)), math.sin(math.radians(10.0))


@pytest.mark.parametrize(
    "orientation",
    [CORONAL, SAGITTAL, (_C, _S, 0.0, -_S, _C, 0.0)],
    ids=["coronal", "sagittal", "oblique-10deg"],
)
@pytest.mark.parametrize("name", ["head-ct", "pli-nearest-crop-pad"])
def test_other_slice_orientations_equal_batch(name: str, orientation: Any) -> None:
    """The slice axis may become any output axis; an oblique plane keeps a separable map."""
    series = make_series(
        14, 18, 22, pixel_spacing=(1.7, 2.3), step_mm=3.0, orientation=orientation, slope=3.0
    )
    pipe = Pipeline.from_spec(PIPELINES[name])
    sp = stream(pipe, series, seed=5)
    out = sp.tensor()
    assert sp.fallback_reason is None
    assert_same(out, pipe(load_series(series)))


def test_tilted_factory_series_falls_back(tmp_path: Path) -> None:
    series = make_series(10, 16, 18, tilt_deg=15.0, slope=2.0)
    paths = write_series(series, tmp_path)
    pipe = Pipeline.from_spec(PIPELINES["lps-trilinear"])
    sp = stream(pipe, paths, seed=2)
    assert_same(sp.tensor(), pipe(load_series(paths)))
    assert sp.fallback_reason is not None


def test_tensor_before_the_last_slice_is_refused(head_files: list[Path]) -> None:
    sp = StreamingPreprocessor(Pipeline.from_spec(PIPELINES["head-ct"]), expected_count=32)
    for path in head_files[:-1]:
        sp.add(path)
    assert sp.count == 31
    assert not sp.is_complete
    with pytest.raises(IncompleteSeriesError):
        sp.tensor()
    sp.add(head_files[-1])
    assert sp.tensor().shape == (1, 32, 32, 16)


def test_repeated_instance_is_idempotent() -> None:
    series = make_series(8, 20, 16, slope=4.0)
    pipe = Pipeline.from_spec(PIPELINES["head-ct"])
    sp = StreamingPreprocessor(pipe, expected_count=8)
    arrivals: list[Dataset | bytes] = [
        series[3],
        *series[:5],
        to_bytes(series[3]),
        *series[5:],
        series[0],
    ]
    for ds in arrivals:
        sp.add(ds)
    assert sp.count == 8
    out = sp.tensor()
    assert sp.fallback_reason is None
    assert_same(out, pipe(load_series(series)))
    assert_same(sp.tensor(), out)  # tensor() may be called again: the slices are not consumed


def test_unknown_expected_count_uses_what_arrived() -> None:
    series = make_series(7, 12, 10)
    pipe = Pipeline.from_spec(PIPELINES["lps-trilinear"])
    sp = StreamingPreprocessor(pipe)
    for ds in series[::-1]:
        sp.add(ds)
    assert not sp.is_complete
    assert_same(sp.tensor(), pipe(load_series(series)))
    assert sp.fallback_reason is None


def test_dropped_preprocessor_is_freed_at_once() -> None:
    """No reference cycle: the decoded slices go when the caller drops it, not at a GC pass."""
    sp = stream(Pipeline.from_spec(PIPELINES["head-ct"]), make_series(5, 12, 10), seed=0)
    ref = weakref.ref(sp)
    gc.disable()
    try:
        del sp
        assert ref() is None
    finally:
        gc.enable()


def test_geometry_defects_raise_as_in_batch() -> None:
    series = make_series(6, 12, 10)
    odd: Dataset = series[4]
    odd.PixelSpacing = [0.5, 0.5]
    with pytest.raises(InconsistentGeometryError):
        load_series(series)
    sp = stream(Pipeline.from_spec(PIPELINES["head-ct"]), series, seed=1)
    with pytest.raises(InconsistentGeometryError):
        sp.tensor()


@pytest.mark.parametrize(
    ("shape", "size"), [((13, 11, 7), (5, 11, 3)), ((6, 9, 4), (13, 4, 10)), ((8, 8, 8), (8, 8, 8))]
)
def test_area_resize_equals_adaptive_pooling(
    shape: tuple[int, int, int], size: tuple[int, int, int]
) -> None:
    img = torch.from_numpy(np.random.default_rng(0).normal(size=(2, *shape)).astype(np.float32))
    pooled = torch.nn.functional.adaptive_avg_pool3d(img[None], size)[0]
    out = area_resize(img, size)
    assert out.data_ptr() != img.data_ptr()
    assert torch.allclose(out, pooled, atol=1e-6)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_cuda_streaming_equals_cpu_batch(head_files: list[Path]) -> None:
    pipe = Pipeline.from_spec(PIPELINES["head-ct"])
    sp = stream(pipe, head_files, seed=4, device="cuda")
    out = sp.tensor()
    assert out.device.type == "cuda"
    assert sp.fallback_reason is None
    assert_same(out, pipe(load_series(head_files)))
