"""Synthetic studies: determinism, geometry, tissue HU, findings, organ labels, faults,
compression, CLI."""

from __future__ import annotations

import argparse
import json
import math
import re
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.errors import InvalidDicomError

from models.synthetic import (
    ORGAN_LABELS,
    Compression,
    Fault,
    StudyKind,
    SyntheticStudy,
    SynthSpecError,
    generate_study,
    load_label_map,
)
from preprocessing import Volume, load_study, scan_folder
from serving.commands import synth as synth_command


def read_all(study: SyntheticStudy) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in study.files]


def hu(ds: pydicom.Dataset) -> np.ndarray:
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def truth(study: SyntheticStudy) -> dict[str, Any]:
    assert study.ground_truth is not None
    loaded: dict[str, Any] = json.loads(study.ground_truth.read_text())
    return loaded


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("synth")


@pytest.fixture(scope="module")
def head_ich(out: Path) -> SyntheticStudy:
    return generate_study("ct-head", out, seed=7, finding=True, matrix=64)


@pytest.fixture(scope="module")
def chest_nodule(out: Path) -> SyntheticStudy:
    return generate_study(StudyKind.CT_CHEST, out, seed=7, finding=True, matrix=64)


@pytest.fixture(scope="module")
def abdomen(out: Path) -> SyntheticStudy:
    """100 x 2.5 mm from the lung bases down: liver and spleen wholly inside the series."""
    return generate_study(StudyKind.CT_ABDOMEN, out, seed=7, slices=100, matrix=96)


@pytest.fixture(scope="module")
def abdomen_volume(abdomen: SyntheticStudy) -> Volume:
    (volume,) = load_study(scan_folder(abdomen.study_dir)).values()
    return volume


# --- determinism and identity -------------------------------------------------------------


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    a = generate_study("ct-head", tmp_path / "a", seed=3, finding=True, matrix=64)
    b = generate_study("ct-head", tmp_path / "b", seed=3, finding=True, matrix=64)
    assert [p.name for p in a.files] == [p.name for p in b.files]
    for pa, pb in zip(a.files, b.files, strict=True):
        assert pa.read_bytes() == pb.read_bytes()
    assert a.ground_truth is not None
    assert b.ground_truth is not None
    assert a.ground_truth.read_bytes() == b.ground_truth.read_bytes()
    assert a.mask is not None
    assert b.mask is not None
    assert a.mask.read_bytes() == b.mask.read_bytes()


def test_different_seed_gives_different_uids(tmp_path: Path) -> None:
    a = generate_study("cr-chest", tmp_path, seed=1, matrix=64)
    b = generate_study("cr-chest", tmp_path, seed=2, matrix=64)
    assert a.study_uid != b.study_uid
    assert a.series_uid != b.series_uid
    assert a.accession_number != b.accession_number
    da, db = pydicom.dcmread(a.files[0]), pydicom.dcmread(b.files[0])
    assert da.SOPInstanceUID != db.SOPInstanceUID


def test_layout_and_identity_attributes(head_ich: SyntheticStudy) -> None:
    assert head_ich.study_dir.name == head_ich.accession_number
    assert [p.name for p in head_ich.files] == [f"IM_{n:04d}.dcm" for n in range(1, 33)]
    assert head_ich.ground_truth == head_ich.study_dir / "ground_truth.json"
    ds = pydicom.dcmread(head_ich.files[0])
    assert ds.StudyInstanceUID == head_ich.study_uid
    assert ds.SeriesInstanceUID == head_ich.series_uid
    assert ds.AccessionNumber == head_ich.accession_number
    assert re.fullmatch(r"[A-Z]+\^[A-Z]+", str(ds.PatientName))
    assert ds.PatientSex in ("F", "M")
    assert len(ds.PatientBirthDate) == 8
    assert ds.BodyPartExamined == "HEAD"
    assert ds.StudyDescription == "CT HEAD WO CONTRAST"
    code = ds.ProcedureCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator) == ("30799-1", "LN")
    request = ds.RequestAttributesSequence[0]
    assert request.RequestedProcedureID
    assert request.ScheduledProcedureStepID
    for p in head_ich.files:
        assert str(ds.PatientName).split("^")[0] not in p.name


# --- geometry and tissue --------------------------------------------------------------------


