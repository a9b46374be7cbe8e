"""CT phantoms in Hounsfield units (HU): a head with an optional haemorrhage, a chest with an
optional nodule (and, from :mod:`models.synthetic.abdomen`, an abdomen with an organ label map).
Volumes are indexed ``[slice, row, column]`` and sampled analytically at the voxel centres of a
:class:`SeriesGeometry`, so gantry tilt is exact."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from models.synthetic import abdomen
from models.synthetic.geometry import FloatArray, SeriesGeometry
from models.synthetic.spec import StudyKind, StudySpec, seeded_int

HU_AIR = -1000.0
HU_FAT = -100.0
HU_LUNG = -850.0
HU_CSF = 5.0
HU_BRAIN = 35.0
HU_SOFT_TISSUE = 40.0
HU_BONE = 1000.0
HU_CANCELLOUS = 750.0
NOISE_SD_HU = 5.0
HEAD_FOV_MM = 240.0
CHEST_FOV_MM = 350.0

Point = tuple[float, float, float]
BoolVolume = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Lesion:
    """A planted finding: nominal centre (LPS, mm), size (mm) and density (HU)."""

    finding_type: str
    centre_mm: Point
    diameter_mm: float
    attenuation_hu: float


@dataclass(frozen=True)
class CtPhantom:
    """HU volume ``[slice, row, column]`` (float32, noise included), the lesion mask and, for
    ct-abdomen, the organ label map (uint8, same indexing, ``abdomen.ORGAN_LABELS``)."""

    hu: npt.NDArray[np.float32]
    mask: BoolVolume | None
    lesion: Lesion | None
    labels: npt.NDArray[np.uint8] | None = None


class _Painter:
    """Paints analytic shapes into a HU volume, touching only each shape's bounding box."""

    def __init__(self, geometry: SeriesGeometry, background_hu: float) -> None:
        self.x, self.y, self.z = geometry.axes()
        shape = (geometry.slices, geometry.rows, geometry.columns)
        self.hu = np.full(shape, background_hu, dtype=np.float32)

    def ellipsoid(
        self,
        centre: Point,
        semi_axes_mm: tuple[float, float, float | None],
        value_hu: float | None,
        mask: BoolVolume | None = None,
    ) -> None:
        """Fill an ellipsoid (``c=None``: an elliptic cylinder along z) with ``value_hu``.

        When ``mask`` is given the shape is OR-ed into it as well.
        """
        cx, cy, cz = centre
        a, b, c = semi_axes_mm
        qx = (((self.x - cx) / a) ** 2).astype(np.float32)
        qyz_mm = ((self.y - cy) / b) ** 2
        if c is not None:
            qyz_mm = qyz_mm + ((self.z - cz) / c) ** 2
        qyz = qyz_mm.astype(np.float32)
        box = _bounding_box(qx, qyz)
        if box is None:
            return
        ks, js, is_ = box
        inside = (qyz[ks, js] + qx[:, :, is_]) <= 1.0
        if value_hu is not None:
            np.copyto(self.hu[ks, js, is_], np.float32(value_hu), where=inside)
        if mask is not None:
            mask[ks, js, is_] |= inside

    def ribs(self, semi_axes_mm: tuple[float, float], pitch_mm: float, value_hu: float) -> None:
        """Rib arcs: a thin elliptic ring in z-bands that slope down anteriorly; no ribs over
        the anterior midline (the sternum is there)."""
        a, b = semi_axes_mm
        r = np.sqrt((self.x / a) ** 2 + (self.y / b) ** 2)
        ring = (r >= 0.90) & (r <= 0.97)
        phase = np.mod((self.z + 0.35 * self.y) / pitch_mm, 1.0)
        band = phase < 0.33
        anterior_midline = (np.abs(self.x) < 30.0) & (self.y < 0.0)
        np.copyto(self.hu, np.float32(value_hu), where=ring & band & ~anterior_midline)

    def finish(self, rng: np.random.Generator) -> npt.NDArray[np.float32]:
        """Add quantum-like Gaussian noise (SD ``NOISE_SD_HU``) and return the volume."""
        noise = rng.standard_normal(self.hu.shape, dtype=np.float32)
        noise *= np.float32(NOISE_SD_HU)
        self.hu += noise
        return self.hu


