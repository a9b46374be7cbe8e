"""Declarative pipelines: allow-list, YAML round trip, and the fast path against plain MONAI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from preprocessing.errors import PipelineSpecError
from preprocessing.pipeline import FAST_PATH_ATOL, Pipeline
from preprocessing.volume import Volume

HEAD_CT = """
- {transform: Orientation, axcodes: RAS}
- {transform: Spacing, pixdim: [1.0, 1.0, 5.0], mode: bilinear}
- {transform: Window, center: 40, width: 80}
- {transform: Resize, spatial_size: [24, 20, 6]}
"""


def phantom(
    shape: tuple[int, int, int] = (41, 37, 13),
    spacing: tuple[float, float, float] = (0.49, 0.52, 2.5),
    tilt_mm_per_slice: float = 0.0,
    direction: np.ndarray | None = None,
    seed: int = 0,
) -> Volume:
    """A skull-like shell (bone 1000 HU, brain 40 HU, air -1000 HU) plus noise, LPS affine.

    ``tilt_mm_per_slice`` shifts each slice along y, as a gantry tilt does (sheared affine).
    """
    rng = np.random.default_rng(seed)
    idx = np.indices(shape, dtype=np.float64)
    r = np.sqrt(sum(((idx[a] - (shape[a] - 1) / 2) / shape[a]) ** 2 for a in range(3)))
    hu = np.where(r < 0.42, 40.0, -1000.0) + np.where((r > 0.36) & (r < 0.42), 960.0, 0.0)
    hu += rng.normal(0.0, 8.0, shape)
    buffer = np.ascontiguousarray(hu.transpose(2, 1, 0), dtype=np.float32)  # (slice, row, col)
    affine = np.eye(4)
    rot = np.eye(3) if direction is None else direction
    affine[:3, :3] = rot @ np.diag(spacing)
    affine[1, 2] += tilt_mm_per_slice
    affine[:3, 3] = [-100.0, -110.0, -40.0]
    return Volume(buffer.transpose(2, 1, 0), affine, "1.2.3.4", "1.2.3", "CT")


def assert_close(fast: Any, ref: Any, atol: float = FAST_PATH_ATOL) -> None:
    assert tuple(fast.shape) == tuple(ref.shape)
    assert fast.dtype == torch.float32
    np.testing.assert_allclose(np.asarray(fast.affine), np.asarray(ref.affine), atol=1e-6)
    diff = (fast.cpu().as_tensor() - ref.cpu().as_tensor()).abs().max().item()
    assert diff <= atol, f"fast path differs from MONAI by {diff}"


# ---- spec parsing and refusals ---------------------------------------------------------------


def test_yaml_and_list_specs_build_the_same_pipeline(tmp_path: Path) -> None:
    as_list = yaml.safe_load(HEAD_CT)
    path = tmp_path / "head.yaml"
    path.write_text(HEAD_CT)
    assert Pipeline.from_spec(HEAD_CT) == Pipeline.from_spec(as_list) == Pipeline.from_file(path)


def test_yaml_round_trip_keeps_every_argument() -> None:
    p = Pipeline.from_spec(HEAD_CT)
    again = Pipeline.from_spec(yaml.safe_dump(p.to_spec()))
    assert again == p
    assert again.to_spec() == yaml.safe_load(HEAD_CT)
    assert [s["transform"] for s in again.to_spec()] == [
        "Orientation",
        "Spacing",
        "Window",
        "Resize",
    ]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ([{"transform": "Lambda", "func": "print"}], "step 0 (Lambda): unknown transform"),
        ([{"transform": "Spacing", "pixdim": 1, "eval": 1}], "unknown argument 'eval'"),
        ([{"transform": "Spacing"}], "missing argument(s) pixdim"),
        ([{"transform": "Spacing", "pixdim": "$__import__('os')"}], "never evaluated"),
        ([{"transform": "Resize", "spatial_size": "@image_size"}], "never evaluated"),
        ([{"transform": "Resize", "spatial_size": {"x": 1}}], "not plain data"),
        ([{"transform": "Spacing", "pixdim": [1, -1, 5]}], "must be positive"),
        ([{"transform": "Resize", "spatial_size": [1.5, 2, 2]}], "whole voxel counts"),
        ([{"transform": "Spacing", "pixdim": 1, "lazy": True}], "unknown argument 'lazy'"),
        ([{"transform": "Spacing", "pixdim": 1, "mode": "cubic-ish"}], "rejected by MONAI"),
        ([{"transform": "Orientation", "axcodes": "XYZ"}], "step 0 (Orientation)"),
        ([{"transform": "Window", "center": 40, "width": 0}], "width must be positive"),
        ([{"transform": "Window", "center": 40}], "numeric 'center' and 'width'"),
        ([{"transform": "ScaleIntensityRange", "a_min": 5, "a_max": 5}], "a_min equals a_max"),
        ([{"axcodes": "RAS"}], "needs a 'transform' name"),
        (["Orientation"], "must be a mapping"),
        ({"transform": "Orientation"}, "non-empty list"),
        ("- [unclosed", "not valid YAML"),
    ],
)
def test_refused_specs_name_the_step_and_the_problem(spec: Any, expected: str) -> None:
    with pytest.raises(PipelineSpecError) as err:
        Pipeline.from_spec(spec)
    assert expected in str(err.value)


def test_error_names_the_failing_step_index() -> None:
    spec = [{"transform": "Orientation", "axcodes": "RAS"}, {"transform": "Bogus"}]
    with pytest.raises(PipelineSpecError, match=r"pipeline step 1 \(Bogus\)"):
        Pipeline.from_spec(spec)


def test_missing_file_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(PipelineSpecError, match="cannot read"):
        Pipeline.from_file(tmp_path / "absent.yaml")


def test_window_alias_equals_scale_intensity_range() -> None:
    vol = phantom()
    window = Pipeline.from_spec([{"transform": "Window", "center": 40, "width": 80}])
    sir = Pipeline.from_spec(
        [
            {
                "transform": "ScaleIntensityRange",
                **{"a_min": 0, "a_max": 80, "b_min": 0.0, "b_max": 1.0, "clip": True},
            }
        ]
    )
    for run in ("reference", "__call__"):
        a, b = getattr(window, run)(vol), getattr(sir, run)(vol)
        assert torch.equal(a.as_tensor(), b.as_tensor())
    out = window(vol)
    assert float(out.min()) == 0.0
    assert float(out.max()) == 1.0


# ---- fast path against the reference (differential) --------------------------------------------

PIPELINES = {
    "head-ct": yaml.safe_load(HEAD_CT),
    "nearest-zeros-lpi": [
        {"transform": "Orientation", "axcodes": "LPI"},
        {
            "transform": "Spacing",
            "pixdim": [0.8, 0.7, 3.1],
            "mode": "nearest",
            "padding_mode": "zeros",
        },
        {"transform": "ThresholdIntensity", "threshold": 500, "above": False, "cval": 500},
        {"transform": "ScaleIntensity"},
    ],
    "align-corners-crop-pad": [
        {"transform": "Spacing", "pixdim": 1.3, "align_corners": True},
        {"transform": "Orientation", "axcodes": "RAS"},
        {"transform": "ScaleIntensityRange", "a_min": -100, "a_max": 200, "b_min": 0, "b_max": 1},
        {"transform": "CenterSpatialCrop", "roi_size": [11, 9, -1]},
        {"transform": "SpatialPad", "spatial_size": [16, 16, 16]},
        {"transform": "NormalizeIntensity"},
    ],
    "two-spacings-resize-pad-crop": [
        {"transform": "Orientation", "axcodes": "RAS"},
        {"transform": "Spacing", "pixdim": [2.0, 2.0, 2.0]},
        {"transform": "Spacing", "pixdim": [1.5, 1.5, 3.0]},
        {"transform": "Window", "center": 40, "width": 120, "b_min": -1, "b_max": 1},
        {"transform": "ResizeWithPadOrCrop", "spatial_size": [10, 12, 5]},
        {"transform": "Resize", "spatial_size": [7, 9, 5], "mode": "trilinear"},
    ],
}

_C, _S = np.cos(np.radians(10.0)), np.sin(np.radians(10.0))
OBLIQUE = np.array([[_C, -_S, 0.0], [_S, _C, 0.0], [0.0, 0.0, 1.0]])  # 10 degrees in-plane


@pytest.mark.parametrize("name", sorted(PIPELINES))
@pytest.mark.parametrize(
    "vol_kwargs",
    [
        {},
        {"tilt_mm_per_slice": 0.44},  # gantry tilt ~10 degrees: sheared affine
        {"shape": (17, 30, 9), "spacing": (0.7, 0.7, 1.25)},
        {"direction": OBLIQUE, "shape": (20, 22, 7)},
        {"direction": np.array([[1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]]), "shape": (19, 16, 21)},
    ],
    ids=["axial", "tilted", "odd-shape", "oblique", "coronal"],
)
def test_fast_path_matches_monai(name: str, vol_kwargs: dict[str, Any]) -> None:
    vol = phantom(**vol_kwargs)
    if "tilt_mm_per_slice" in vol_kwargs:
        assert vol.is_sheared
    pipe = Pipeline.from_spec(PIPELINES[name])
    assert_close(pipe(vol), pipe.reference(vol))


def test_shear_is_not_ignored() -> None:
    """The tilted series resamples onto an orthogonal grid: its result differs from the untilted."""
    pipe = Pipeline.from_spec(HEAD_CT)
    tilted, straight = phantom(tilt_mm_per_slice=0.44), phantom()
    out = pipe(tilted)
    rot = np.asarray(out.affine)[:3, :3]
    assert abs(float(rot[1, 2])) < 1e-6  # output grid is orthogonal: the shear was resampled away
    assert (out - pipe(straight)).abs().max().item() > 0.05


def test_fast_path_never_modifies_the_volume() -> None:
    vol = phantom()
    before = vol.array.copy()
    for spec in ([{"transform": "Window", "center": 40, "width": 80}], yaml.safe_load(HEAD_CT)):
        Pipeline.from_spec(spec)(vol)
    np.testing.assert_array_equal(vol.array, before)


def test_output_is_channel_first_float32_with_ras_affine() -> None:
    vol = phantom()
    out = Pipeline.from_spec(HEAD_CT)(vol)
    assert tuple(out.shape) == (1, 24, 20, 6)
    assert out.dtype == torch.float32
    # R and A.
    assert np.asarray(out.affine)[0, 0] > 0
    assert np.asarray(out.affine)[1, 1] > 0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_cuda_fast_path_matches_cpu_reference(name: str) -> None:
    pipe = Pipeline.from_spec(PIPELINES[name])
    for vol in (phantom(), phantom(tilt_mm_per_slice=0.44)):
        out = pipe(vol, device="cuda")
        assert out.device.type == "cuda"
        assert_close(out, pipe.reference(vol))


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("padding_mode", ["border", "zeros"])
def test_separable_resampling_equals_grid_sample(mode: str, padding_mode: str) -> None:
    """Flip + permute + scale + shift, partly outside the input: one pass each way."""
    from preprocessing.resample import _resample_grid, is_axis_aligned, resample

    rng = np.random.default_rng(1)
    img = torch.from_numpy(rng.normal(size=(1, 13, 11, 7)).astype(np.float32))
    xform = np.array(
        [[0.0, -1.37, 0.0, 12.3], [0.61, 0.0, 0.0, -1.1], [0.0, 0.0, 1.9, 0.27], [0, 0, 0, 1.0]]
    )
    assert is_axis_aligned(xform)
    fast = resample(img, xform, (9, 10, 5), mode=mode, padding_mode=padding_mode)
    grid = _resample_grid(img, xform, (9, 10, 5), mode, padding_mode, False)
    assert torch.allclose(fast, grid, atol=1e-5)
