"""From an engine result to the router's ``AIResult``: findings placed on the source images.

The model sees a resampled grid; radiologists see the source instances. Boxes are projected
from LPS millimetres onto the source slice nearest to the finding's centre, and the label map
is resampled (nearest neighbour) from the model grid onto the source grid, so GSPS, secondary
capture and SEG refer to the images in the PACS.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np
import pydicom
from pydicom.multival import MultiValue
from scipy import ndimage

from models.manifest import Manifest
from models.postprocess import Finding, label_map
from preprocessing.enhanced import frame_geometries, is_enhanced
from router.objects.common import identity_modules
from router.result import AIResult, Algorithm, KeyImage, Mode, SourceInstance, StudyIdentity

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
_REVERSE_AXES = np.array(
    [[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64
)  # voxel index [slice, row, column] → [column, row, slice]


def study_identity(ds: pydicom.Dataset) -> StudyIdentity:
    """The identity of the study ``ds`` belongs to (copied verbatim into result objects).

    Carries the source's whole patient and study modules (``modules``) besides the fields.
    A multi-valued element (e.g. a Patient Name with VM 2, which some sources write) gives
    its first value, never pydicom's list text ``[A^B, C]``.
    """
    return StudyIdentity(
        patient_id=first_value(ds, "PatientID"),
        patient_name=first_value(ds, "PatientName"),
        study_instance_uid=str(ds.StudyInstanceUID),
        accession_number=first_value(ds, "AccessionNumber"),
        patient_birth_date=first_value(ds, "PatientBirthDate"),
        patient_sex=first_value(ds, "PatientSex"),
        study_id=first_value(ds, "StudyID"),
        study_date=first_value(ds, "StudyDate"),
        study_time=first_value(ds, "StudyTime"),
        referring_physician_name=first_value(ds, "ReferringPhysicianName"),
        study_description=first_value(ds, "StudyDescription"),
        issuer_of_patient_id=first_value(ds, "IssuerOfPatientID"),
        modules=identity_modules(ds),
    )


def first_value(ds: pydicom.Dataset, keyword: str) -> str:
    """The text of the element's first value; "" when absent or empty."""
    value = ds.get(keyword, "")
    if isinstance(value, MultiValue):
        return str(value[0]) if len(value) else ""
    return "" if value is None else str(value)


