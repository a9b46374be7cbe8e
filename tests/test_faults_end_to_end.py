"""Every faulty synthetic variant reaches the loader and yields its own typed error.

The generator (models.synthetic) and the loader (preprocessing) are written independently; this
table ties each defect a modality or network can produce to the error a user sees.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from models.synthetic import generate_study
from preprocessing import load_study, scan_folder
from preprocessing.errors import (
    DuplicateSliceError,
    IdentityMismatchError,
    InconsistentGeometryError,
    MissingSliceError,
    MixedOrientationError,
    PreprocessingError,
    UnreadableInstanceError,
)

FAULT_TO_ERROR: dict[str, tuple[type[PreprocessingError], str]] = {
    "missing-slice": (MissingSliceError, "gap of"),
    "duplicate-slice": (DuplicateSliceError, ""),
    "mixed-orientation": (MixedOrientationError, ""),
    "two-patients": (IdentityMismatchError, ""),
    "inconsistent-geometry": (InconsistentGeometryError, ""),
    "truncated-file": (UnreadableInstanceError, ""),
    "non-dicom-file": (UnreadableInstanceError, ""),
}


@pytest.mark.parametrize("fault", sorted(FAULT_TO_ERROR))
def test_fault_yields_its_typed_error(fault: str, tmp_path: Path) -> None:
    study = generate_study("ct-head", tmp_path, seed=3, slices=32, matrix=64, fault=fault)
    expected, fragment = FAULT_TO_ERROR[fault]
    with pytest.raises(expected) as caught:
        load_study(scan_folder(study.study_dir))
    message = str(caught.value)
    assert fragment in message
    # The error names what is wrong by UID, never by patient identity.
    if expected is not UnreadableInstanceError:
        assert caught.value.series_uid == study.series_uid or study.study_uid in message
    identity = pydicom.dcmread(study.files[0], stop_before_pixels=True)
    for value in (str(identity.PatientName), str(identity.PatientID)):
        assert value not in message, "patient identity leaked into an error message"


def test_valid_variant_of_the_same_study_loads(tmp_path: Path) -> None:
    study = generate_study("ct-head", tmp_path, seed=3, slices=32, matrix=64)
    volumes = load_study(scan_folder(study.study_dir))
    assert list(volumes) == [study.series_uid]
    assert volumes[study.series_uid].shape == (64, 64, 32)