def test_ct_head_geometry(head_ich: SyntheticStudy) -> None:
    slices = read_all(head_ich)
    assert len(slices) == 32
    assert [int(d.InstanceNumber) for d in slices] == list(range(1, 33))
    assert all((d.Rows, d.Columns) == (64, 64) for d in slices)
    assert [float(v) for v in slices[0].PixelSpacing] == [3.75, 3.75]
    assert [float(v) for v in slices[0].ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    z = np.array([float(d.ImagePositionPatient[2]) for d in slices])
    assert np.allclose(np.diff(z), 5.0)
    assert float(slices[0].SliceThickness) == 5.0
    assert (slices[0].RescaleSlope, slices[0].RescaleIntercept) == (1, -1024)
    assert slices[0].PixelRepresentation == 0
    assert slices[0].BitsStored == 12


def test_ct_head_tissue_hu(out: Path) -> None:
    study = generate_study("ct-head", out, seed=11, matrix=64)
    mid = hu(pydicom.dcmread(study.files[16]))  # z = +12.5 mm
    # Air.
    assert mid[0, 0] < -900
    assert mid[-1, -1] < -900
    assert mid[32, :].max() > 700  # skull on the central row
    brain = mid[40:43, 41:44]  # x = +37 mm, y = +30 mm: clear of the ventricles
    assert 20.0 < brain.mean() < 50.0


def test_ct_chest_geometry_and_tissue(chest_nodule: SyntheticStudy) -> None:
    slices = read_all(chest_nodule)
    assert len(slices) == 100
    ds = slices[50]
    assert ds.BodyPartExamined == "CHEST"
    assert ds.ProcedureCodeSequence[0].CodeValue == "29252-4"
    assert math.isclose(float(ds.PixelSpacing[0]), 350.0 / 64)
    z = np.array([float(d.ImagePositionPatient[2]) for d in slices])
    assert np.allclose(np.diff(z), 2.5)
    image = hu(ds)
    assert image[0, 0] < -900
    lung = image[32:35, 17:20]  # right lung, x ~ -75 mm
    assert lung.mean() < -700
    assert image.max() > 700  # spine / ribs


def test_default_ct_head_is_512_and_fast(tmp_path: Path) -> None:
    start = time.perf_counter()
    study = generate_study("ct-head", tmp_path, seed=1, finding=True)
    elapsed = time.perf_counter() - start
    ds = pydicom.dcmread(study.files[0])
    assert (ds.Rows, ds.Columns, len(study.files)) == (512, 512, 32)
    assert float(ds.PixelSpacing[0]) == 0.46875
    assert elapsed < 10.0, f"512x512x32 CT head took {elapsed:.1f} s"


# --- CT abdomen: organ label map ---------------------------------------------------------


def test_ct_abdomen_is_deterministic(tmp_path: Path) -> None:
    a = generate_study("ct-abdomen", tmp_path / "a", seed=3, slices=40, matrix=64)
    b = generate_study("ct-abdomen", tmp_path / "b", seed=3, slices=40, matrix=64)
    for pa, pb in zip(a.files, b.files, strict=True):
        assert pa.read_bytes() == pb.read_bytes()
    assert a.ground_truth is not None
    assert b.ground_truth is not None
    assert a.ground_truth.read_bytes() == b.ground_truth.read_bytes()
    assert a.labels is not None
    assert b.labels is not None
    assert a.labels.read_bytes() == b.labels.read_bytes()
    c = generate_study("ct-abdomen", tmp_path / "c", seed=4, slices=40, matrix=64)
    assert c.labels is not None
    assert c.labels.read_bytes() != a.labels.read_bytes()


def test_ct_abdomen_geometry_and_identity(abdomen: SyntheticStudy) -> None:
    slices = read_all(abdomen)
    assert len(slices) == 100
    assert abdomen.mask is None
    ds = slices[50]
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert ds.Modality == "CT"
    assert ds.BodyPartExamined == "ABDOMEN"
    assert ds.StudyDescription == "CT ABDOMEN WO CONTRAST"
    assert ds.ProcedureCodeSequence[0].CodeValue == "36424-0"
    assert math.isclose(float(ds.PixelSpacing[0]), 380.0 / 96)
    z = np.array([float(d.ImagePositionPatient[2]) for d in slices])
    assert np.allclose(np.diff(z), 2.5)
    assert z[-1] == 115.0  # top slice in the lung bases
    assert float(ds.SliceThickness) == 2.5


def test_ct_abdomen_label_map_matches_loaded_volume(
    abdomen: SyntheticStudy, abdomen_volume: Volume
) -> None:
    labels, affine = load_label_map(abdomen.study_dir)
    assert labels.dtype == np.uint8
    assert labels.shape == abdomen_volume.shape == (96, 96, 100)
    assert np.allclose(affine, abdomen_volume.affine, atol=1e-6)
    assert set(np.unique(labels).tolist()) == {0, *ORGAN_LABELS.values()}
    assert ORGAN_LABELS == {"spleen": 1, "liver": 2}
    gt = truth(abdomen)
    assert gt["label_map"]["axes"] == ["column", "row", "slice"]
    assert gt["label_map"]["file"] == "labels.npy"
    assert abdomen.labels == abdomen.study_dir / "labels.npy"
    for name, value in ORGAN_LABELS.items():
        assert gt["organs"][name]["voxel_count"] == int((labels == value).sum())


@pytest.mark.parametrize(("organ", "low", "high"), [("spleen", 45.0, 50.0), ("liver", 55.0, 65.0)])
def test_ct_abdomen_organ_hu(
    abdomen: SyntheticStudy, abdomen_volume: Volume, organ: str, low: float, high: float
) -> None:
    labels, _ = load_label_map(abdomen.study_dir)
    inside = abdomen_volume.array[labels == ORGAN_LABELS[organ]]
    assert low < float(inside.mean()) < high  # aligned: the label sits on the organ's tissue
    lo, hi = np.percentile(inside, [0.5, 99.5])
    # Noise only, no other tissue inside the label.
    assert low - 30.0 < lo
    assert hi < high + 30.0
    assert truth(abdomen)["organs"][organ]["nominal_hu"] == pytest.approx(inside.mean(), abs=2)


def test_ct_abdomen_organ_volumes_and_sides(abdomen: SyntheticStudy) -> None:
    gt = truth(abdomen)
    assert gt["finding_present"] is False
    assert gt["finding_type"] is None
    voxel_ml = gt["geometry"]["voxel_volume_ml"]
    spleen, liver = gt["organs"]["spleen"], gt["organs"]["liver"]
    assert spleen["complete"]
    assert liver["complete"]
    assert 100.0 <= spleen["volume_ml"] <= 300.0
    assert 1000.0 <= liver["volume_ml"] <= 2000.0
    for organ in (spleen, liver):
        assert organ["volume_ml"] == pytest.approx(organ["voxel_count"] * voxel_ml, rel=1e-12)
    # Left, posterior.
    assert spleen["centre_mm"][0] > 40.0
    assert spleen["centre_mm"][1] > 20.0
    assert liver["centre_mm"][0] < -20.0  # patient's right: the left of the displayed image
    labels, _ = load_label_map(abdomen.study_dir)
    spleen_column, liver_column = (np.nonzero(labels == v)[0].mean() for v in (1, 2))
    assert spleen_column > labels.shape[0] / 2 > liver_column  # columns run to patient's left


def test_ct_abdomen_other_tissue(abdomen_volume: Volume) -> None:
    def at(x: float, y: float, z: float) -> float:
        ijk = np.linalg.solve(abdomen_volume.affine, [x, y, z, 1.0])[:3]
        i, j, k = (int(v) for v in np.rint(ijk))
        return float(abdomen_volume.array[i - 1 : i + 2, j - 1 : j + 2, k].mean())

    z = 0.0
    assert at(0.0, -180.0, z) < -900.0  # air in front of the body
    assert -130.0 < at(0.0, -116.0, z) < -70.0  # subcutaneous fat
    assert 25.0 < at(0.0, -104.0, z) < 55.0  # abdominal wall muscle
    assert at(0.0, 58.0, 75.0) > 300.0  # vertebral body (bone, between two discs)
    assert 30.0 < at(16.0, 22.0, z) < 60.0  # aorta


def test_ct_abdomen_partial_coverage(tmp_path: Path) -> None:
    study = generate_study("ct-abdomen", tmp_path, seed=5, slices=40, matrix=64)
    (volume,) = load_study(scan_folder(study.study_dir)).values()
    labels, _ = load_label_map(study.study_dir)
    assert labels.shape == volume.shape == (64, 64, 40)
    liver = truth(study)["organs"]["liver"]
    assert liver["voxel_count"] > 0
    assert not liver["complete"]  # 100 mm: the liver runs on


def test_ct_abdomen_with_series_fault(tmp_path: Path) -> None:
    study = generate_study(
        "ct-abdomen", tmp_path, seed=5, slices=40, matrix=64, fault="missing-slice"
    )
    assert len(study.files) == 39
    labels, _ = load_label_map(study.study_dir)
    assert labels.shape == (64, 64, 40)  # the source grid, as documented


def test_label_map_only_for_ct_abdomen(head_ich: SyntheticStudy) -> None:
    assert head_ich.labels is None
    with pytest.raises(FileNotFoundError):
        load_label_map(head_ich.study_dir)


def test_default_ct_abdomen_is_512_and_fast(tmp_path: Path) -> None:
    start = time.perf_counter()
    study = generate_study("ct-abdomen", tmp_path, seed=1)
    elapsed = time.perf_counter() - start
    ds = pydicom.dcmread(study.files[0])
    assert (ds.Rows, ds.Columns, len(study.files)) == (512, 512, 100)
    assert float(ds.PixelSpacing[0]) == 0.7421875
    assert float(ds.SliceThickness) == 2.5
    assert elapsed < 15.0, f"512x512x100 CT abdomen took {elapsed:.1f} s"


# --- findings -------------------------------------------------------------------------------


def test_ich_volume_matches_mask(head_ich: SyntheticStudy) -> None:
    gt = truth(head_ich)
    assert gt["finding_present"]
    assert gt["finding_type"] == "intracranial-hemorrhage"
    assert head_ich.mask is not None
    mask = np.load(head_ich.mask)
    assert mask.dtype == np.uint8
    assert mask.shape == (64, 64, 32)  # [column, row, slice]
    ds = pydicom.dcmread(head_ich.files[0])
    dx, dy = (float(v) for v in ds.PixelSpacing)
    voxel_ml = dx * dy * 5.0 / 1000.0
    assert gt["volume_ml"] == pytest.approx(int(mask.sum()) * voxel_ml, rel=1e-12)
    assert gt["voxel_count"] == int(mask.sum()) > 0
    volume = np.stack([hu(d) for d in read_all(head_ich)], axis=-1).transpose(1, 0, 2)
    assert volume[mask == 1].mean() > 55.0  # hyperdense blood
    assert 20.0 < volume[(volume > 20) & (volume < 50) & (mask == 0)].mean() < 50.0
    key = gt["key_slice"]
    c0, r0, c1, r1 = key["bbox_px"]
    assert mask[c0 : c1 + 1, r0 : r1 + 1, key["slice_index"]].sum() == key["voxels"]
    assert len(gt["centre_mm"]) == 3
    assert gt["seed"] == 7


def test_no_finding_means_no_mask(out: Path) -> None:
    study = generate_study("ct-head", out, seed=8, matrix=64)
    assert study.mask is None
    gt = truth(study)
    assert gt["finding_present"] is False
    assert gt["finding_type"] is None


def test_nodule_in_lung(chest_nodule: SyntheticStudy) -> None:
    gt = truth(chest_nodule)
    assert gt["finding_type"] == "lung-nodule"
    assert 6.0 <= gt["diameter_mm"] <= 20.0
    assert chest_nodule.mask is not None
    mask = np.load(chest_nodule.mask)
    assert mask.shape == (64, 64, 100)
    assert mask.any()
    volume = np.stack([hu(d) for d in read_all(chest_nodule)], axis=-1).transpose(1, 0, 2)
    assert volume[mask == 1].mean() > -100.0


@pytest.mark.parametrize("kind", ["cr-chest", "dx-chest"])
def test_radiograph_with_pneumothorax(out: Path, kind: str) -> None:
    study = generate_study(kind, out, seed=4, finding=True, matrix=256, priority="stat")
    ds = pydicom.dcmread(study.files[0])
    assert ds.Modality == kind[:2].upper()
    assert (ds.Rows, ds.Columns) == (256, 256)
    assert ds.BodyPartExamined == "CHEST"
    assert ds.StudyDescription == "XR CHEST 1 VIEW"
    gt = truth(study)
    assert gt["finding_type"] == "pneumothorax"
    assert gt["priority"] == "STAT"
    assert study.mask is not None
    mask = np.load(study.mask).T.astype(bool)  # back to [row, column]
    pixels = ds.pixel_array.astype(np.float64)
    assert mask.any()
    assert pixels[mask].mean() < pixels[mask[:, ::-1]].mean()  # darker than the other lung


def test_radiograph_default_matrix(out: Path) -> None:
    study = generate_study("dx-chest", out, seed=5)
    ds = pydicom.dcmread(study.files[0])
    assert (ds.Rows, ds.Columns) == (1024, 1024)
    assert ds.PresentationIntentType == "FOR PRESENTATION"


def test_gantry_tilt(out: Path) -> None:
    study = generate_study("ct-head", out, seed=2, gantry_tilt_deg=20.0, finding=True, matrix=64)
    slices = read_all(study)
    assert float(slices[0].GantryDetectorTilt) == 20.0
    tilt = math.radians(20.0)
    iop = np.array([float(v) for v in slices[0].ImageOrientationPatient])
    assert np.allclose(iop, [1, 0, 0, 0, math.cos(tilt), math.sin(tilt)])
    ipp = np.array([[float(v) for v in d.ImagePositionPatient] for d in slices])
    step = np.diff(ipp, axis=0)
    assert np.allclose(step, [0.0, 0.0, 5.0])  # the table moves along z ...
    normal = np.cross(iop[:3], iop[3:])
    assert abs(np.dot(step[0] / 5.0, normal)) < 0.99  # ... not along the slice normal
    gt = truth(study)
    assert study.mask is not None
    mask = np.load(study.mask)
    voxel_ml = 3.75 * 3.75 * 5.0 * math.cos(tilt) / 1000.0  # parallelepiped voxels
    assert gt["volume_ml"] == pytest.approx(int(mask.sum()) * voxel_ml, rel=1e-12)
    volume = np.stack([hu(d) for d in slices], axis=-1).transpose(1, 0, 2)
    assert volume[mask == 1].mean() > 55.0


# --- faults ---------------------------------------------------------------------------------


def _fault(out: Path, fault: Fault | str) -> SyntheticStudy:
    return generate_study("ct-head", out, seed=9, fault=fault, matrix=64)


def test_missing_slice(out: Path) -> None:
    study = _fault(out, "missing-slice")
    assert len(study.files) == 31
    z = np.array([float(d.ImagePositionPatient[2]) for d in read_all(study)])
    assert sorted(np.round(np.diff(z), 3).tolist()).count(10.0) == 1
    assert truth(study)["fault"]["type"] == "missing-slice"


def test_duplicate_slice(out: Path) -> None:
    slices = read_all(_fault(out, Fault.DUPLICATE_SLICE))
    assert len(slices) == 33
    positions = [tuple(d.ImagePositionPatient) for d in slices]
    dup = [p for p in set(positions) if positions.count(p) == 2]
    assert len(dup) == 1
    a, b = (d for d in slices if tuple(d.ImagePositionPatient) == dup[0])
    assert a.SOPInstanceUID != b.SOPInstanceUID
    assert np.array_equal(a.pixel_array, b.pixel_array)
    assert len({d.SOPInstanceUID for d in slices}) == 33


def test_mixed_orientation(out: Path) -> None:
    slices = read_all(_fault(out, "mixed-orientation"))
    assert len({tuple(float(v) for v in d.ImageOrientationPatient) for d in slices}) == 2


def test_two_patients(out: Path) -> None:
    slices = read_all(_fault(out, "two-patients"))
    assert len({d.PatientID for d in slices}) == 2
    assert len({str(d.PatientName) for d in slices}) == 2
    assert len({d.StudyInstanceUID for d in slices}) == 1


def test_inconsistent_geometry(out: Path) -> None:
    slices = read_all(_fault(out, "inconsistent-geometry"))
    assert {(d.Rows, d.Columns) for d in slices} == {(64, 64), (32, 32)}
    for d in slices:
        assert d.pixel_array.shape == (d.Rows, d.Columns)


@pytest.mark.parametrize("compression", ["none", "jpeg-ls"])
def test_truncated_file(out: Path, compression: str) -> None:
    study = generate_study(
        "ct-head", out, seed=9, fault="truncated-file", compression=compression, matrix=64
    )
    bad = study.study_dir / truth(study)["fault"]["file"]
    assert bad in study.files
    assert len(study.files) == 32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the missing delimiter first
        with pytest.raises((ValueError, AttributeError)):
            pydicom.dcmread(bad).pixel_array  # noqa: B018
    good = next(p for p in study.files if p != bad)
    assert pydicom.dcmread(good).pixel_array.shape == (64, 64)


def test_non_dicom_file(out: Path) -> None:
    study = _fault(out, "non-dicom-file")
    assert study.files[-1].name == "IM_9999.dcm"
    assert len(study.files) == 33
    with pytest.raises(InvalidDicomError):
        pydicom.dcmread(study.files[-1])


def test_series_faults_rejected_for_radiographs(out: Path) -> None:
    with pytest.raises(SynthSpecError):
        generate_study("dx-chest", out, fault="missing-slice", matrix=64)
    study = generate_study("dx-chest", out, fault="non-dicom-file", matrix=64)
    assert len(study.files) == 2


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "ct-head", "slices": 31},
        {"kind": "ct-head", "slice_thickness_mm": 3.0},
        {"kind": "ct-chest", "slices": 99},
        {"kind": "ct-chest", "gantry_tilt_deg": 10.0},
        {"kind": "ct-abdomen", "finding": True},
        {"kind": "ct-abdomen", "slices": 15},
        {"kind": "ct-abdomen", "slices": 300},
        {"kind": "ct-abdomen", "slice_thickness_mm": 5.0},
        {"kind": "ct-abdomen", "gantry_tilt_deg": 10.0},
        {"kind": "ct-head", "priority": "URGENT"},
        {"kind": "mr-knee"},
        {"kind": "ct-head", "compression": "jpeg-lossy"},
    ],
)
def test_impossible_requests_are_rejected(out: Path, kwargs: dict[str, Any]) -> None:
    with pytest.raises(SynthSpecError):
        generate_study(out_dir=out, **{"matrix": 64, **kwargs})


