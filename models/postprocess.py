"""From raw model outputs to findings: activation, threshold, components, measurements.

Everything here is a pure function of the outputs, the manifest's ``postprocessing`` and
``findings``, and the model grid's affine (RAS mm, from the preprocessing MetaTensor). Volumes
are in millilitres (voxel count x |det affine| mm³ / 1000), areas in mm², boxes both in model
voxels and in DICOM patient coordinates (LPS mm), so result objects never need the tensor.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from models.manifest import FindingSpec, Manifest, Postprocessing

FloatArray = npt.NDArray[np.float64]
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class Region:
    """One connected component of a finding's mask on the model grid.

    Attributes:
        bbox_voxel: ``(i0, j0, k0, i1, j1, k1)`` inclusive model-grid voxel indices.
        bbox_mm_lps: ``(x0, y0, z0, x1, y1, z1)`` min/max voxel-centre corners, LPS mm.
        volume_ml: Component volume, millilitres.
        probability: Highest voxel probability inside the component.
        key_slice: Model-grid slice index (third axis) where the component is largest.
        key_slice_bbox_voxel: ``(i0, j0, i1, j1)`` of the component on the key slice.
        area_mm2: Component area on the key slice, square millimetres.
    """

    bbox_voxel: tuple[int, ...]
    bbox_mm_lps: tuple[float, ...]
    volume_ml: float
    probability: float
    key_slice: int
    key_slice_bbox_voxel: tuple[int, int, int, int]
    area_mm2: float


@dataclass(frozen=True)
class Finding:
    """A finding of one study as the model reports it (no patient identity).

    ``volume_ml`` sums all kept regions; ``key_slice``, ``bbox_*`` and ``area_mm2`` describe the
    largest one. Map-free findings (classifiers) have only ``present`` and ``probability``.
    """

    name: str
    concept_value: str
    concept_scheme: str
    concept_meaning: str
    critical: bool
    present: bool
    probability: float
    volume_ml: float | None = None
    key_slice: int | None = None
    bbox_voxel: tuple[int, ...] | None = None
    bbox_mm_lps: tuple[float, ...] | None = None
    key_slice_bbox_voxel: tuple[int, int, int, int] | None = None
    area_mm2: float | None = None
    regions: list[Region] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-serialisable)."""
        return asdict(self)


def activate(values: np.ndarray, activation: str) -> FloatArray:
    """Apply ``sigmoid``, ``softmax`` (over axis 0, the channel axis) or ``none``."""
    x = np.asarray(values, dtype=np.float64)
    if activation == "sigmoid":
        out: FloatArray = 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free logistic
        return out
    if activation == "softmax":
        e = np.exp(x - x.max(axis=0, keepdims=True))
        return e / e.sum(axis=0, keepdims=True)
    return x


def voxel_volume_ml(affine: np.ndarray) -> float:
    """Volume of one voxel of the grid, millilitres."""
    return float(abs(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3]))) / 1000.0


def pixel_area_mm2(affine: np.ndarray) -> float:
    """Area of one voxel face in the (i, j) plane, square millimetres."""
    a = np.asarray(affine, dtype=np.float64)
    return float(np.linalg.norm(np.cross(a[:3, 0], a[:3, 1])))


def postprocess(
    outputs: Mapping[str, np.ndarray], manifest: Manifest, affine_ras: np.ndarray, index: int = 0
) -> list[Finding]:
    """Findings of item ``index`` of a batch.

    Args:
        outputs: Raw outputs by name, each with the batch axis first.
        manifest: Supplies ``postprocessing`` and ``findings``.
        affine_ras: 4x4 model-grid voxel index → RAS mm (the preprocessing MetaTensor's affine).
        index: Which batch item.
    """
    return [
        finding_of(outputs[spec.output][index], spec, manifest.postprocessing, affine_ras)
        for spec in manifest.findings
    ]


