"""Slice geometry: orientation checks, slice normal, sorting, spacing checks and the affine.

Slices are ordered by the projection of ImagePositionPatient on the slice normal (the cross
product of the row and column direction cosines of ImageOrientationPatient), never by
InstanceNumber. The affine maps voxel ``(i, j, k)`` = ``(column, row, slice)`` to LPS
millimetres; its third column is the actual step between consecutive slice positions, so a
gantry-tilted series gets a sheared affine instead of silently misplaced slices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from preprocessing.errors import (
    DuplicateSliceError,
    InconsistentGeometryError,
    MissingSliceError,
    MixedOrientationError,
    NonUniformSpacingError,
    UnreadableInstanceError,
    UnsupportedSeriesError,
)
from preprocessing.instance import PROJECTION_MODALITIES, Frame

ORIENTATION_TOLERANCE = 1e-4
"""Largest difference between direction cosines still counted as the same orientation."""

_UNIT_TOLERANCE = 1e-2
"""How far from unit length / orthogonal the direction cosines may be before they are rejected."""

PIXEL_SPACING_TOLERANCE_MM = 1e-4

MAX_COORDINATE_MM = 1e5
"""Positions farther than 100 m from the origin are corrupt headers, not anatomy."""


@dataclass(frozen=True)
class StackPlan:
    """Where each frame goes and how the stack sits in space.

    Attributes:
        order: Indices into the input frames, in slice order (increasing along the normal).
        affine: 4x4 voxel index → LPS millimetres.
        distances_mm: Sorted slice positions along the normal, millimetres.
    """

    order: list[int]
    affine: np.ndarray
    distances_mm: np.ndarray


def direction_cosines(
    orientation: Sequence[float], label: str, series_uid: str | None
) -> tuple[np.ndarray, np.ndarray]:
    """Row and column direction unit vectors from ImageOrientationPatient.

    Raises:
        UnreadableInstanceError: Not two (nearly) orthogonal unit vectors.
    """
    iop = np.asarray(orientation, dtype=np.float64)
    row, col = iop[:3], iop[3:6]
    norms = np.array([np.linalg.norm(row), np.linalg.norm(col)])
    if (
        iop.shape != (6,)
        or not np.all(np.isfinite(iop))
        or np.any(np.abs(norms - 1.0) > _UNIT_TOLERANCE)
        or abs(float(np.dot(row, col))) > _UNIT_TOLERANCE
    ):
        raise UnreadableInstanceError(
            f"instance {label}: ImageOrientationPatient is not two orthogonal unit vectors",
            series_uid=series_uid,
        )
    return row / norms[0], col / norms[1]


def slice_normal(orientation: Sequence[float]) -> np.ndarray:
    """Unit normal of the image plane: row direction x column direction (LPS)."""
    iop = np.asarray(orientation, dtype=np.float64)
    normal = np.cross(iop[:3], iop[3:6])
    return normal / np.linalg.norm(normal)


def check_same_grid(frames: Sequence[Frame], series_uid: str) -> None:
    """All frames share Rows, Columns, PixelSpacing, BitsAllocated, PixelRepresentation, SPP.

    Raises:
        InconsistentGeometryError: Naming the first frame that differs and the attribute.
    """
    first = frames[0]
    for frame in frames[1:]:
        for name in ("rows", "columns", "bits_allocated", "pixel_representation"):
            if getattr(frame, name) != getattr(first, name):
                raise InconsistentGeometryError(
                    f"instance {frame.label} has {name} {getattr(frame, name)}, "
                    f"instance {first.label} has {getattr(first, name)}",
                    series_uid=series_uid,
                )
        if frame.samples_per_pixel != first.samples_per_pixel:
            raise InconsistentGeometryError(
                f"instance {frame.label} has samples_per_pixel {frame.samples_per_pixel}",
                series_uid=series_uid,
            )
        a, b = first.pixel_spacing, frame.pixel_spacing
        if (a is None) != (b is None) or (
            a is not None
            and b is not None
            and max(abs(a[0] - b[0]), abs(a[1] - b[1])) > PIXEL_SPACING_TOLERANCE_MM
        ):
            raise InconsistentGeometryError(
                f"instance {frame.label} has pixel spacing {b} mm, "
                f"instance {first.label} has {a} mm",
                series_uid=series_uid,
            )


def check_same_orientation(frames: Sequence[Frame], series_uid: str) -> tuple[float, ...]:
    """The common ImageOrientationPatient of all frames.

    Raises:
        MixedOrientationError: Two frames differ by more than ``ORIENTATION_TOLERANCE``.
    """
    reference = frames[0].orientation
    assert reference is not None
    ref = np.asarray(reference)
    for frame in frames[1:]:
        assert frame.orientation is not None
        diff = float(np.max(np.abs(np.asarray(frame.orientation) - ref)))
        if diff > ORIENTATION_TOLERANCE:
            raise MixedOrientationError(
                f"instance {frame.label} orientation differs from instance {frames[0].label} "
                f"by {diff:.6f} (direction cosine)",
                series_uid=series_uid,
            )
    return tuple(reference)


def plan_stack(
    positions: np.ndarray,
    labels: Sequence[str],
    orientation: Sequence[float],
    pixel_spacing: tuple[float, float],
    *,
    series_uid: str,
    tolerance_mm: float,
    single_slice_step_mm: float = 1.0,
) -> StackPlan:
    """Sort positions along the normal, check spacing, and build the (possibly sheared) affine.

    Args:
        positions: ``(n, 3)`` ImagePositionPatient values, LPS millimetres.
        labels: How to name each position in messages (SOP Instance UID [frame]).
        orientation: ImageOrientationPatient shared by all slices.
        pixel_spacing: (between rows, between columns) in millimetres.
        series_uid: Named in errors.
        tolerance_mm: Allowed deviation of a slice position from the regular grid, millimetres.
        single_slice_step_mm: Third affine column length when there is only one slice.

    Raises:
        DuplicateSliceError, MissingSliceError, NonUniformSpacingError.
    """
    row, col = direction_cosines(orientation, labels[0], series_uid)
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)
    # Elementwise (not BLAS) so each distance is bit-identical whatever the input order.
    distances = positions[:, 0] * normal[0] + positions[:, 1] * normal[1]
    distances = distances + positions[:, 2] * normal[2]
    order = np.argsort(distances, kind="stable")
    d = distances[order]
    p = positions[order]
    if len(d) == 1:
        step = normal * single_slice_step_mm
    else:
        _check_spacing(d, [labels[i] for i in order], series_uid, tolerance_mm)
        step = (p[-1] - p[0]) / (len(p) - 1)
        _check_collinear(p, step, normal, [labels[i] for i in order], series_uid, tolerance_mm)
    affine = np.eye(4)
    affine[:3, 0] = row * pixel_spacing[1]
    affine[:3, 1] = col * pixel_spacing[0]
    affine[:3, 2] = step
    affine[:3, 3] = p[0]
    return StackPlan(order=[int(i) for i in order], affine=affine, distances_mm=d)


def _check_spacing(d: np.ndarray, labels: list[str], series_uid: str, tol: float) -> None:
    steps = np.diff(d)
    duplicates = np.flatnonzero(steps < tol)
    if len(duplicates):
        first = int(duplicates[0])
        raise DuplicateSliceError(
            f"instances {labels[first]} and {labels[first + 1]} are both at "
            f"{d[first]:.3f} mm along the slice normal",
            series_uid=series_uid,
        )
    typical = float(np.median(steps[steps <= steps.min() + tol]))
    for index, step in enumerate(steps.tolist()):
        if abs(step - typical) <= tol:
            continue
        multiple = round(step / typical)
        if multiple >= 2 and abs(step - multiple * typical) <= max(tol * multiple, 0.1 * typical):
            raise MissingSliceError(
                f"gap of {step:.3f} mm at position {d[index]:.3f} mm along the slice normal "
                f"(after instance {labels[index]}; regular step {typical:.3f} mm, "
                f"{multiple - 1} slice(s) missing)",
                series_uid=series_uid,
            )
        raise NonUniformSpacingError(
            f"step of {step:.3f} mm at position {d[index]:.3f} mm along the slice normal "
            f"(after instance {labels[index]}) differs from the regular step {typical:.3f} mm "
            f"by more than {tol} mm",
            series_uid=series_uid,
        )


def _check_collinear(
    p: np.ndarray,
    step: np.ndarray,
    normal: np.ndarray,
    labels: list[str],
    series_uid: str,
    tol: float,
) -> None:
    """Every slice origin lies on the line origin + k * step (in-plane drift is not allowed)."""
    expected = p[0] + np.arange(len(p))[:, None] * step
    off = p - expected
    off -= np.outer(off @ normal, normal)
    drift = np.linalg.norm(off, axis=1)
    worst = int(np.argmax(drift))
    if drift[worst] > tol:
        raise NonUniformSpacingError(
            f"instance {labels[worst]} is {drift[worst]:.3f} mm off the line through the other "
            f"slice positions (in-plane shift)",
            series_uid=series_uid,
        )


def projection_affine(pixel_spacing: tuple[float, float] | None) -> np.ndarray:
    """Affine of a single projection image (CR/DX) without patient geometry.

    Identity orientation, origin 0; unknown pixel spacing counts as 1 mm.
    """
    dr, dc = pixel_spacing if pixel_spacing is not None else (1.0, 1.0)
    return np.diag([dc, dr, 1.0, 1.0])


def plan_frames(frames: Sequence[Frame], series_uid: str, tolerance_mm: float) -> StackPlan:
    """Check the frames of one series and decide their order and affine.

    Raises:
        PreprocessingError subclasses describing the first geometric defect found.
    """
    placed = [f.position is not None and f.orientation is not None for f in frames]
    if not all(placed):
        bad = frames[placed.index(False)]
        if bad.modality in PROJECTION_MODALITIES and not any(placed):
            if len(frames) > 1:
                raise UnsupportedSeriesError(
                    f"{len(frames)} projection images without patient geometry cannot be "
                    "stacked; load them one at a time",
                    series_uid=series_uid,
                )
            return StackPlan([0], projection_affine(bad.pixel_spacing), np.zeros(1))
        missing = "ImagePositionPatient" if bad.position is None else "ImageOrientationPatient"
        raise UnreadableInstanceError(f"instance {bad.label}: no {missing}", series_uid=series_uid)
    for frame in frames:
        if frame.pixel_spacing is None:
            raise UnreadableInstanceError(
                f"instance {frame.label}: no PixelSpacing", series_uid=series_uid
            )
    check_same_grid(frames, series_uid)
    spacing = frames[0].pixel_spacing
    assert spacing is not None
    orientation = check_same_orientation(frames, series_uid)
    positions = np.array([f.position for f in frames], dtype=np.float64)
    far = ~np.all(np.abs(positions) < MAX_COORDINATE_MM, axis=1)
    if far.any():
        raise UnreadableInstanceError(
            f"instance {frames[int(np.argmax(far))].label}: ImagePositionPatient is not within "
            f"{MAX_COORDINATE_MM:.0f} mm of the origin",
            series_uid=series_uid,
        )
    meta = frames[0].metadata
    single = meta.get("SpacingBetweenSlices") or meta.get("SliceThickness")
    if not isinstance(single, int | float) or not 0 < single < MAX_COORDINATE_MM:
        single = 1.0
    return plan_stack(
        positions,
        [f.label for f in frames],
        orientation,
        spacing,
        series_uid=series_uid,
        tolerance_mm=tolerance_mm,
        single_slice_step_mm=float(single),
    )
