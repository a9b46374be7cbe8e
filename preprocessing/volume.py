"""The model-ready intermediate: a 3D image in Hounsfield units (or stored values) with its affine.

Conventions (tested in ``tests/test_geometry.py``):

* ``array`` is indexed ``[i, j, k]`` = ``[column, row, slice]``, the order MONAI and NIfTI use.
  It is usually a transposed view of a C-contiguous ``(slice, row, column)`` buffer, so building it
  costs no copy.
* ``affine`` maps a homogeneous voxel index ``(i, j, k, 1)`` to the DICOM patient coordinate
  system in millimetres, which is **LPS** (x grows to the patient's Left, y to Posterior, z to
  Superior). Column 0 is ``row direction * column spacing``, column 1 is ``column direction * row
  spacing``, column 2 is the step between consecutive slice positions (for a gantry-tilted series
  it is not parallel to the slice normal, so the affine is sheared), column 3 is the position of
  the first voxel.
* ``affine_ras`` is the same mapping in **RAS** (NIfTI, MONAI's default), ``diag(-1, -1, 1, 1) @
  affine``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class Volume:
    """A reconstructed series.

    Attributes:
        array: Voxel values, float32, indexed ``[column, row, slice]``; Hounsfield units for CT.
        affine: 4x4 float64 voxel-index → LPS millimetres.
        series_uid: Series Instance UID.
        study_uid: Study Instance UID.
        modality: DICOM Modality (CT, CR, DX, ...).
        sop_instance_uids: SOP Instance UIDs in slice order (one per frame for multi-frame, the
            same UID repeated).
        frame_numbers: 1-based frame number of each slice inside its instance, in slice order
            (1 for single-frame instances); empty when unknown (every slice then frame 1).
        metadata: Non-identifying header values useful downstream (BodyPartExamined,
            SliceThickness, GantryDetectorTilt, ...). Never patient identity.
    """

    array: np.ndarray
    affine: np.ndarray
    series_uid: str
    study_uid: str
    modality: str
    sop_instance_uids: tuple[str, ...] = ()
    metadata: dict[str, object] = field(default_factory=dict)
    frame_numbers: tuple[int, ...] = ()

    @property
    def shape(self) -> tuple[int, int, int]:
        """Voxel counts ``(columns, rows, slices)``."""
        i, j, k = self.array.shape
        return (int(i), int(j), int(k))

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Distance between neighbouring voxel centres along i, j, k in millimetres."""
        norms = np.linalg.norm(self.affine[:3, :3], axis=0)
        return (float(norms[0]), float(norms[1]), float(norms[2]))

    @property
    def affine_ras(self) -> np.ndarray:
        """The affine in RAS millimetres (NIfTI / MONAI convention)."""
        ras: np.ndarray = LPS_TO_RAS @ self.affine
        return ras

    @property
    def is_sheared(self) -> bool:
        """True when the slice step is not perpendicular to the image plane (gantry tilt)."""
        cols = self.affine[:3, :3] / np.linalg.norm(self.affine[:3, :3], axis=0)
        normal = np.cross(cols[:, 0], cols[:, 1])
        return bool(abs(float(np.dot(normal, cols[:, 2]))) < 1.0 - 1e-6)


def axcodes(affine: np.ndarray, labels: tuple[str, str, str] = ("R", "A", "S")) -> str:
    """Axis codes of an affine: for each voxel axis, the patient direction it grows toward.

    With the default labels the affine must be in RAS (``Volume.affine_ras``); pass
    ``("L", "P", "S")`` for an LPS affine. Example: a standard axial CT gives ``"LPS"`` from its
    RAS affine, since column index grows to the patient's left.
    """
    opposite = {"R": "L", "L": "R", "A": "P", "P": "A", "S": "I", "I": "S"}
    codes = []
    for column in affine[:3, :3].T:
        axis = int(np.argmax(np.abs(column)))
        code = labels[axis]
        codes.append(code if column[axis] > 0 else opposite[code])
    return "".join(codes)