def source_instance(ds: pydicom.Dataset, path: str) -> SourceInstance:
    """Geometry of one source instance (header only)."""
    ipp = ds.get("ImagePositionPatient")
    iop = ds.get("ImageOrientationPatient")
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    return SourceInstance(
        sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=str(ds.SOPClassUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        position_lps=(float(ipp[0]), float(ipp[1]), float(ipp[2])) if ipp else None,
        orientation=tuple(float(v) for v in iop) if iop else None,  # type: ignore[arg-type]
        pixel_spacing_mm=(float(spacing[0]), float(spacing[1])) if spacing else None,
        path=path,
    )


def source_frames(ds: pydicom.Dataset, path: str) -> list[SourceInstance]:
    """Every plane of one source instance: itself, or each frame of a multi-frame instance.

    Frames of an enhanced instance take their position, orientation and spacing from its
    functional groups (per-frame first, then shared); frames of a multi-frame instance without
    them share the instance's own header geometry (if any). Header only.
    """
    single = source_instance(ds, path)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames <= 1:
        return [single]
    if not (is_enhanced(ds) and "PerFrameFunctionalGroupsSequence" in ds):
        return [
            dataclasses.replace(single, frame=n, number_of_frames=frames)
            for n in range(1, frames + 1)
        ]
    planes = []
    for n, geometry in enumerate(frame_geometries(ds, frames), 1):
        orientation = geometry.orientation
        planes.append(
            dataclasses.replace(
                single,
                position_lps=geometry.position or single.position_lps,
                orientation=(
                    (
                        orientation[0],
                        orientation[1],
                        orientation[2],
                        orientation[3],
                        orientation[4],
                        orientation[5],
                    )
                    if orientation is not None
                    else single.orientation
                ),
                pixel_spacing_mm=geometry.pixel_spacing or single.pixel_spacing_mm,
                frame=n,
                number_of_frames=frames,
            )
        )
    return planes


def algorithm_of(manifest: Manifest) -> Algorithm:
    """Algorithm identification of a model version; the device UID is derived from its ident."""
    digest = hashlib.sha256(f"statlane-model-device:{manifest.ident}".encode()).hexdigest()
    return Algorithm(
        name=manifest.name,
        version=str(manifest.version),
        manufacturer=manifest.manufacturer,
        device_uid=f"2.25.{int(digest[:30], 16)}",
    )


def _plane(instance: SourceInstance) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    assert instance.position_lps is not None and instance.orientation is not None
    origin = np.asarray(instance.position_lps, dtype=np.float64)
    row_dir = np.asarray(instance.orientation[:3], dtype=np.float64)
    col_dir = np.asarray(instance.orientation[3:], dtype=np.float64)
    return origin, row_dir, col_dir, np.cross(row_dir, col_dir)


def key_image(finding: Finding, instances: Sequence[SourceInstance]) -> KeyImage | None:
    """The source slice nearest the centre of ``finding``'s box and the box on it (pixels).

    A single projection image without patient geometry (a CR or DX without Image Position and
    Orientation) is placed as the loader placed it (:func:`preprocessing.geometry.
    projection_affine`: origin 0, identity orientation, 1 mm for an unknown pixel spacing), so
    its boxes land on it too. Returns None for findings without a box (classifiers, absent
    findings) and for several planes without geometry.
    """
    if finding.bbox_mm_lps is None or not finding.present:
        return None
    placed = [i for i in instances if i.position_lps is not None and i.orientation is not None]
    lo = np.asarray(finding.bbox_mm_lps[:3], dtype=np.float64)
    hi = np.asarray(finding.bbox_mm_lps[3:], dtype=np.float64)
    if placed:
        centre = (lo + hi) / 2.0
        _, _, _, normal = _plane(placed[0])
        nearest = min(placed, key=lambda i: abs(float(np.dot(centre - _plane(i)[0], normal))))
        origin, row_dir, col_dir, _ = _plane(nearest)
    elif len(instances) == 1:
        nearest = instances[0]
        origin = np.zeros(3)
        row_dir, col_dir = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    else:
        return None
    row_mm, col_mm = nearest.pixel_spacing_mm or (1.0, 1.0)
    corners = np.array(
        [[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
    )
    cols = (corners - origin) @ row_dir / col_mm
    rows = (corners - origin) @ col_dir / row_mm
    clip_c = (0.0, float(nearest.columns - 1))
    clip_r = (0.0, float(nearest.rows - 1))
    return KeyImage(
        finding=finding.name,
        sop_instance_uid=nearest.sop_instance_uid,
        frame=nearest.frame,
        box_px=(
            float(np.clip(cols.min(), *clip_c)),
            float(np.clip(rows.min(), *clip_r)),
            float(np.clip(cols.max(), *clip_c)),
            float(np.clip(rows.max(), *clip_r)),
        ),
    )


def mask_on_source(
    outputs: Mapping[str, np.ndarray],
    manifest: Manifest,
    model_affine_ras: np.ndarray,
    source_affine_lps: np.ndarray,
    source_shape: tuple[int, int, int],
    *,
    labels: np.ndarray | None = None,
) -> np.ndarray | None:
    """The model's label map (:func:`models.postprocess.label_map`) on the source grid.

    Nearest neighbour, like MONAI ``Invertd`` followed by discretisation: every source voxel
    takes the label of the model voxel its centre falls in (0 outside the model grid).

    Args:
        outputs: Raw outputs of one item (batch axis removed), ``(C, X, Y, Z)`` maps.
        manifest: Supplies the postprocessing rules and which output/channel each finding is.
        model_affine_ras: Model grid voxel → RAS mm.
        source_affine_lps: Source volume voxel ``[column, row, slice]`` → LPS mm.
        source_shape: Source volume shape ``(columns, rows, slices)``.
        labels: The model-grid label map when the caller has it already
            (:func:`models.postprocess.postprocess_with_labels`); computed from ``outputs``
            otherwise.

    Returns:
        ``(slices, rows, columns)`` unsigned integers, ``v > 0`` being ``manifest.findings[v - 1]``
        (0 background), or None when the model has no 3D map (classifier findings of a model
        that has one are never labelled).
    """
    if labels is None:
        labels = label_map(outputs, manifest, model_affine_ras)
    if labels is None or labels.ndim != 3:
        return None
    # source voxel [slice, row, column] → [column, row, slice] → LPS → RAS → model voxel
    matrix = np.linalg.inv(np.asarray(model_affine_ras, np.float64)) @ _RAS_TO_LPS
    matrix = matrix @ np.asarray(source_affine_lps, np.float64) @ _REVERSE_AXES
    columns, rows, slices = source_shape
    return resample_labels(labels, matrix, (slices, rows, columns))


def resample_labels(
    labels: np.ndarray,
    source_to_model: np.ndarray,
    source_shape: tuple[int, ...],
    *,
    fast: bool = True,
) -> np.ndarray:
    """Nearest-neighbour labels of every source voxel, ``source_shape`` (0 outside the grid).

    Args:
        labels: Label map on the model grid, 3 axes.
        source_to_model: 4x4 source voxel index → model voxel index.
        source_shape: Output shape (source voxel axes).
        fast: Use per-axis index lookups when the map is axis-aligned (a permutation with
            scales and flips, the usual case after Orientation and Spacing); the result is the
            same as ``ndimage.affine_transform(order=0)``, which any other map uses.
    """
    matrix = np.array(source_to_model, dtype=np.float64)
    linear = matrix[:3, :3]
    # round-off of the inverse (1e-17 where a zero belongs) decides nothing in either path
    linear[np.abs(linear) < _SNAP * np.abs(linear).max()] = 0.0
    axes = _axis_permutation(linear)
    if fast and axes is not None:
        return _resample_axis_aligned(labels, matrix, axes, source_shape)
    return ndimage.affine_transform(
        labels,
        linear,
        offset=matrix[:3, 3],
        output_shape=tuple(source_shape),
        order=0,
        mode="grid-constant",  # a model voxel covers [c - 0.5, c + 0.5), edges included
        cval=0,
    )


_SNAP = 1e-12


def _axis_permutation(linear: np.ndarray) -> list[int] | None:
    """For each source axis the model axis it maps onto, or None for a sheared/rotated map."""
    nonzero = linear != 0.0
    if not (nonzero.sum(axis=0) == 1).all() or not (nonzero.sum(axis=1) == 1).all():
        return None
    return [int(np.flatnonzero(nonzero[:, s])[0]) for s in range(3)]


def _resample_axis_aligned(
    labels: np.ndarray, matrix: np.ndarray, axes: list[int], source_shape: tuple[int, ...]
) -> np.ndarray:
    """Axis-aligned nearest neighbour: one index lookup per axis (``np.take``).

    Matches ``ndimage.affine_transform(order=0, mode="grid-constant")`` exactly: the model
    coordinate ``c = scale * index + offset`` is computed the same way, a source voxel whose
    centre lies inside a model voxel (``-0.5 <= c < n - 0.5``) takes that voxel
    ``floor(c + 0.5)``, any other voxel 0.
    """
    out = labels.transpose(axes)  # model axes in source axis order (a view)
    outside = []
    for s, a in enumerate(axes):
        coordinate = matrix[a, s] * np.arange(source_shape[s], dtype=np.float64) + matrix[a, 3]
        size = labels.shape[a]
        inside = (coordinate >= -0.5) & (coordinate < size - 0.5)  # the model voxels' extent
        index = np.clip(np.floor(coordinate + 0.5), 0, size - 1).astype(np.intp)
        out = np.take(out, index, axis=s)
        outside.append(~inside)
    for s, gone in enumerate(outside):
        if gone.any():
            where: list[Any] = [slice(None)] * 3
            where[s] = gone
            out[tuple(where)] = 0
    return out


def build_result(
    *,
    task_id: str,
    study: StudyIdentity,
    instances: Sequence[SourceInstance],
    manifest: Manifest,
    findings: Sequence[Finding],
    completed_at: datetime,
    mode: Mode,
    mask: np.ndarray | None = None,
) -> AIResult:
    """Assemble the router's view of one task's result."""
    keys = tuple(k for k in (key_image(f, instances) for f in findings) if k is not None)
    return AIResult(
        task_id=task_id,
        study=study,
        source_instances=tuple(instances),
        algorithm=algorithm_of(manifest),
        findings=tuple(findings),
        completed_at=completed_at,
        key_images=keys,
        mask=mask if mask is not None and mask.any() else None,
        mode=mode,
    )