def finding_of(
    output: np.ndarray, spec: FindingSpec, rules: Postprocessing, affine_ras: np.ndarray
) -> Finding:
    """One finding from one item's output ``(C, ...)``: a vector (classifier) or a map."""
    prob = activate(output, rules.activation)
    if prob.ndim >= 1 and prob.shape[0] > spec.channel:
        prob = prob[spec.channel]
    base = Finding(
        name=spec.name,
        concept_value=spec.concept.value,
        concept_scheme=spec.concept.scheme,
        concept_meaning=spec.concept.meaning,
        critical=spec.critical,
        present=False,
        probability=0.0,
    )
    if prob.ndim <= 1:  # a classifier: one probability per finding
        p = float(np.ravel(prob)[0])
        return replace(base, present=p >= rules.presence_threshold, probability=p)
    if prob.ndim == 2:
        prob = prob[:, :, None]
    regions = find_regions(prob, rules, affine_ras)
    kept_p = max((r.probability for r in regions), default=None)
    # With nothing kept, the map's maximum still ranks the study (for ROC); it is never present.
    p = kept_p if kept_p is not None else float(prob.max(initial=0.0))
    present = kept_p is not None and kept_p >= rules.presence_threshold
    if not regions:
        return replace(base, present=present, probability=p, volume_ml=0.0)
    largest = max(regions, key=lambda r: r.volume_ml)
    return replace(
        base,
        present=present,
        probability=p,
        volume_ml=float(sum(r.volume_ml for r in regions)),
        key_slice=largest.key_slice,
        bbox_voxel=largest.bbox_voxel,
        bbox_mm_lps=largest.bbox_mm_lps,
        key_slice_bbox_voxel=largest.key_slice_bbox_voxel,
        area_mm2=largest.area_mm2,
        regions=regions,
    )


def find_regions(prob: np.ndarray, rules: Postprocessing, affine_ras: np.ndarray) -> list[Region]:
    """Threshold a probability map ``(X, Y, Z)``, split it into components, drop small ones.

    Components are 26-connected; each smaller than ``min_volume_ml`` (3D maps) or whose key-slice
    area is below ``min_area_mm2`` is dropped. Without ``connected_components`` the whole mask
    is one region. Regions are returned largest first.
    """
    mask = prob > rules.voxel_threshold
    if not mask.any():
        return []
    if rules.connected_components:
        labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    else:
        labels, count = mask.astype(np.int32), 1
    voxel_ml = voxel_volume_ml(affine_ras)
    face_mm2 = pixel_area_mm2(affine_ras)
    regions = []
    for label in range(1, count + 1):
        component = labels == label
        region = _measure(component, prob, affine_ras, voxel_ml, face_mm2)
        three_d = prob.shape[2] > 1
        if three_d and region.volume_ml < rules.min_volume_ml:
            continue
        if region.area_mm2 < rules.min_area_mm2:
            continue
        regions.append(region)
    return sorted(regions, key=lambda r: -r.volume_ml)


def _measure(
    component: np.ndarray, prob: np.ndarray, affine_ras: np.ndarray, voxel_ml: float, face: float
) -> Region:
    idx = np.argwhere(component)
    lo, hi = idx.min(axis=0), idx.max(axis=0)
    per_slice = component.sum(axis=(0, 1))
    key = int(np.argmax(per_slice))
    on_key = np.argwhere(component[:, :, key])
    corners = np.array([[*lo, 1.0], [*hi, 1.0]], dtype=np.float64).T
    lps = (_RAS_TO_LPS @ np.asarray(affine_ras, dtype=np.float64) @ corners)[:3]
    return Region(
        bbox_voxel=tuple(int(v) for v in (*lo, *hi)),
        bbox_mm_lps=tuple(float(v) for v in (*lps.min(axis=1), *lps.max(axis=1))),
        volume_ml=float(idx.shape[0]) * voxel_ml,
        probability=float(prob[component].max()),
        key_slice=key,
        key_slice_bbox_voxel=(
            int(on_key[:, 0].min()),
            int(on_key[:, 1].min()),
            int(on_key[:, 0].max()),
            int(on_key[:, 1].max()),
        ),
        area_mm2=float(on_key.shape[0]) * face,
    )
