"""Geometry conventions of preprocessing.volume: sorting, voxel placement, affine, LPS/RAS."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset

from preprocessing import load_series
from preprocessing.geometry import slice_normal
from tests.series_factory import (
    AXIAL,
    CORONAL,
    SAGITTAL,
    make_radiograph,
    make_series,
    stored_value,
    write_series,
)


def _ipp(ds: Dataset) -> np.ndarray:
    return np.array([float(v) for v in ds.ImagePositionPatient])


@pytest.mark.parametrize(
    ("iop", "normal"),
    [(AXIAL, (0, 0, 1)), (CORONAL, (0, 1, 0)), (SAGITTAL, (-1, 0, 0))],
)
def test_slice_normal_is_row_cross_column(iop: tuple[float, ...], normal: tuple[int, ...]) -> None:
    assert np.allclose(slice_normal(iop), normal)


@pytest.mark.parametrize("tilt_deg", [0.0, 15.0, -22.5])
def test_voxel_0_0_k_maps_to_each_slice_position(tilt_deg: float) -> None:
    series = make_series(7, tilt_deg=tilt_deg)
    volume = load_series(reversed(series))
    for k, ds in enumerate(series):
        mapped = volume.affine @ np.array([0.0, 0.0, k, 1.0])
        assert np.allclose(mapped[:3], _ipp(ds), atol=1e-6)
    assert volume.is_sheared == (tilt_deg != 0.0)


def test_tilted_series_third_column_is_the_ipp_step_not_the_normal() -> None:
    volume = load_series(make_series(5, tilt_deg=20.0, step_mm=3.0))
    assert np.allclose(volume.affine[:3, 2], [0.0, 0.0, 3.0])
    assert volume.spacing[2] == pytest.approx(3.0)


def test_columns_are_row_and_column_directions_times_spacing() -> None:
    volume = load_series(make_series(4, pixel_spacing=(0.8, 0.7), step_mm=2.0))
    # PixelSpacing is (between rows, between columns): i steps a column (0.7 mm) along x.
    assert np.allclose(volume.affine[:3, 0], [0.7, 0.0, 0.0])
    assert np.allclose(volume.affine[:3, 1], [0.0, 0.8, 0.0])
    assert volume.spacing == pytest.approx((0.7, 0.8, 2.0))


def test_lps_to_ras_for_a_standard_axial_series() -> None:
    volume = load_series(make_series(3))
    # i grows toward patient Left: +x in LPS, so RAS x (Right) decreases; j toward Posterior.
    assert volume.affine[0, 0] > 0
    assert volume.affine_ras[0, 0] < 0
    assert volume.affine[1, 1] > 0
    assert volume.affine_ras[1, 1] < 0
    assert volume.affine_ras[2, 2] == pytest.approx(volume.affine[2, 2])
    origin = volume.affine[:3, 3]
    assert np.allclose(volume.affine_ras[:3, 3], [-origin[0], -origin[1], origin[2]])


@pytest.mark.parametrize("iop", [AXIAL, CORONAL, SAGITTAL])
def test_voxels_land_at_column_row_slice(iop: tuple[float, ...], tmp_path: Path) -> None:
    series = make_series(5, rows=12, columns=9, orientation=iop, intercept=-1000.0)
    volume = load_series(write_series(series, tmp_path, seed=3))
    assert volume.shape == (9, 12, 5)
    assert volume.array.dtype == np.float32
    i, j, k = np.meshgrid(np.arange(9), np.arange(12), np.arange(5), indexing="ij")
    assert np.array_equal(volume.array, stored_value(k, j, i).astype(np.float32) - 1000.0)
    uids = tuple(ds.SOPInstanceUID for ds in series)
    assert volume.sop_instance_uids == uids


def test_sorting_ignores_instance_number() -> None:
    series = make_series(6)
    for ds, number in zip(series, [3, 1, 6, 2, 5, 4], strict=True):
        ds.InstanceNumber = number
    volume = load_series(series[::-1])
    assert volume.sop_instance_uids == tuple(ds.SOPInstanceUID for ds in series)


def test_array_is_a_transposed_view_of_a_slice_major_buffer() -> None:
    volume = load_series(make_series(3))
    assert volume.array.base is not None
    assert volume.array.transpose(2, 1, 0).flags.c_contiguous


def test_single_slice_uses_slice_thickness_along_the_normal() -> None:
    volume = load_series(make_series(1, step_mm=3.0, orientation=CORONAL))
    assert np.allclose(volume.affine[:3, 2], [0.0, 3.0, 0.0])


@pytest.mark.parametrize("modality", ["CR", "DX"])
def test_radiograph_becomes_one_slice_with_imager_pixel_spacing(modality: str) -> None:
    volume = load_series([make_radiograph(32, 24, modality=modality, spacing=(0.2, 0.15))])
    assert volume.shape == (24, 32, 1)
    assert volume.spacing == pytest.approx((0.15, 0.2, 1.0))
    assert volume.modality == modality
    assert volume.array[5, 7, 0] == stored_value(0, 7, 5)