# --- compression ----------------------------------------------------------------------------


@pytest.mark.parametrize("compression", [c for c in Compression if c is not Compression.NONE])
@pytest.mark.parametrize("kind", ["ct-head", "dx-chest"])
def test_lossless_compression_round_trips(out: Path, compression: Compression, kind: str) -> None:
    plain = generate_study(kind, out, seed=12, finding=True, matrix=64)
    packed = generate_study(kind, out, seed=12, finding=True, compression=compression, matrix=64)
    assert packed.compression is compression
    for p, q in zip(plain.files, packed.files, strict=True):
        a, b = pydicom.dcmread(p), pydicom.dcmread(q)
        assert b.file_meta.TransferSyntaxUID.is_compressed
        assert np.array_equal(a.pixel_array, b.pixel_array)
        assert a.SOPInstanceUID != b.SOPInstanceUID  # a different (synthetic) study
    assert packed.mask is not None
    assert plain.mask is not None
    assert np.array_equal(np.load(packed.mask), np.load(plain.mask))


# --- CLI ------------------------------------------------------------------------------------


def test_cli_writes_a_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    synth_command.add_parser(parser.add_subparsers())
    args = parser.parse_args(
        ["synth", "--out", str(tmp_path), "--kind", "cr-chest,dx-chest", "--kind", "ct-head",
         "--count", "2", "--matrix", "64", "--seed", "5", "--finding-rate", "1"]
    )  # fmt: skip
    assert args.func(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 6
    folders = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert len(folders) == 6
    for folder in folders:
        gt = json.loads((folder / "ground_truth.json").read_text())
        assert gt["finding_present"] is True
        name = str(pydicom.dcmread(folder / "IM_0001.dcm").PatientName)
        assert all(part not in "\n".join(lines) for part in name.split("^"))


def test_cli_abdomen_only_when_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    synth_command.add_parser(parser.add_subparsers())
    args = parser.parse_args(
        ["synth", "--out", str(tmp_path / "abd"), "--kind", "ct-abdomen", "--count", "2",
         "--slices", "16", "--matrix", "64", "--finding-rate", "1"]
    )  # fmt: skip
    assert args.func(args) == 0  # a finding rate of 1 is harmless: the abdomen has none
    folders = sorted(p for p in (tmp_path / "abd").iterdir() if p.is_dir())
    assert len(folders) == 2
    for folder in folders:
        gt = json.loads((folder / "ground_truth.json").read_text())
        assert gt["kind"] == "ct-abdomen"
        assert gt["finding_present"] is False
        assert (folder / "labels.npy").is_file()
    args = parser.parse_args(["synth", "--out", str(tmp_path / "all"), "--matrix", "64"])
    assert args.func(args) == 0
    kinds = sorted(
        json.loads((p / "ground_truth.json").read_text())["kind"]
        for p in (tmp_path / "all").iterdir()
    )
    assert kinds == ["cr-chest", "ct-chest", "ct-head", "dx-chest"]  # the default four