def _bounding_box(
    qx: npt.NDArray[np.float32], qyz: npt.NDArray[np.float32]
) -> tuple[slice, slice, slice] | None:
    cols = np.flatnonzero(qx[0, 0] <= 1.0)
    k_idx, j_idx = np.nonzero(qyz[:, :, 0] <= 1.0)
    if cols.size == 0 or k_idx.size == 0:
        return None
    return (
        slice(int(k_idx.min()), int(k_idx.max()) + 1),
        slice(int(j_idx.min()), int(j_idx.max()) + 1),
        slice(int(cols.min()), int(cols.max()) + 1),
    )


def head_geometry(
    *, matrix: int, slices: int, slice_thickness_mm: float, gantry_tilt_deg: float
) -> SeriesGeometry:
    """Head protocol: 240 mm FOV centred on the brain, inferior slice first."""
    return SeriesGeometry.axial(
        matrix=matrix,
        fov_mm=HEAD_FOV_MM,
        slices=slices,
        slice_thickness_mm=slice_thickness_mm,
        centre_mm=(0.0, 0.0, 10.0),
        gantry_tilt_deg=gantry_tilt_deg,
    )


def chest_geometry(*, matrix: int, slices: int, slice_thickness_mm: float) -> SeriesGeometry:
    """Chest protocol: 350 mm FOV, lung bases to apices, inferior slice first."""
    return SeriesGeometry.axial(
        matrix=matrix,
        fov_mm=CHEST_FOV_MM,
        slices=slices,
        slice_thickness_mm=slice_thickness_mm,
        centre_mm=(0.0, 0.0, 0.0),
    )


BRAIN_SEMI_AXES_MM = (66.0, 86.0, 76.0)


def ct_head(geometry: SeriesGeometry, rng: np.random.Generator, finding: bool) -> CtPhantom:
    """Neck, scalp, skull (~+1000 HU), brain (~+35 HU), lateral ventricles (~+5 HU) in air;
    with ``finding`` an intraparenchymal haemorrhage of +60..+80 HU."""
    p = _Painter(geometry, HU_AIR)
    p.ellipsoid((0.0, 5.0, -120.0), (48.0, 52.0, 60.0), HU_SOFT_TISSUE)  # neck
    p.ellipsoid((0.0, 25.0, -120.0), (11.0, 11.0, 55.0), HU_CANCELLOUS)  # cervical spine
    p.ellipsoid((0.0, 0.0, 0.0), (79.0, 99.0, 89.0), HU_SOFT_TISSUE)  # scalp
    p.ellipsoid((0.0, 0.0, 0.0), (75.0, 95.0, 85.0), HU_BONE)  # skull outer table
    p.ellipsoid((0.0, 0.0, 0.0), BRAIN_SEMI_AXES_MM, HU_BRAIN)
    for side in (-1.0, 1.0):
        p.ellipsoid((side * 12.0, -5.0, 15.0), (6.0, 24.0, 11.0), HU_CSF)  # lateral ventricle
    mask: BoolVolume | None = None
    lesion: Lesion | None = None
    if finding:
        mask = np.zeros(p.hu.shape, dtype=bool)
        lesion = _place_haemorrhage(p, geometry, rng, mask)
    return CtPhantom(hu=p.finish(rng), mask=mask, lesion=lesion)


