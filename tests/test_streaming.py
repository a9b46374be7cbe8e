"""SeriesAssembler: instances one at a time, any order, any form → exactly load_series."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset

from preprocessing import (
    IdentityMismatchError,
    IncompleteSeriesError,
    MissingSliceError,
    MixedSeriesError,
    SeriesAssembler,
    UnreadableInstanceError,
    UnsupportedSeriesError,
    Volume,
    load_series,
)
from tests.series_factory import make_series, to_bytes, write_series


def _assert_same(a: Volume, b: Volume) -> None:
    assert np.array_equal(a.array, b.array)
    assert a.array.dtype == b.array.dtype == np.float32
    assert np.array_equal(a.affine, b.affine)
    assert a.sop_instance_uids == b.sop_instance_uids
    assert (a.series_uid, a.study_uid, a.modality) == (b.series_uid, b.study_uid, b.modality)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("form", ["dataset", "bytes", "path"])
def test_random_order_equals_batch(seed: int, form: str, tmp_path: Path) -> None:
    series = make_series(9, tilt_deg=12.0 if seed % 2 else 0.0, slope=0.5 if seed > 3 else 1.0)
    paths = write_series(series, tmp_path)
    batch = load_series(paths)
    order = np.random.default_rng(seed).permutation(len(series))
    assembler = SeriesAssembler(expected_count=len(series))
    for index in order:
        ds = series[index]
        source: Path | bytes | Dataset = (
            ds if form == "dataset" else to_bytes(ds) if form == "bytes" else paths[index]
        )
        assert not assembler.is_complete
        assembler.add(source)
    assert assembler.is_complete
    assert assembler.count == len(series)
    _assert_same(assembler.volume(), batch)


def test_repeated_instance_is_ignored() -> None:
    series = make_series(4)
    assembler = SeriesAssembler(series[0].SeriesInstanceUID, expected_count=4)
    for ds in [*series, series[1], series[3]]:
        assembler.add(ds)
    assembler.add(to_bytes(series[2]))
    assert assembler.count == 4
    _assert_same(assembler.volume(), load_series(series))


def test_premature_volume_is_incomplete() -> None:
    series = make_series(5)
    assembler = SeriesAssembler(expected_count=5)
    for ds in series[:3]:
        assembler.add(ds)
    with pytest.raises(IncompleteSeriesError, match="3 of 5") as info:
        assembler.volume()
    assert info.value.series_uid == series[0].SeriesInstanceUID


def test_without_expected_count_volume_is_what_arrived() -> None:
    series = make_series(4)
    assembler = SeriesAssembler()
    for ds in series[:3]:
        assembler.add(ds)
    assert not assembler.is_complete
    _assert_same(assembler.volume(), load_series(series[:3]))


def test_wrong_series_is_rejected() -> None:
    series, other = make_series(3), make_series(1)
    assembler = SeriesAssembler(series[0].SeriesInstanceUID)
    assembler.add(series[0])
    with pytest.raises(MixedSeriesError) as info:
        assembler.add(other[0])
    assert other[0].SeriesInstanceUID in str(info.value)
    assert assembler.count == 1


def test_first_instance_fixes_the_series() -> None:
    series, other = make_series(2), make_series(1)
    assembler = SeriesAssembler()
    assembler.add(series[0])
    assert assembler.series_uid == series[0].SeriesInstanceUID
    with pytest.raises(MixedSeriesError):
        assembler.add(other[0])


def test_other_patient_in_the_same_series() -> None:
    series = make_series(2)
    series[1].PatientID = "ANON0666"
    assembler = SeriesAssembler()
    assembler.add(series[0])
    with pytest.raises(IdentityMismatchError) as info:
        assembler.add(series[1])
    assert "ANON0666" not in str(info.value)


def test_unreadable_bytes_and_empty_assembler() -> None:
    assembler = SeriesAssembler()
    with pytest.raises(UnreadableInstanceError):
        assembler.add(b"\x00" * 64)
    with pytest.raises(UnsupportedSeriesError):
        assembler.volume()


def test_geometry_errors_surface_at_volume_time() -> None:
    series = make_series(5)
    assembler = SeriesAssembler()
    for ds in series[:2] + series[3:]:
        assembler.add(ds)
    with pytest.raises(MissingSliceError, match=r"gap of 5\.000 mm"):
        assembler.volume()
