"""Typed errors raised while turning DICOM instances into volumes.

Every error names the series (by Series Instance UID, never by patient identity) and says what is
wrong in one line. Callers catch :class:`PreprocessingError`; nothing else escapes the loaders.
"""

from __future__ import annotations


class PreprocessingError(Exception):
    """Base class: a series or instance cannot become a volume.

    Attributes:
        series_uid: Series Instance UID concerned, or ``None`` when it could not be read.
        detail: What is wrong, in one line, without patient identity.
    """

    def __init__(self, detail: str, *, series_uid: str | None = None) -> None:
        self.series_uid = series_uid
        self.detail = detail
        where = f"series {series_uid}: " if series_uid else ""
        super().__init__(f"{where}{detail}")


class UnreadableInstanceError(PreprocessingError):
    """A file is not DICOM, is truncated, or lacks an attribute needed to place it."""


class LoaderFault(UnreadableInstanceError):
    """The loader itself failed unexpectedly (a bug, not the series): never "not applicable"."""


class MissingDecoderError(PreprocessingError):
    """The pixel data uses a transfer syntax for which no decoder plugin is installed.

    Attributes:
        transfer_syntax: The Transfer Syntax UID that could not be decoded.
        install: The pip package(s) that provide a decoder.
    """

    def __init__(
        self, detail: str, *, transfer_syntax: str, install: str, series_uid: str | None = None
    ) -> None:
        self.transfer_syntax = transfer_syntax
        self.install = install
        super().__init__(f"{detail}; install {install}", series_uid=series_uid)


class MixedSeriesError(PreprocessingError):
    """Instances handed over as one series belong to different series or studies."""


class IdentityMismatchError(PreprocessingError):
    """Instances of one study disagree on patient identity (two patients in one study)."""


class MixedOrientationError(PreprocessingError):
    """Slices of one series have different ImageOrientationPatient."""


class InconsistentGeometryError(PreprocessingError):
    """Slices differ in rows, columns, pixel spacing or pixel representation."""


class DuplicateSliceError(PreprocessingError):
    """Two slices occupy the same position along the slice normal."""


class MissingSliceError(PreprocessingError):
    """A gap along the slice normal: a slice is missing (gap of X mm at position Y)."""


class NonUniformSpacingError(PreprocessingError):
    """Slice positions are not evenly spaced within tolerance, and no single slice is missing."""


class IncompleteSeriesError(PreprocessingError):
    """A streaming assembly was asked for its volume before all expected slices arrived."""


class UnsupportedSeriesError(PreprocessingError):
    """The series is valid DICOM but not an image series statlane can turn into a volume."""


class PipelineSpecError(PreprocessingError):
    """A declarative preprocessing pipeline names a transform or argument that is not allowed."""
