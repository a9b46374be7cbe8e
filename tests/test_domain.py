"""The input-domain guard: manifest domain, the check, output sanity, bundle fill, worklist."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from models.bundle_config import domain_from
from models.domain import (
    DomainCheck,
    OutOfDomainError,
    VolumeFacts,
    check_domain,
    check_outputs,
    input_is_unusable,
)
from models.manifest import Domain, Manifest, ManifestError, ValueRange, load_manifest
from models.postprocess import Finding
from models.registry import Registry
from models.synthetic import generate_study
from preprocessing.errors import (
    DuplicateSliceError,
    IncompleteSeriesError,
    InconsistentGeometryError,
    LoaderFault,
    MissingDecoderError,
    MissingSliceError,
    MixedOrientationError,
    UnreadableInstanceError,
    UnsupportedSeriesError,
)
from preprocessing.series import load_series
from preprocessing.volume import Volume
from router.result import AIResult, Algorithm, StudyIdentity
from router.worklist import AIStatus, Label, Worklist, WorklistEntry
from serving.service.applicability import show_unanswered
from serving.service.runtime import SeriesSource, _prepare_for

PACKAGES = Path(__file__).resolve().parents[1] / "models" / "packages"
BUNDLES = Path(__file__).resolve().parent / "fixtures" / "monai-bundles"


@pytest.fixture(scope="module")
def manifests() -> dict[str, Manifest]:
    registry = Registry(PACKAGES)
    names = ("ct-chest-nodule", "ich-ct-head", "cxr-pneumothorax")
    return {name: registry.get(name).manifest for name in names}


def ct_volume(
    *,
    shape: tuple[int, int, int] = (256, 256, 100),
    spacing: tuple[float, float, float] = (1.4, 1.4, 2.5),
    body_part: str | None = "CHEST",
    modality: str = "CT",
    offset: float = 0.0,
    thickness: float | None = None,
) -> Volume:
    """A chest-like volume: air around a soft-tissue body with lungs (HU, plus ``offset``)."""
    columns, rows, _slices = shape
    x = np.linspace(-1.0, 1.0, columns)[:, None, None]
    y = np.linspace(-1.0, 1.0, rows)[None, :, None]
    body = (x**2 + y**2) < 0.6
    lungs = ((np.abs(x) - 0.35) ** 2 + y**2) < 0.06
    array = np.full(shape, -1000.0, dtype=np.float32)
    array[np.broadcast_to(body, shape)] = 40.0
    array[np.broadcast_to(lungs, shape)] = -850.0
    array[: columns // 20, : rows // 20, :] = 1200.0  # a little bone, table
    metadata: dict[str, object] = {}
    if body_part is not None:
        metadata["BodyPartExamined"] = body_part
    if thickness is not None:
        metadata["SliceThickness"] = thickness
    return Volume(
        array=array + offset,
        affine=np.diag([*spacing, 1.0]),
        series_uid="1.2.3",
        study_uid="1.2",
        modality=modality,
        metadata=metadata,
    )


# ---- manifest -----------------------------------------------------------------------------------


def test_reference_packages_declare_a_domain(manifests: dict[str, Manifest]) -> None:
    for manifest in manifests.values():
        assert manifest.domain is not None
        assert manifest.domain.pixel_spacing_mm is not None
        assert manifest.domain.field_of_view_mm is not None
        assert manifest.domain.intensity is not None


def test_a_range_with_min_above_max_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="greater than max"):
        ValueRange(min=5.0, max=1.0)
    data = load_manifest(PACKAGES / "ct-chest-nodule" / "1").model_dump(mode="json")
    data["domain"]["slices"] = {"min": 100, "max": 10}
    path = tmp_path / "manifest.yaml"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ManifestError, match=r"domain\.slices"):
        load_manifest(path)


def test_an_unknown_domain_field_is_refused() -> None:
    with pytest.raises(ValueError, match="extra"):
        Domain.model_validate({"pixel_spacing": {"min": 1}})


def test_open_ranges_and_tolerance() -> None:
    assert ValueRange(max=5.0).contains(5.0000001)
    assert not ValueRange(max=5.0).contains(5.01)
    assert ValueRange(min=1.0).contains(1e9)
    assert ValueRange().describe() == "any"


# ---- the check on synthetic edge cases ----------------------------------------------------------


def test_an_in_domain_chest_volume_passes(manifests: dict[str, Manifest]) -> None:
    verdict = check_domain(ct_volume(), manifests["ct-chest-nodule"])
    assert verdict.applicable, verdict.reason


@pytest.mark.parametrize(
    ("volume", "check"),
    [
        (ct_volume(modality="MR"), DomainCheck.MODALITY),
        (ct_volume(body_part="HEAD"), DomainCheck.BODY_PART),
        (ct_volume(shape=(256, 256, 1), thickness=5.0), DomainCheck.SLICES),
        (ct_volume(shape=(16, 16, 100), spacing=(20.0, 20.0, 2.5)), DomainCheck.MATRIX),
        (ct_volume(spacing=(0.2, 0.2, 2.5)), DomainCheck.PIXEL_SPACING),
        (ct_volume(shape=(512, 512, 100), spacing=(0.42, 0.42, 2.5)), DomainCheck.FIELD_OF_VIEW),
        (ct_volume(thickness=10.0), DomainCheck.SLICE_THICKNESS),
        (ct_volume(shape=(256, 256, 40)), DomainCheck.Z_COVERAGE),
        (ct_volume(offset=1024.0), DomainCheck.INTENSITY),  # raw unsigned values, not HU
    ],
)
def test_out_of_domain_edge_cases(
    manifests: dict[str, Manifest], volume: Volume, check: DomainCheck
) -> None:
    verdict = check_domain(volume, manifests["ct-chest-nodule"])
    assert not verdict.applicable
    assert check.value in verdict.checks, verdict.reason
    assert verdict.reason
    assert verdict.to_dict()["failed_checks"] == list(verdict.checks)


def test_a_missing_body_part_is_a_warning_unless_required(
    manifests: dict[str, Manifest],
) -> None:
    manifest = manifests["ct-chest-nodule"]
    verdict = check_domain(ct_volume(body_part=None), manifest)
    assert verdict.applicable
    assert [w.check for w in verdict.warnings] == [DomainCheck.BODY_PART]
    assert manifest.domain is not None
    strict = manifest.model_copy(
        update={"domain": manifest.domain.model_copy(update={"require_body_part": True})}
    )
    assert check_domain(ct_volume(body_part=None), strict).checks == ("body_part",)


def test_body_part_synonyms_are_accepted(manifests: dict[str, Manifest]) -> None:
    assert check_domain(ct_volume(body_part="thorax"), manifests["ct-chest-nodule"]).applicable


def test_padding_outside_the_scan_circle_is_ignored(manifests: dict[str, Manifest]) -> None:
    volume = ct_volume()
    volume.array[:, :40, :] = -3024.0  # reconstruction-circle padding
    assert check_domain(volume, manifests["ct-chest-nodule"]).applicable


def test_a_tibia_radiograph_is_not_a_chest(manifests: dict[str, Manifest]) -> None:
    columns = rows = 2000
    volume = Volume(
        array=np.full((columns, rows, 1), 2000.0, dtype=np.float32),
        affine=np.diag([0.2, 0.2, 1.0, 1.0]),
        series_uid="1.2.3",
        study_uid="1.2",
        modality="CR",
        metadata={"BodyPartExamined": "LEG"},
    )
    verdict = check_domain(volume, manifests["cxr-pneumothorax"])
    assert verdict.checks == ("body_part",)


@pytest.mark.parametrize(
    ("kind", "model", "options"),
    [
        ("ct-head", "ich-ct-head", {"matrix": 128}),
        ("ct-head", "ich-ct-head", {"matrix": 256, "slices": 33}),
        ("ct-chest", "ct-chest-nodule", {"matrix": 128}),
        ("ct-chest", "ct-chest-nodule", {"matrix": 192}),  # the demo's matrix
        ("cr-chest", "cxr-pneumothorax", {"matrix": 128}),
        ("dx-chest", "cxr-pneumothorax", {"matrix": 512}),
    ],
)
def test_the_synthetic_phantoms_are_in_domain(
    manifests: dict[str, Manifest], tmp_path: Path, kind: str, model: str, options: Any
) -> None:
    study = generate_study(kind, tmp_path, seed=3, **options)
    verdict = check_domain(load_series(study.files), manifests[model])
    assert verdict.applicable, verdict.reason
    assert not verdict.warnings


# ---- real files ---------------------------------------------------------------------------------


def test_ct_small_is_not_a_chest_ct(manifests: dict[str, Manifest]) -> None:
    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    volume = load_series([path])
    verdict = check_domain(volume, manifests["ct-chest-nodule"])
    assert not verdict.applicable
    assert {"slices", "z_coverage", "field_of_view"} <= set(verdict.checks)
    assert not check_domain(volume, manifests["ich-ct-head"]).applicable


def test_a_real_tibia_radiograph_is_not_a_chest_radiograph(
    manifests: dict[str, Manifest],
) -> None:
    path = get_testdata_file("RG3_UNCR.dcm")  # pydicom-data: CR, distal tibia
    assert path is not None
    volume = load_series([path])
    facts = VolumeFacts.of(volume)
    assert (facts.modality, facts.body_part) == ("CR", "EXTREMITY")
    verdict = check_domain(volume, manifests["cxr-pneumothorax"])
    assert "body_part" in verdict.checks
    assert not verdict.applicable


# ---- output sanity ------------------------------------------------------------------------------


def _finding(probability: float, *, critical: bool = True) -> Finding:
    return Finding(
        name="pulmonary-nodule",
        concept_value="786838002",
        concept_scheme="SCT",
        concept_meaning="Pulmonary nodule",
        critical=critical,
        present=probability > 0.5,
        probability=probability,
    )


def test_a_saturated_map_is_unreliable(manifests: dict[str, Manifest]) -> None:
    manifest = manifests["ct-chest-nodule"]
    logits = np.full((1, 32, 32, 24), 15.0, dtype=np.float32)  # p > 0.9999 everywhere
    reason = check_outputs([_finding(1.0)], {"heatmap": logits}, manifest)
    assert reason is not None
    assert "saturated" in reason


def test_a_finding_over_much_of_the_volume_is_unreliable(manifests: dict[str, Manifest]) -> None:
    manifest = manifests["ct-chest-nodule"]
    logits = np.full((1, 32, 32, 24), -8.0, dtype=np.float32)
    logits[:, :, :16, :] = 3.0  # half the volume "nodule", not saturated
    reason = check_outputs([_finding(0.95)], {"heatmap": logits}, manifest)
    assert reason is not None
    assert "covers 50%" in reason


def test_a_small_confident_nodule_is_plausible(manifests: dict[str, Manifest]) -> None:
    manifest = manifests["ct-chest-nodule"]
    logits = np.full((1, 32, 32, 24), -12.0, dtype=np.float32)
    logits[:, 10:13, 10:13, 10:13] = 12.0
    assert check_outputs([_finding(0.99999)], {"heatmap": logits}, manifest) is None


def test_a_saturated_probability_on_an_atypical_input_is_unreliable(
    manifests: dict[str, Manifest],
) -> None:
    manifest = manifests["cxr-pneumothorax"]
    logits = np.array([12.0], dtype=np.float32)
    radiograph = Volume(
        array=np.full((1024, 1024, 1), 2000.0, dtype=np.float32),
        affine=np.diag([0.4, 0.4, 1.0, 1.0]),
        series_uid="1.2.3",
        study_uid="1.2",
        modality="CR",
    )  # no Body Part Examined: in domain, with a warning
    atypical = check_domain(radiograph, manifest)
    assert atypical.applicable
    assert atypical.warnings
    assert check_outputs([_finding(0.99999)], {"logits": logits}, manifest, None) is None
    assert check_outputs([_finding(0.97)], {"logits": logits}, manifest, atypical) is None
    reason = check_outputs([_finding(0.99999)], {"logits": logits}, manifest, atypical)
    assert reason is not None
    assert "atypical" in reason
    # a confident "absent" is the common normal study at a site without Body Part Examined
    normal = np.array([-12.0], dtype=np.float32)
    assert check_outputs([_finding(0.00001)], {"logits": normal}, manifest, atypical) is None


def test_an_unreliable_result_is_never_critical() -> None:
    ai = AIResult(
        task_id="t",
        study=StudyIdentity("p", "n", "1.2", "A1"),
        source_instances=(),
        algorithm=Algorithm("m", "1", "x", "2.25.1"),
        findings=(_finding(0.99999),),
        completed_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    assert ai.critical_positive
    flagged = AIResult(**{**ai.__dict__, "unreliable": "saturated"})
    assert not flagged.critical_positive


# ---- worklist -----------------------------------------------------------------------------------


def test_worklist_shows_not_applicable_and_unreliable_without_red_flag() -> None:
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    worklist = Worklist(clock=lambda: now)
    for uid in ("1.1", "1.2", "1.3"):
        worklist.add(WorklistEntry(uid, "A" + uid, now))
    worklist.update_ai("1.1", AIStatus.NOT_APPLICABLE, False, "AI not applicable: slices 1")
    worklist.update_ai("1.2", AIStatus.UNRELIABLE, False, "AI result unreliable: saturated")
    worklist.update_ai("1.3", AIStatus.NOT_APPLICABLE)  # no rule asked: no label, as before
    rows = {row.study_uid: row for row in worklist.ai_order()}
    assert rows["1.1"].label is Label.NOT_APPLICABLE
    assert rows["1.1"].to_dict()["ai_note"] == "AI not applicable: slices 1"
    assert rows["1.2"].label is Label.UNRELIABLE
    assert rows["1.3"].label is Label.NONE
    assert "ai_note" not in rows["1.3"].to_dict()
    assert not any(row.red_flag for row in rows.values())


# ---- bundle import ------------------------------------------------------------------------------


def test_a_bundle_fills_only_the_intensity_it_states() -> None:
    meta = json.loads(
        (BUNDLES / "spleen_ct_segmentation" / "configs" / "metadata.json").read_text()
    )
    steps = [{"transform": "ScaleIntensityRange", "a_min": -57, "a_max": 164, "b_min": 0.0}]
    notes: list[str] = []
    domain = domain_from(meta, steps, notes)
    assert domain is not None
    assert domain.intensity is not None
    assert domain.intensity.unit == "HU"
    bounds = {(b.percentile, b.range.min, b.range.max) for b in domain.intensity.percentiles}
    assert bounds == {(1.0, None, -200.0), (99.0, -57.0, None), (1.0, None, 164.0)}
    assert domain.pixel_spacing_mm is None
    assert domain.field_of_view_mm is None
    assert any("not stated" in note for note in notes)
    assert domain_from({}, [], []) is None


# ---- a series the loader refuses is "not applicable", statlane's own faults stay failures ----


@pytest.mark.parametrize(
    ("error", "unusable"),
    [
        (MixedOrientationError("orientation differs"), True),
        (DuplicateSliceError("two slices at 12.0 mm"), True),
        (MissingSliceError("gap of 202.5 mm"), True),
        (InconsistentGeometryError("rows 300 and 484"), True),
        (UnsupportedSeriesError("instance has no PixelData (not an image)"), True),
        (UnreadableInstanceError("PixelSpacing (0.0, 0.0) is not positive"), True),
        (
            MissingDecoderError(
                "no plugin", transfer_syntax="1.2.840.10008.1.2.4.110", install="x"
            ),
            False,
        ),
        (IncompleteSeriesError("3 of 32 slices"), False),
        (RuntimeError("a bug"), False),
    ],
)
def test_only_the_series_own_faults_make_it_not_applicable(
    error: Exception, unusable: bool
) -> None:
    assert input_is_unusable(error) is unusable


def test_a_series_that_cannot_be_one_volume_is_not_applicable_with_the_loaders_reason(
    tmp_path: Path,
) -> None:
    study = generate_study("ct-chest", tmp_path, seed=3, matrix=128)
    files = [str(p) for p in study.files]
    twisted = pydicom.dcmread(files[5])
    twisted.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    twisted.save_as(files[5])
    manifest = Registry.default().get("ct-chest-nodule").manifest
    prepare = _prepare_for(manifest)
    source = SeriesSource(files)
    with pytest.raises(OutOfDomainError) as raised:
        prepare(source)
    verdict = raised.value.verdict
    assert not verdict.applicable
    assert verdict.checks == (DomainCheck.SERIES,)
    assert "series cannot be made into a volume" in verdict.reason
    assert "orientation" in verdict.reason
    assert source.domain is verdict


def test_the_loaders_own_faults_and_io_errors_stay_failures() -> None:
    def caused(error: Exception, cause: BaseException) -> Exception:
        error.__cause__ = cause
        return error

    assert not input_is_unusable(LoaderFault("unexpected AttributeError while loading"))
    gone = caused(UnreadableInstanceError("not readable"), FileNotFoundError("spool"))
    assert not input_is_unusable(gone)
    exhausted = caused(UnreadableInstanceError("cannot decode"), MemoryError())
    assert not input_is_unusable(caused(DuplicateSliceError("x"), exhausted))  # deep cause
    malformed = caused(UnreadableInstanceError("not readable"), ValueError("bad VR"))
    assert input_is_unusable(malformed)  # the file's own fault


def test_a_model_that_did_not_answer_never_clears_another_models_red_flag() -> None:
    worklist = Worklist()
    worklist.add(WorklistEntry("1.1", "A1", datetime(2026, 12, 8, tzinfo=UTC)))
    worklist.update_ai("1.1", AIStatus.DONE, True, "AI: critical finding")
    show_unanswered(worklist, "1.1", AIStatus.NOT_APPLICABLE, "AI not applicable: slices 1")
    show_unanswered(worklist, "1.1", AIStatus.UNRELIABLE, "AI result unreliable: saturated")
    entry = worklist.entry("1.1")
    assert entry is not None
    assert entry.ai_status is AIStatus.DONE
    assert entry.critical_positive
    worklist.add(WorklistEntry("1.2", "A2", datetime(2026, 12, 8, tzinfo=UTC)))
    show_unanswered(worklist, "1.2", AIStatus.NOT_APPLICABLE, "AI not applicable: slices 1")
    second = worklist.entry("1.2")
    assert second is not None
    assert second.ai_status is AIStatus.NOT_APPLICABLE
