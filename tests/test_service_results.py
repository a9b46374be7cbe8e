"""Placing findings on the source images: boxes on the key slice, the label map on the source
grid."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from models.postprocess import Finding
from models.registry import Registry
from models.synthetic import generate_study
from preprocessing.series import load_series
from preprocessing.volume import Volume
from serving.service.results import key_image, mask_on_source, source_instance
from tests.peers import require_testdata


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> tuple[Volume, list]:
    study = generate_study("ct-head", tmp_path_factory.mktemp("head"), seed=4, matrix=64)
    volume = load_series(study.files)
    by_uid = {}
    for path in study.files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        by_uid[str(ds.SOPInstanceUID)] = source_instance(ds, str(path))
    return volume, [by_uid[uid] for uid in volume.sop_instance_uids]


def test_mask_lands_on_the_same_source_voxels(head: tuple[Volume, list]) -> None:
    volume, _ = head
    manifest = Registry.default().get("ich-ct-head@2").manifest
    cols, rows, slices = volume.shape
    logits = np.full((1, cols, rows, slices), -10.0, np.float32)
    logits[0, 10:20, 20:30, 5:8] = 10.0
    mask = mask_on_source(
        {"logits": logits}, manifest, volume.affine_ras, volume.affine, volume.shape
    )
    assert mask is not None
    assert mask.shape == (slices, rows, cols)
    assert mask.dtype == np.uint8  # a label map: 1 is manifest.findings[0]
    expected = np.zeros_like(mask)
    expected[5:8, 20:30, 10:20] = 1
    assert np.array_equal(mask, expected)


def test_mask_follows_a_flipped_model_grid(head: tuple[Volume, list]) -> None:
    """A model grid in another orientation (columns reversed) still maps to the same voxels."""
    volume, _ = head
    manifest = Registry.default().get("ich-ct-head@2").manifest
    cols, rows, slices = volume.shape
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1.0, cols - 1  # model index i ↔ source column cols-1-i
    model_affine = volume.affine_ras @ flip
    logits = np.full((1, cols, rows, slices), -10.0, np.float32)
    logits[0, cols - 20 : cols - 10, 20:30, 5:8] = 10.0
    mask = mask_on_source({"logits": logits}, manifest, model_affine, volume.affine, volume.shape)
    assert mask is not None
    assert np.argwhere(mask).min(axis=0).tolist() == [5, 20, 10]
    assert np.argwhere(mask).max(axis=0).tolist() == [7, 29, 19]


def test_key_image_box_in_source_pixels(head: tuple[Volume, list]) -> None:
    volume, instances = head
    lo = volume.affine @ np.array([10, 20, 5, 1.0])
    hi = volume.affine @ np.array([19, 29, 7, 1.0])
    box = tuple(float(v) for v in (*np.minimum(lo, hi)[:3], *np.maximum(lo, hi)[:3]))
    finding = Finding(
        "ich",
        "1386000",
        "SCT",
        "Intracranial hemorrhage",
        True,
        True,
        0.9,
        volume_ml=1.0,
        bbox_mm_lps=box,
    )
    key = key_image(finding, instances)
    assert key is not None
    assert key.sop_instance_uid == volume.sop_instance_uids[6]
    assert key.box_px == pytest.approx((10.0, 20.0, 19.0, 29.0), abs=1e-3)
    absent = Finding("ich", "1386000", "SCT", "Intracranial hemorrhage", True, False, 0.1)
    assert key_image(absent, instances) is None


def test_a_radiograph_without_patient_geometry_gets_its_key_image() -> None:
    """A CR without Image Position/Orientation is placed as the loader placed it."""
    path = require_testdata("dicomdirtests/77654033/CR1/6154")
    volume = load_series([str(path)])
    header = pydicom.dcmread(path, stop_before_pixels=True)
    assert "ImagePositionPatient" not in header  # the case under test
    [instance] = [source_instance(header, str(path))]
    lo = volume.affine @ np.array([2, 3, 0, 1.0])
    hi = volume.affine @ np.array([9, 12, 0, 1.0])
    box = tuple(float(v) for v in (*np.minimum(lo, hi)[:3], *np.maximum(lo, hi)[:3]))
    finding = Finding("ptx", "36118008", "SCT", "Pneumothorax", True, True, 0.9, bbox_mm_lps=box)
    key = key_image(finding, [instance])
    assert key is not None
    assert key.sop_instance_uid == instance.sop_instance_uid
    assert key.box_px == pytest.approx((2.0, 3.0, 9.0, 12.0), abs=1e-3)
    assert key_image(finding, [instance, instance]) is None  # several unplaced planes: unknown
