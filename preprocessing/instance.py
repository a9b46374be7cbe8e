"""One frame of one DICOM instance: the header values needed to place it, and its pixels.

A classic CT/MR slice yields one :class:`Frame`; an enhanced multi-frame instance yields one per
frame (see :mod:`preprocessing.enhanced`). Pixels are decoded lazily, straight into the caller's
buffer (batch loading), or eagerly with :meth:`Frame.decoded` (streaming assembly); both go
through :func:`preprocessing.decode.rescale_into` so the voxels are identical.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from preprocessing.decode import PixelSource, decode_frame, rescale_into
from preprocessing.enhanced import FrameGeometry, frame_geometries, is_enhanced
from preprocessing.errors import (
    PreprocessingError,
    UnreadableInstanceError,
    UnsupportedSeriesError,
)

Source = Path | str | bytes | Dataset

# Modalities whose single images may lack ImagePositionPatient / ImageOrientationPatient.
PROJECTION_MODALITIES = {"CR", "DX", "MG", "IO", "PX", "RF", "XA", "RG"}

# Non-identifying header values copied into Volume.metadata.
_METADATA_KEYWORDS = (
    "BodyPartExamined",
    "SliceThickness",
    "SpacingBetweenSlices",
    "GantryDetectorTilt",
    "ConvolutionKernel",
    "KVP",
    "Manufacturer",
    "ManufacturerModelName",
    "ViewPosition",
    "PhotometricInterpretation",
    "RescaleType",
)


@dataclass(frozen=True)
class Identity:
    """Patient/study identity of an instance. Compared, never logged or put in messages."""

    patient_id: str | None = field(repr=False)
    study_uid: str
    accession: str | None = field(repr=False)


@dataclass(frozen=True, eq=False)
class Frame:
    """One 2D frame ready to be placed in a volume.

    Attributes:
        sop_uid: SOP Instance UID of the instance holding the frame.
        frame_index: 0-based frame number inside that instance.
        series_uid: Series Instance UID.
        identity: Patient/study identity (for consistency checks only).
        modality: DICOM Modality.
        rows: Rows (pixels along the column direction).
        columns: Columns (pixels along the row direction).
        pixel_spacing: (between rows, between columns) in millimetres; ``None`` when unknown.
        bits_allocated: BitsAllocated.
        pixel_representation: 0 unsigned, 1 signed.
        samples_per_pixel: SamplesPerPixel.
        orientation: ImageOrientationPatient (6 direction cosines) or ``None``.
        position: ImagePositionPatient in LPS millimetres or ``None``.
        slope: RescaleSlope.
        intercept: RescaleIntercept (Hounsfield units for CT).
        metadata: Non-identifying header values (see ``_METADATA_KEYWORDS``).
        pixels: Stored values of the instance (shared by its frames), ``None`` once decoded.
        hu: Rescaled float32 frame ``(rows, columns)`` once decoded, else ``None``.
    """

    sop_uid: str
    frame_index: int
    series_uid: str
    identity: Identity
    modality: str
    rows: int
    columns: int
    pixel_spacing: tuple[float, float] | None
    bits_allocated: int
    pixel_representation: int
    samples_per_pixel: int
    orientation: tuple[float, ...] | None
    position: tuple[float, float, float] | None
    slope: float
    intercept: float
    metadata: dict[str, object]
    pixels: PixelSource | None = field(default=None, repr=False)
    hu: np.ndarray | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        """How messages name this frame: SOP Instance UID, plus the frame number if > 0."""
        return self.sop_uid if self.frame_index == 0 else f"{self.sop_uid} frame {self.frame_index}"

    def decode_into(self, out: np.ndarray) -> None:
        """Write the rescaled frame (float32, HU for CT) into ``out`` of shape (rows, columns)."""
        if self.hu is not None:
            out[...] = self.hu
            return
        if self.pixels is None:
            raise UnreadableInstanceError(
                f"instance {self.label}: no pixel data", series_uid=self.series_uid
            )
        rescale_into(self.pixels.stored(self.frame_index), self.slope, self.intercept, out)

    def decoded(self) -> Frame:
        """A copy holding its rescaled pixels, detached from the dataset (streaming)."""
        if self.hu is not None:
            return self
        if self.pixels is None:
            raise UnreadableInstanceError(
                f"instance {self.label}: no pixel data", series_uid=self.series_uid
            )
        stored = self.pixels.stored(self.frame_index)
        return replace(self, hu=decode_frame(stored, self.slope, self.intercept), pixels=None)


def read_dataset(source: Source, where: str = "source") -> Dataset:
    """Read one instance, header and pixel data, in a single pass over the file.

    Raises:
        UnreadableInstanceError: Not DICOM, truncated, or unreadable; names ``where`` (never
            the path, which may carry patient identity).
    """
    if isinstance(source, Dataset):
        return source
    try:
        if isinstance(source, bytes | bytearray):
            return pydicom.dcmread(io.BytesIO(source))
        return pydicom.dcmread(source)
    except Exception as exc:  # pydicom fails on a malformed file with almost any type
        raise UnreadableInstanceError(
            f"{where} is not a readable DICOM file ({type(exc).__name__})"
        ) from exc


def _uid(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    return str(value) if value not in (None, "") else None


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    return str(value).strip() if value not in (None, "") else None


def _finite(value: float, name: str) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{name} is not finite")
    return value


def _numbers(ds: Dataset, keyword: str, count: int) -> tuple[float, ...] | None:
    if keyword not in ds or ds[keyword].value in (None, ""):
        return None
    value = ds[keyword].value
    if isinstance(value, str | bytes) or not hasattr(value, "__len__"):
        value = [value]
    result = tuple(_finite(float(v), keyword) for v in value)
    if len(result) != count:
        raise ValueError(f"{keyword} has {len(result)} values, {count} expected")
    return result


def _metadata(ds: Dataset) -> dict[str, object]:
    meta: dict[str, object] = {}
    for keyword in _METADATA_KEYWORDS:
        try:
            value = ds.get(keyword)
        except Exception:  # noqa: BLE001 - pydicom converts lazily, a bad value raises any type
            continue  # metadata is optional: an unreadable value is left out
        if value in (None, ""):
            continue
        meta[keyword] = float(value) if isinstance(value, int | float) else str(value)
    meta["SOPClassUID"] = str(ds.get("SOPClassUID", ""))
    ts = getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID")
    if ts is not None:
        meta["TransferSyntaxUID"] = str(ts)
    return meta


def frames_of(ds: Dataset, where: str = "source") -> list[Frame]:
    """The frames of one instance, header parsed, pixels not yet decoded.

    Raises:
        UnreadableInstanceError: A value needed to place the frames is missing or malformed.
        UnsupportedSeriesError: Valid DICOM that is not a single-channel image.
    """
    sop_uid = _uid(ds, "SOPInstanceUID")
    series_uid = _uid(ds, "SeriesInstanceUID")
    if sop_uid is None:
        raise UnreadableInstanceError(f"{where}: no SOPInstanceUID", series_uid=series_uid)
    try:
        return _frames_of(ds, sop_uid, series_uid)
    except PreprocessingError:
        raise
    except Exception as exc:  # pydicom's lazy values raise any type: callers see typed errors
        raise UnreadableInstanceError(
            f"instance {sop_uid}: header unreadable ({type(exc).__name__})",
            series_uid=series_uid,
        ) from exc


def _frames_of(ds: Dataset, sop_uid: str, series_uid: str | None) -> list[Frame]:
    def unreadable(detail: str) -> UnreadableInstanceError:
        return UnreadableInstanceError(f"instance {sop_uid}: {detail}", series_uid=series_uid)

    if series_uid is None:
        raise unreadable("no SeriesInstanceUID")
    study_uid = _uid(ds, "StudyInstanceUID")
    if study_uid is None:
        raise unreadable("no StudyInstanceUID")
    if "PixelData" not in ds:
        raise UnsupportedSeriesError(
            f"instance {sop_uid} has no PixelData (not an image)", series_uid=series_uid
        )
    for keyword in ("Rows", "Columns", "BitsAllocated", "PixelRepresentation"):
        if ds.get(keyword) is None:
            raise unreadable(f"no {keyword}")
    rows, columns = int(ds.Rows), int(ds.Columns)
    if rows < 1 or columns < 1:
        raise unreadable(f"Rows x Columns is {rows} x {columns}")
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples != 1:
        raise UnsupportedSeriesError(
            f"instance {sop_uid} has {samples} samples per pixel; only grayscale is supported",
            series_uid=series_uid,
        )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames < 1:
        raise unreadable(f"NumberOfFrames is {frames}")
    modality = str(ds.get("Modality", "") or "")
    identity = Identity(_text(ds, "PatientID"), study_uid, _text(ds, "AccessionNumber"))
    pixels = PixelSource(
        ds, frames=frames, rows=rows, columns=columns, sop_uid=sop_uid, series_uid=series_uid
    )
    metadata = _metadata(ds)
    if is_enhanced(ds):
        try:
            geometries = frame_geometries(ds, frames)
        except ValueError as exc:
            raise unreadable(str(exc)) from exc
    else:
        if frames > 1:
            raise UnsupportedSeriesError(
                f"instance {sop_uid} has {frames} frames but no per-frame functional groups",
                series_uid=series_uid,
            )
        geometries = [_classic_geometry(ds, modality)]
    result = []
    for index, geometry in enumerate(geometries):
        spacing = geometry.pixel_spacing
        if spacing is not None and not all(0 < s < math.inf for s in spacing):
            raise unreadable(f"PixelSpacing {spacing} is not positive")
        if not math.isfinite(geometry.slope) or not math.isfinite(geometry.intercept):
            raise unreadable("RescaleSlope/RescaleIntercept not finite")
        if geometry.slope == 0.0:
            raise unreadable("RescaleSlope is 0")
        if geometry.slice_thickness is not None and "SliceThickness" not in metadata:
            metadata = {**metadata, "SliceThickness": geometry.slice_thickness}
        result.append(
            Frame(
                sop_uid=sop_uid,
                frame_index=index,
                series_uid=series_uid,
                identity=identity,
                modality=modality,
                rows=rows,
                columns=columns,
                pixel_spacing=spacing,
                bits_allocated=int(ds.BitsAllocated),
                pixel_representation=int(ds.PixelRepresentation),
                samples_per_pixel=samples,
                orientation=geometry.orientation,
                position=geometry.position,
                slope=geometry.slope,
                intercept=geometry.intercept,
                metadata=metadata,
                pixels=pixels,
            )
        )
    return result


def _classic_geometry(ds: Dataset, modality: str) -> FrameGeometry:
    position = _numbers(ds, "ImagePositionPatient", 3)
    orientation = _numbers(ds, "ImageOrientationPatient", 6)
    spacing = _numbers(ds, "PixelSpacing", 2)
    if spacing is None and modality in PROJECTION_MODALITIES:
        spacing = _numbers(ds, "ImagerPixelSpacing", 2)
    slope = float(ds.RescaleSlope) if ds.get("RescaleSlope") is not None else 1.0
    intercept = float(ds.RescaleIntercept) if ds.get("RescaleIntercept") is not None else 0.0
    thickness = float(ds.SliceThickness) if ds.get("SliceThickness") is not None else None
    return FrameGeometry(
        position=(position[0], position[1], position[2]) if position else None,
        orientation=orientation,
        pixel_spacing=(spacing[0], spacing[1]) if spacing else None,
        slope=slope,
        intercept=intercept,
        slice_thickness=thickness,
    )
