"""Acquisition geometry of a synthetic axial CT series in patient (LPS) coordinates, mm."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class SeriesGeometry:
    """Where every pixel of an axial series sits in LPS patient space.

    Rows run along ``column_direction`` and columns along ``row_direction`` (DICOM IOP
    convention). The table advances ``table_step_mm`` along +z between slices; with a gantry
    tilt the image plane is rotated about x, so the slice step is *not* parallel to the slice
    normal (as on a real scanner) and the spacing along the normal is ``step * cos(tilt)``.
    """

    rows: int
    columns: int
    pixel_spacing_mm: float
    slice_thickness_mm: float
    table_step_mm: float
    gantry_tilt_deg: float
    first_centre_mm: tuple[float, float, float]
    slices: int

    @classmethod
    def axial(
        cls,
        *,
        matrix: int,
        fov_mm: float,
        slices: int,
        slice_thickness_mm: float,
        centre_mm: tuple[float, float, float],
        gantry_tilt_deg: float = 0.0,
    ) -> SeriesGeometry:
        """Contiguous axial slices (step = thickness) centred on ``centre_mm``, inferior first."""
        step = slice_thickness_mm
        cx, cy, cz = centre_mm
        first = (cx, cy, cz - step * (slices - 1) / 2.0)
        return cls(
            rows=matrix,
            columns=matrix,
            pixel_spacing_mm=fov_mm / matrix,
            slice_thickness_mm=slice_thickness_mm,
            table_step_mm=step,
            gantry_tilt_deg=gantry_tilt_deg,
            first_centre_mm=first,
            slices=slices,
        )

    @property
    def row_direction(self) -> tuple[float, float, float]:
        """Direction cosines of a row (first IOP triplet): towards the patient's left."""
        return (1.0, 0.0, 0.0)

    @property
    def column_direction(self) -> tuple[float, float, float]:
        """Direction cosines of a column (second IOP triplet), tilted about x by the gantry."""
        t = math.radians(self.gantry_tilt_deg)
        return (0.0, _clean(math.cos(t)), _clean(math.sin(t)))

    @property
    def orientation(self) -> list[float]:
        """Image Orientation (Patient) as six direction cosines."""
        return [*self.row_direction, *self.column_direction]

    @property
    def spacing_along_normal_mm(self) -> float:
        """Distance between adjacent slice planes measured along their normal, mm."""
        return self.table_step_mm * math.cos(math.radians(self.gantry_tilt_deg))

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel (a parallelepiped under tilt) in millilitres."""
        return self.pixel_spacing_mm**2 * self.spacing_along_normal_mm / 1000.0

    def positions(self) -> FloatArray:
        """Image Position (Patient) of every slice, shape (slices, 3), mm."""
        half_r = (self.columns - 1) / 2.0 * self.pixel_spacing_mm
        half_c = (self.rows - 1) / 2.0 * self.pixel_spacing_mm
        row = np.array(self.row_direction)
        col = np.array(self.column_direction)
        k = np.arange(self.slices, dtype=np.float64)
        centres = np.array(self.first_centre_mm)[None, :] + np.outer(k, [0.0, 0.0, 1.0]) * (
            self.table_step_mm
        )
        return centres - half_r * row[None, :] - half_c * col[None, :]

    def axes(self) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Patient coordinates of voxel centres as broadcastable arrays, mm.

        Returns ``x`` of shape (1, 1, columns) and ``y``, ``z`` of shape (slices, rows, 1): the
        row direction is +x, so x depends on the column only and y, z on slice and row only.
        """
        ipp = self.positions()
        i = np.arange(self.columns, dtype=np.float64) * self.pixel_spacing_mm
        j = np.arange(self.rows, dtype=np.float64) * self.pixel_spacing_mm
        _, cy, cz = self.column_direction
        x = (ipp[0, 0] + i)[None, None, :]
        y = (ipp[:, 1][:, None] + cy * j[None, :])[:, :, None]
        z = (ipp[:, 2][:, None] + cz * j[None, :])[:, :, None]
        return x, y, z

    def voxel_to_patient(
        self, column: FloatArray, row: FloatArray, slice_: FloatArray
    ) -> FloatArray:
        """LPS positions (n, 3) of voxel indices (column i, row j, slice k), mm."""
        ipp = self.positions()
        row_dir = np.array(self.row_direction)
        col_dir = np.array(self.column_direction)
        k = np.asarray(slice_, dtype=np.float64)
        base = ipp[0][None, :] + np.outer(k, [0.0, 0.0, self.table_step_mm])
        return (
            base
            + np.outer(np.asarray(column, dtype=np.float64) * self.pixel_spacing_mm, row_dir)
            + np.outer(np.asarray(row, dtype=np.float64) * self.pixel_spacing_mm, col_dir)
        )

    def affine_lps(self) -> FloatArray:
        """4x4 voxel index ``(column, row, slice, 1)`` → LPS mm, as the DICOM loader builds it
        (``preprocessing.Volume.affine``): columns are row direction x spacing, column direction
        x spacing, the table step along z, and the first voxel's position."""
        affine = np.eye(4)
        s = self.pixel_spacing_mm
        affine[:3, 0] = np.array(self.row_direction) * s
        affine[:3, 1] = np.array(self.column_direction) * s
        affine[:3, 2] = (0.0, 0.0, self.table_step_mm)
        affine[:3, 3] = self.positions()[0]
        return affine

    def nearest_voxel(self, point_mm: tuple[float, float, float]) -> tuple[int, int, int]:
        """Indices (column, row, slice) of the voxel centre nearest to an LPS point."""
        ipp0 = self.positions()[0]
        d = np.array(point_mm) - ipp0
        _, cy, cz = self.column_direction
        # Solve d = i*s*x^ + j*s*(0,cy,cz) + k*step*z^ for (i, j, k).
        i = d[0] / self.pixel_spacing_mm
        j = d[1] / (self.pixel_spacing_mm * cy)
        k = (d[2] - j * self.pixel_spacing_mm * cz) / self.table_step_mm
        return (
            int(np.clip(round(i), 0, self.columns - 1)),
            int(np.clip(round(j), 0, self.rows - 1)),
            int(np.clip(round(k), 0, self.slices - 1)),
        )


def _clean(value: float) -> float:
    """Round direction cosines so 0 and 1 are exact (avoids 6.1e-17 in the header)."""
    return round(value, 12) + 0.0
