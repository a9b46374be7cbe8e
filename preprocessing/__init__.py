"""DICOM series → model-ready volumes (float32 HU, affine in LPS millimetres).

Public API: :func:`load_series`, :func:`load_study`, :func:`scan_folder`,
:class:`SeriesAssembler` (streaming) and :class:`Volume`; typed errors live in
:mod:`preprocessing.errors`.
"""

from preprocessing.errors import (
    DuplicateSliceError,
    IdentityMismatchError,
    IncompleteSeriesError,
    InconsistentGeometryError,
    MissingDecoderError,
    MissingSliceError,
    MixedOrientationError,
    MixedSeriesError,
    NonUniformSpacingError,
    PreprocessingError,
    UnreadableInstanceError,
    UnsupportedSeriesError,
)
from preprocessing.series import load_series, load_study, scan_folder
from preprocessing.streaming import SeriesAssembler
from preprocessing.volume import Volume

__all__ = [
    "DuplicateSliceError",
    "IdentityMismatchError",
    "IncompleteSeriesError",
    "InconsistentGeometryError",
    "MissingDecoderError",
    "MissingSliceError",
    "MixedOrientationError",
    "MixedSeriesError",
    "NonUniformSpacingError",
    "PreprocessingError",
    "SeriesAssembler",
    "UnreadableInstanceError",
    "UnsupportedSeriesError",
    "Volume",
    "load_series",
    "load_study",
    "scan_folder",
]