def _place_haemorrhage(
    p: _Painter, geometry: SeriesGeometry, rng: np.random.Generator, mask: BoolVolume
) -> Lesion:
    a, b, c = BRAIN_SEMI_AXES_MM
    z_lo, z_hi = _covered_z(geometry)
    for _ in range(200):
        diameter = float(rng.uniform(14.0, 36.0))
        r = diameter / 2.0
        centre = (
            float(rng.choice([-1.0, 1.0]) * rng.uniform(22.0, 40.0)),
            float(rng.uniform(-45.0, 45.0)),
            float(rng.uniform(max(-40.0, z_lo + r), min(50.0, z_hi - r))),
        )
        reach = [abs(v) + r + 4.0 for v in centre]
        if (reach[0] / a) ** 2 + (reach[1] / b) ** 2 + (reach[2] / c) ** 2 <= 1.0:
            break
    else:  # pragma: no cover - the brain is far larger than any haemorrhage
        raise RuntimeError("could not place a haemorrhage inside the brain")
    centre = _snap(geometry, centre)
    hu = float(rng.uniform(60.0, 80.0))
    elong = (float(rng.uniform(0.8, 1.2)), float(rng.uniform(0.7, 1.0)))
    p.ellipsoid(centre, (r, r * elong[0], r * elong[1]), hu, mask)
    lobe = (centre[0], centre[1] + 0.45 * r, centre[2] + 0.2 * r)
    p.ellipsoid(lobe, (0.6 * r, 0.6 * r, 0.6 * r), hu, mask)
    return Lesion("intracranial-hemorrhage", centre, diameter, hu)


LUNG_CENTRE_X_MM = 72.0
LUNG_SEMI_AXES_MM = (55.0, 75.0, 135.0)


def ct_chest(geometry: SeriesGeometry, rng: np.random.Generator, finding: bool) -> CtPhantom:
    """Body (fat, muscle), lungs (~-850 HU), heart and mediastinum, spine, sternum and rib arcs;
    with ``finding`` a solid spherical nodule of ~+40 HU, 6-20 mm, inside one lung."""
    p = _Painter(geometry, HU_AIR)
    p.ellipsoid((0.0, 0.0, 0.0), (165.0, 115.0, None), HU_FAT)
    p.ellipsoid((0.0, 0.0, 0.0), (152.0, 104.0, None), HU_SOFT_TISSUE)
    p.ribs((150.0, 103.0), pitch_mm=32.0, value_hu=HU_BONE)
    for side in (-1.0, 1.0):
        p.ellipsoid((side * LUNG_CENTRE_X_MM, 5.0, 10.0), LUNG_SEMI_AXES_MM, HU_LUNG)
    p.ellipsoid((22.0, -30.0, -55.0), (58.0, 50.0, 55.0), HU_SOFT_TISSUE)  # heart
    p.ellipsoid((0.0, 68.0, 0.0), (19.0, 17.0, None), HU_CANCELLOUS)  # vertebral bodies
    p.ellipsoid((0.0, 92.0, 0.0), (8.0, 8.0, None), HU_SOFT_TISSUE)  # spinal canal
    p.ellipsoid((0.0, -97.0, 0.0), (16.0, 7.0, None), HU_CANCELLOUS)  # sternum
    mask: BoolVolume | None = None
    lesion: Lesion | None = None
    if finding:
        mask = np.zeros(p.hu.shape, dtype=bool)
        lesion = _place_nodule(p, geometry, rng, mask)
    return CtPhantom(hu=p.finish(rng), mask=mask, lesion=lesion)


