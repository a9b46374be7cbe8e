"""Enhanced multi-frame images (Enhanced CT Image Storage and kin): functional groups → frames.

Each frame's plane position, plane orientation, pixel measures and pixel value transformation
are looked up first in its Per-frame Functional Groups item and then in the Shared Functional
Groups, as PS3.3 C.7.6.16 prescribes. The result is one plain :class:`FrameGeometry` per frame,
which :mod:`preprocessing.instance` turns into the same frame records a classic series yields,
so the same geometry code sorts and checks both.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

ENHANCED_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage
    "1.2.840.10008.5.1.4.1.1.2.2",  # Legacy Converted Enhanced CT Image Storage
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image Storage
    "1.2.840.10008.5.1.4.1.1.4.4",  # Legacy Converted Enhanced MR Image Storage
    "1.2.840.10008.5.1.4.1.1.128.1",  # Legacy Converted Enhanced PET Image Storage
}


@dataclass(frozen=True)
class FrameGeometry:
    """What the functional groups say about one frame.

    Attributes:
        position: ImagePositionPatient, LPS millimetres, or ``None`` when absent.
        orientation: ImageOrientationPatient (row then column direction cosines), or ``None``.
        pixel_spacing: PixelSpacing (between rows, between columns) in millimetres, or ``None``.
        slope: RescaleSlope (1.0 when absent).
        intercept: RescaleIntercept (0.0 when absent), Hounsfield units for CT.
        slice_thickness: SliceThickness in millimetres, or ``None``.
    """

    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None
    slope: float
    intercept: float
    slice_thickness: float | None


def is_enhanced(ds: Dataset) -> bool:
    """True when ``ds`` describes its frames with functional groups."""
    return "PerFrameFunctionalGroupsSequence" in ds or (
        str(ds.get("SOPClassUID", "")) in ENHANCED_SOP_CLASSES
    )


def frame_geometries(ds: Dataset, frames: int) -> list[FrameGeometry]:
    """One :class:`FrameGeometry` per frame of an enhanced multi-frame dataset.

    Raises:
        ValueError: The per-frame sequence does not have one item per frame, or a value is
            malformed; the caller converts it to a typed error naming the instance.
    """
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if isinstance(shared_seq, Sequence) and len(shared_seq) else Dataset()
    if not isinstance(per_frame, Sequence) or len(per_frame) != frames:
        found = len(per_frame) if isinstance(per_frame, Sequence) else 0
        raise ValueError(f"PerFrameFunctionalGroupsSequence has {found} items for {frames} frames")
    return [_one_frame(item, shared) for item in per_frame]


def _macro(item: Dataset, shared: Dataset, sequence: str) -> Dataset | None:
    """The first item of functional group ``sequence``, per-frame taking precedence."""
    for group in (item, shared):
        seq = group.get(sequence)
        if isinstance(seq, Sequence) and len(seq):
            first = seq[0]
            return first if isinstance(first, Dataset) else None
    return None


def _floats(values: object, count: int, name: str) -> tuple[float, ...]:
    if isinstance(values, str | bytes) or not hasattr(values, "__len__"):
        raise ValueError(f"{name} is not a multi-valued number")
    result = tuple(float(v) for v in values)  # type: ignore[attr-defined]
    if len(result) != count:
        raise ValueError(f"{name} has {len(result)} values, {count} expected")
    return result


def _one_frame(item: Dataset, shared: Dataset) -> FrameGeometry:
    position: tuple[float, float, float] | None = None
    plane = _macro(item, shared, "PlanePositionSequence")
    if plane is not None and "ImagePositionPatient" in plane:
        x, y, z = _floats(plane.ImagePositionPatient, 3, "ImagePositionPatient")
        position = (x, y, z)
    orientation: tuple[float, ...] | None = None
    orient = _macro(item, shared, "PlaneOrientationSequence")
    if orient is not None and "ImageOrientationPatient" in orient:
        orientation = _floats(orient.ImageOrientationPatient, 6, "ImageOrientationPatient")
    spacing: tuple[float, float] | None = None
    thickness: float | None = None
    measures = _macro(item, shared, "PixelMeasuresSequence")
    if measures is not None:
        if "PixelSpacing" in measures:
            dr, dc = _floats(measures.PixelSpacing, 2, "PixelSpacing")
            spacing = (dr, dc)
        if measures.get("SliceThickness") is not None:
            thickness = float(measures.SliceThickness)
    slope, intercept = 1.0, 0.0
    transform = _macro(item, shared, "PixelValueTransformationSequence")
    if transform is not None:
        if transform.get("RescaleSlope") is not None:
            slope = float(transform.RescaleSlope)
        if transform.get("RescaleIntercept") is not None:
            intercept = float(transform.RescaleIntercept)
    return FrameGeometry(position, orientation, spacing, slope, intercept, thickness)
