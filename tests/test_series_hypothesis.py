"""Fuzzing headers of a valid series: load_series returns a Volume or a PreprocessingError.

Hypothesis mutates geometry, pixel description and rescale values, deletes attributes, replaces
values with raw bytes of the wrong type, and truncates PixelData. No other exception may escape
(batch loading from datasets, and streaming from the encoded bytes).
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from preprocessing import PreprocessingError, SeriesAssembler, Volume, load_series
from tests.series_factory import make_series, to_bytes

BASE = make_series(4, rows=16, columns=16)

KEYWORDS = [
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "Rows",
    "Columns",
    "RescaleSlope",
    "RescaleIntercept",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "SamplesPerPixel",
    "NumberOfFrames",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "PatientID",
    "PixelData",
    "Modality",
    "SliceThickness",
]

numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-1e3, max_value=1e3),
    st.sampled_from([0.0, -0.0, 1.0, -1.0, 1e-12, 2.5, 1e300]),
)
small_ints = st.one_of(st.integers(-5, 70), st.sampled_from([0, 1, 8, 12, 16, 32, 64, 65535]))


def _set(ds: Dataset, keyword: str, value: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        setattr(ds, keyword, value)


def _raw(ds: Dataset, keyword: str, payload: bytes) -> None:
    tag = tag_for_keyword(keyword)
    assert tag is not None
    vr = dictionary_VR(tag).split(" or ")[-1]  # "OB or OW" -> "OW"
    ds[tag] = RawDataElement(Tag(tag), vr, len(payload), payload, 0, False, True, True, False)


mutation = st.one_of(
    st.tuples(st.just("ImagePositionPatient"), st.lists(numbers, min_size=0, max_size=4)),
    st.tuples(st.just("ImageOrientationPatient"), st.lists(numbers, min_size=5, max_size=7)),
    st.tuples(st.just("PixelSpacing"), st.lists(numbers, min_size=1, max_size=3)),
    st.tuples(st.sampled_from(["RescaleSlope", "RescaleIntercept", "SliceThickness"]), numbers),
    st.tuples(
        st.sampled_from(
            [
                "Rows",
                "Columns",
                "BitsAllocated",
                "BitsStored",
                "PixelRepresentation",
                "SamplesPerPixel",
                "NumberOfFrames",
            ]
        ),
        small_ints,
    ),
    st.tuples(st.just("delete"), st.sampled_from(KEYWORDS)),
    st.tuples(st.just("raw"), st.tuples(st.sampled_from(KEYWORDS), st.binary(max_size=12))),
    st.tuples(
        st.just("raw"),
        st.tuples(st.sampled_from(KEYWORDS), st.text(max_size=10).map(lambda t: t.encode())),
    ),
    st.tuples(st.just("truncate"), st.integers(0, 600)),
)


def _apply(ds: Dataset, kind: str, value: Any) -> None:
    if kind == "delete":
        if value in ds:
            delattr(ds, value)
    elif kind == "raw":
        keyword, payload = value
        _raw(ds, keyword, payload)
    elif kind == "truncate":
        if "PixelData" in ds and isinstance(ds.PixelData, bytes):
            ds.PixelData = ds.PixelData[:value]
    elif kind == "NumberOfFrames":
        _set(ds, "NumberOfFrames", value)
    elif kind in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        _set(ds, kind, [float(v) for v in value])
    elif kind in ("RescaleSlope", "RescaleIntercept", "SliceThickness"):
        _raw(ds, kind, repr(float(value)).encode()[:16])
    else:
        _set(ds, kind, int(value))


@contextlib.contextmanager
def _typed_error_allowed() -> Iterator[None]:
    """Allow a PreprocessingError, but not one produced by the loaders' last-line guard.

    The guard turns any unforeseen exception into "unexpected <Type> while ...": if a mutation
    reaches it, the defect was not handled where it occurs, and this test fails.
    """
    try:
        yield
    except PreprocessingError as error:
        if "unexpected" in error.detail:
            raise AssertionError(f"unhandled defect reached the guard: {error}") from error


def _check(outcome: object) -> None:
    assert isinstance(outcome, Volume)
    assert outcome.array.dtype == np.float32
    assert outcome.affine.shape == (4, 4)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    st.lists(st.tuples(st.integers(0, len(BASE) - 1), mutation), min_size=1, max_size=3),
    st.permutations(range(len(BASE))),
)
def test_mutated_series_gives_volume_or_typed_error(
    mutations: list[tuple[int, tuple[str, Any]]], order: list[int]
) -> None:
    series = [copy.deepcopy(ds) for ds in BASE]
    for index, (kind, value) in mutations:
        _apply(series[index], kind, value)
    series = [series[i] for i in order]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with _typed_error_allowed():
            _check(load_series(series))
        try:
            encoded = [to_bytes(ds) for ds in series]
        except Exception:  # noqa: BLE001 - any writer error: the mutation cannot be streamed
            return
        assembler = SeriesAssembler()
        with _typed_error_allowed():
            for blob in encoded:
                assembler.add(blob)
            _check(assembler.volume())
