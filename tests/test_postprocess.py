"""Postprocessing on hand-made outputs: volumes in mL, component filtering, boxes, key slice."""

from __future__ import annotations

import numpy as np
import pytest

from models.manifest import CodedConcept, FindingSpec, Postprocessing
from models.postprocess import activate, finding_of, pixel_area_mm2, voxel_volume_ml

SPEC = FindingSpec(
    name="blob",
    concept=CodedConcept(value="1386000", scheme="SCT", meaning="Intracranial hemorrhage"),
    output="logits",
    channel=0,
    derive=["presence", "probability", "bounding_box", "volume_ml", "area_mm2"],
    critical=True,
)
# RAS grid of 2 x 2 x 5 mm voxels: 20 mm³ = 0.02 mL per voxel, 4 mm² per in-plane face.
AFFINE = np.diag([2.0, 2.0, 5.0, 1.0])
LOGIT_IN, LOGIT_OUT = 6.0, -6.0


def _logits(shape: tuple[int, ...] = (20, 20, 10)) -> np.ndarray:
    return np.full((1, *shape), LOGIT_OUT, dtype=np.float32)


def test_grid_measures() -> None:
    assert voxel_volume_ml(AFFINE) == pytest.approx(0.02)
    assert pixel_area_mm2(AFFINE) == pytest.approx(4.0)
    flipped = np.diag([-2.0, -2.0, 5.0, 1.0])
    assert voxel_volume_ml(flipped) == pytest.approx(0.02)


def test_activations() -> None:
    assert activate(np.array([0.0]), "sigmoid")[0] == pytest.approx(0.5)
    assert np.isfinite(activate(np.array([1e4, -1e4]), "sigmoid")).all()
    soft = activate(np.array([[1.0, 2.0], [1.0, 0.0]]), "softmax")
    assert soft.sum(axis=0) == pytest.approx([1.0, 1.0])


def test_volume_in_ml_and_boxes() -> None:
    out = _logits()
    out[0, 4:8, 5:10, 2:5] = LOGIT_IN  # 4 x 5 x 3 = 60 voxels = 1.2 mL
    out[0, 4:6, 5:7, 3] = LOGIT_IN  # already inside
    rules = Postprocessing(activation="sigmoid", connected_components=True, min_volume_ml=0.1)
    finding = finding_of(out, SPEC, rules, AFFINE)
    assert finding.present
    assert finding.critical
    assert finding.volume_ml == pytest.approx(1.2)
    assert finding.bbox_voxel == (4, 5, 2, 7, 9, 4)
    assert finding.key_slice_bbox_voxel == (4, 5, 7, 9)
    assert finding.area_mm2 == pytest.approx(20 * 4.0)
    # LPS = RAS with x, y negated: voxel i=4..7 at 2 mm → RAS x 8..14 → LPS x -14..-8.
    assert finding.bbox_mm_lps == pytest.approx((-14.0, -18.0, 10.0, -8.0, -10.0, 20.0))
    assert finding.probability == pytest.approx(1.0 / (1.0 + np.exp(-LOGIT_IN)))


def test_key_slice_is_the_largest() -> None:
    out = _logits()
    out[0, 2:4, 2:4, 1] = LOGIT_IN  # 4 voxels on slice 1
    out[0, 2:6, 2:6, 2] = LOGIT_IN  # 16 voxels on slice 2
    rules = Postprocessing(activation="sigmoid", connected_components=True)
    finding = finding_of(out, SPEC, rules, AFFINE)
    assert finding.key_slice == 2
    assert finding.area_mm2 == pytest.approx(16 * 4.0)


def test_small_components_are_dropped() -> None:
    out = _logits()
    out[0, 1:6, 1:6, 1:5] = LOGIT_IN  # 100 voxels = 2.0 mL
    out[0, 15, 15, 8] = LOGIT_IN  # 1 voxel = 0.02 mL, far away
    rules = Postprocessing(activation="sigmoid", connected_components=True, min_volume_ml=0.5)
    finding = finding_of(out, SPEC, rules, AFFINE)
    assert len(finding.regions) == 1
    assert finding.volume_ml == pytest.approx(2.0)
    only_small = _logits()
    only_small[0, 15, 15, 8] = LOGIT_IN
    empty = finding_of(only_small, SPEC, rules, AFFINE)
    assert not empty.present
    assert empty.volume_ml == 0.0
    assert empty.bbox_voxel is None
    # The dropped blob still ranks the study for ROC analysis.
    assert empty.probability > 0.99


def test_two_components_are_two_regions() -> None:
    out = _logits()
    out[0, 1:3, 1:3, 1:3] = LOGIT_IN  # 8 voxels
    out[0, 10:14, 10:14, 5:7] = LOGIT_IN  # 32 voxels
    rules = Postprocessing(activation="sigmoid", connected_components=True)
    finding = finding_of(out, SPEC, rules, AFFINE)
    assert [r.volume_ml for r in finding.regions] == pytest.approx([0.64, 0.16])
    assert finding.volume_ml == pytest.approx(0.8)
    assert finding.bbox_voxel == (10, 10, 5, 13, 13, 6)
    merged = finding_of(out, SPEC, Postprocessing(activation="sigmoid"), AFFINE)
    assert len(merged.regions) == 1


def test_nothing_above_threshold() -> None:
    finding = finding_of(_logits(), SPEC, Postprocessing(activation="sigmoid"), AFFINE)
    assert not finding.present
    assert finding.probability < 0.01


def test_classifier_output() -> None:
    rules = Postprocessing(activation="sigmoid", presence_threshold=0.7)
    assert finding_of(np.array([2.0]), SPEC, rules, AFFINE).present  # p = 0.88
    low = finding_of(np.array([0.5]), SPEC, rules, AFFINE)  # p = 0.62
    assert not low.present
    assert low.volume_ml is None
    two_class = FindingSpec(**{**SPEC.model_dump(), "channel": 1})
    soft = finding_of(np.array([0.0, 3.0]), two_class, Postprocessing(activation="softmax"), AFFINE)
    assert soft.probability == pytest.approx(np.exp(3.0) / (1.0 + np.exp(3.0)))