def _place_nodule(
    p: _Painter, geometry: SeriesGeometry, rng: np.random.Generator, mask: BoolVolume
) -> Lesion:
    a, b, c = LUNG_SEMI_AXES_MM
    z_lo, z_hi = _covered_z(geometry)
    diameter = float(rng.uniform(6.0, 20.0))
    r = diameter / 2.0
    side = float(rng.choice([-1.0, 1.0]))
    for _ in range(200):
        offset = (rng.uniform(-a, a), rng.uniform(-b, b), rng.uniform(-c, c))
        centre = (
            side * LUNG_CENTRE_X_MM + float(offset[0]),
            5.0 + float(offset[1]),
            10.0 + float(offset[2]),
        )
        reach = [abs(v) + r + 6.0 for v in offset]
        heart = ((centre[0] - 22.0) / 70.0) ** 2 + ((centre[1] + 30.0) / 62.0) ** 2
        heart += ((centre[2] + 55.0) / 67.0) ** 2
        in_cover = z_lo + r <= centre[2] <= z_hi - r
        inside = (reach[0] / a) ** 2 + (reach[1] / b) ** 2 + (reach[2] / c) ** 2 <= 1
        if inside and heart > 1 and in_cover:
            break
    else:  # pragma: no cover - the lungs are far larger than any nodule
        raise RuntimeError("could not place a nodule inside the lung")
    centre = _snap(geometry, centre)
    p.ellipsoid(centre, (r, r, r), HU_SOFT_TISSUE, mask)
    if not mask.any():  # sub-voxel nodule on a coarse test matrix: keep its centre voxel
        i, j, k = geometry.nearest_voxel(centre)
        mask[k, j, i] = True
        p.hu[k, j, i] = HU_SOFT_TISSUE
    return Lesion("lung-nodule", centre, diameter, HU_SOFT_TISSUE)


def _covered_z(geometry: SeriesGeometry) -> tuple[float, float]:
    z = geometry.positions()[:, 2]
    return float(z.min()), float(z.max())


def _snap(geometry: SeriesGeometry, point: Point) -> Point:
    """Move ``point`` onto the nearest voxel centre so even tiny lesions hit voxels."""
    i, j, k = geometry.nearest_voxel(point)
    pos: FloatArray = geometry.voxel_to_patient(np.array([i]), np.array([j]), np.array([k]))[0]
    return (float(pos[0]), float(pos[1]), float(pos[2]))


def stored_values(hu: npt.NDArray[np.float32]) -> npt.NDArray[np.uint16]:
    """HU to 12-bit stored values (RescaleIntercept -1024, slope 1), clipped to 0..4095."""
    stored = np.rint(hu)
    stored += 1024.0
    np.clip(stored, 0.0, 4095.0, out=stored)
    return stored.astype(np.uint16)


def sphere_equivalent_diameter_mm(volume_ml: float) -> float:
    """Diameter (mm) of the sphere with the given volume (mL)."""
    return float((6.0 * volume_ml * 1000.0 / math.pi) ** (1.0 / 3.0))


def ct_series(spec: StudySpec) -> tuple[SeriesGeometry, CtPhantom]:
    """The geometry and phantom of a CT study spec, from the spec's own seeded generator.

    ``generate_study`` writes exactly this; training builds the same series in memory.
    """
    rng = np.random.default_rng(seeded_int("phantom", spec.kind.value, spec.seed))
    if spec.kind is StudyKind.CT_HEAD:
        geometry = head_geometry(
            matrix=spec.matrix,
            slices=spec.slices,
            slice_thickness_mm=spec.slice_thickness_mm,
            gantry_tilt_deg=spec.gantry_tilt_deg,
        )
        return geometry, ct_head(geometry, rng, spec.finding)
    if spec.kind is StudyKind.CT_ABDOMEN:
        geometry = abdomen.abdomen_geometry(
            matrix=spec.matrix, slices=spec.slices, slice_thickness_mm=spec.slice_thickness_mm
        )
        organs = abdomen.ct_abdomen(geometry, rng)
        return geometry, CtPhantom(hu=organs.hu, mask=None, lesion=None, labels=organs.labels)
    geometry = chest_geometry(
        matrix=spec.matrix, slices=spec.slices, slice_thickness_mm=spec.slice_thickness_mm
    )
    return geometry, ct_chest(geometry, rng, spec.finding)
