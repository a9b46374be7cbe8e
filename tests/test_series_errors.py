"""Each defect of a series → its specific PreprocessingError, naming the series and specifics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pydicom.uid import JPEG2000Lossless, RLELossless

from preprocessing import (
    DuplicateSliceError,
    IdentityMismatchError,
    InconsistentGeometryError,
    MissingDecoderError,
    MissingSliceError,
    MixedOrientationError,
    MixedSeriesError,
    NonUniformSpacingError,
    PreprocessingError,
    UnreadableInstanceError,
    UnsupportedSeriesError,
    load_series,
    load_study,
    scan_folder,
)
from tests.peers import require_testdata
from tests.series_factory import make_series, to_bytes, write_series


def _raises(cls: type[PreprocessingError], series: list[Dataset], *parts: str) -> str:
    with pytest.raises(cls) as info:
        load_series(series)
    message = str(info.value)
    assert series[0].SeriesInstanceUID in message
    assert info.value.series_uid == series[0].SeriesInstanceUID
    for part in parts:
        assert part in message
    return message


def test_two_series_given_as_one() -> None:
    a, b = make_series(3), make_series(3)
    with pytest.raises(MixedSeriesError) as info:
        load_series(a + b)
    assert a[0].SeriesInstanceUID in str(info.value)
    assert b[0].SeriesInstanceUID in str(info.value)


def test_one_series_uid_across_two_studies() -> None:
    series = make_series(3)
    series[1].StudyInstanceUID = "1.2.3.4"
    _raises(MixedSeriesError, series, "1.2.3.4")


@pytest.mark.parametrize("keyword", ["PatientID", "AccessionNumber"])
def test_identity_mismatch_in_a_series_hides_values(keyword: str) -> None:
    series = make_series(3)
    setattr(series[2], keyword, "ANON9999")
    message = _raises(IdentityMismatchError, series, keyword, series[2].SOPInstanceUID)
    assert "ANON9999" not in message
    assert "ANON0001" not in message
    assert "ACC0001" not in message


def test_identity_checked_across_the_study_first() -> None:
    study = "1.2.826.0.1.3680043.8.498.1"
    good = make_series(3, study_uid=study)
    other = make_series(3, study_uid=study, patient_id="ANON0777")
    other[0].ImagePositionPatient = other[1].ImagePositionPatient  # also a geometry defect
    with pytest.raises(IdentityMismatchError) as info:
        load_study(good + other)
    assert "PatientID" in str(info.value)
    assert "ANON0777" not in str(info.value)


def test_study_uid_disagreement_in_a_study() -> None:
    with pytest.raises(IdentityMismatchError, match="StudyInstanceUID"):
        load_study(make_series(2) + make_series(2))


def test_mixed_orientation() -> None:
    series = make_series(4)
    series[2].ImageOrientationPatient = [1, 0, 0, 0, 0.9998, 0.02]
    _raises(MixedOrientationError, series, series[2].SOPInstanceUID)


def test_different_rows() -> None:
    series = make_series(3)
    series[1].Rows = 12
    series[1].PixelData = series[1].PixelData[: 12 * 20 * 2]
    _raises(InconsistentGeometryError, series, "rows")


def test_different_pixel_spacing() -> None:
    series = make_series(3)
    series[1].PixelSpacing = [0.8, 0.75]
    _raises(InconsistentGeometryError, series, "pixel spacing")


def test_different_pixel_representation() -> None:
    series = make_series(3)
    series[0].PixelRepresentation = 0
    _raises(InconsistentGeometryError, series, "pixel_representation")


def test_duplicate_position() -> None:
    series = make_series(4)
    series[3].ImagePositionPatient = series[2].ImagePositionPatient
    _raises(DuplicateSliceError, series, series[2].SOPInstanceUID, series[3].SOPInstanceUID)


def test_missing_slice_names_gap_and_position() -> None:
    series = make_series(6, step_mm=2.5, origin=(0.0, 0.0, 10.0))
    del series[3]
    _raises(MissingSliceError, series, "gap of 5.000 mm at position 15.000 mm")


def test_two_missing_slices() -> None:
    series = make_series(8, step_mm=1.25, origin=(0.0, 0.0, 0.0))
    del series[4:6]
    _raises(MissingSliceError, series, "gap of 3.750 mm at position 3.750 mm", "2 slice(s)")


def test_irregular_spacing() -> None:
    series = make_series(5, step_mm=2.5, origin=(0.0, 0.0, 0.0))
    series[4].ImagePositionPatient = [0.0, 0.0, 11.0]
    _raises(NonUniformSpacingError, series, "step of 3.500 mm at position 7.500 mm")


def test_in_plane_shift_of_one_slice() -> None:
    series = make_series(5)
    x, y, z = (float(v) for v in series[2].ImagePositionPatient)
    series[2].ImagePositionPatient = [x + 3.0, y, z]
    _raises(NonUniformSpacingError, series, series[2].SOPInstanceUID, "in-plane")


def test_tolerance_accepts_small_jitter() -> None:
    series = make_series(5, step_mm=2.5, origin=(0.0, 0.0, 0.0))
    series[2].ImagePositionPatient = [0.0, 0.0, 5.03]
    assert load_series(series).shape[2] == 5
    with pytest.raises(NonUniformSpacingError):
        load_series(series, tolerance_mm=0.01)


@pytest.mark.parametrize(
    "keyword", ["ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows"]
)
def test_missing_required_attribute_names_the_instance(keyword: str) -> None:
    series = make_series(3)
    delattr(series[1], keyword)
    _raises(UnreadableInstanceError, series, series[1].SOPInstanceUID, keyword)


def test_truncated_pixel_data() -> None:
    series = make_series(3)
    series[1].PixelData = series[1].PixelData[:100]
    _raises(UnreadableInstanceError, series, series[1].SOPInstanceUID, "PixelData")


def test_non_dicom_and_truncated_files(tmp_path: Path) -> None:
    paths = write_series(make_series(3), tmp_path / "series")
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not a dicom file at all" * 10)
    with pytest.raises(UnreadableInstanceError, match="source 3"):
        load_series([*paths, junk])
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(paths[0].read_bytes()[:400])
    with pytest.raises(UnreadableInstanceError):
        load_series([*paths[1:], cut])


def test_missing_file_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(UnreadableInstanceError):
        load_series([tmp_path / "absent.dcm"])


def test_colour_image_is_unsupported() -> None:
    series = make_series(2)
    series[0].SamplesPerPixel = 3
    _raises(UnsupportedSeriesError, series, "samples per pixel")


def test_no_sources() -> None:
    with pytest.raises(UnsupportedSeriesError):
        load_series([])


def test_ordinary_multiframe_without_functional_groups() -> None:
    series = make_series(1)
    series[0].NumberOfFrames = 2
    series[0].PixelData = series[0].PixelData * 2
    _raises(UnsupportedSeriesError, series, "functional groups")


def _unavailable(monkeypatch: pytest.MonkeyPatch, transfer_syntax: str) -> None:
    monkeypatch.setattr(get_decoder(transfer_syntax), "_available", {})


def test_missing_j2k_decoder_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    path = require_testdata("693_J2KR.dcm")
    _unavailable(monkeypatch, JPEG2000Lossless)
    with pytest.raises(MissingDecoderError) as info:
        load_series([str(path)])
    assert info.value.install == "pylibjpeg-openjpeg"
    assert "pylibjpeg-openjpeg" in str(info.value)
    assert info.value.transfer_syntax == JPEG2000Lossless


def test_missing_rle_decoder_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    series = make_series(3)
    for ds in series:
        ds.compress(RLELossless, encoding_plugin="pydicom")
    assert np.array_equal(load_series(series).array, load_series(make_series(3)).array)
    _unavailable(monkeypatch, RLELossless)
    message = _raises(MissingDecoderError, series, "pylibjpeg-rle", series[0].SOPInstanceUID)
    assert "RLE" in message


def test_load_study_groups_series_and_skips_non_images(tmp_path: Path) -> None:
    study = "1.2.826.0.1.3680043.8.498.2"
    a, b = make_series(3, study_uid=study), make_series(4, study_uid=study)
    report = Dataset()
    report.SOPInstanceUID, report.SeriesInstanceUID = "1.2.3.9", "1.2.3.10"
    report.StudyInstanceUID, report.PatientID = study, "ANON0001"
    volumes = load_study([*a, report, *b])
    assert set(volumes) == {a[0].SeriesInstanceUID, b[0].SeriesInstanceUID}
    assert volumes[b[0].SeriesInstanceUID].shape[2] == 4


def test_scan_folder_skips_ground_truth_and_arrays(tmp_path: Path) -> None:
    paths = write_series(make_series(2), tmp_path / "nested")
    (tmp_path / "ground_truth.json").write_text("{}")
    np.save(tmp_path / "mask.npy", np.zeros(2))
    assert scan_folder(tmp_path) == sorted(paths)
    assert load_series(scan_folder(tmp_path)).shape[2] == 2


def test_bytes_of_a_non_dicom_file_through_load_series_path(tmp_path: Path) -> None:
    good = make_series(2)
    path = tmp_path / "one.dcm"
    path.write_bytes(to_bytes(good[0])[:-50])  # pixel data cut short
    with pytest.raises(UnreadableInstanceError):
        load_series([path, good[1]])
