"""CT abdomen phantom in Hounsfield units (HU) with an organ label map (spleen, liver).

Anatomy of an adult abdomen in LPS millimetres (x to the patient's left, y posterior, z
superior; z = 0 is about the L1 vertebra): body wall (fat, muscle, lower ribs), lung bases and
heart at the top, liver on the patient's right (image left), spleen posterior on the patient's
left, stomach, colon and small bowel, kidneys, psoas, aorta and IVC, spine with discs and, low
down, bladder and iliac wings. Liver and spleen are smooth blobs whose size, position and
surface vary with the seed; the study is non-contrast (liver ~60 HU, spleen ~47 HU, blood ~45).

Volumes are indexed ``[slice, row, column]`` like :mod:`models.synthetic.phantom`. Every paint
also writes the label map (0 where the shape is not an organ), so labels and HU agree voxel for
voxel: a voxel is labelled spleen exactly when spleen tissue was the last thing painted there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from models.synthetic.geometry import SeriesGeometry

LABEL_BACKGROUND = 0
LABEL_SPLEEN = 1
LABEL_LIVER = 2
ORGAN_LABELS = {"spleen": LABEL_SPLEEN, "liver": LABEL_LIVER}
"""Values of the label map: 0 background, 1 spleen, 2 liver."""

HU_AIR = -1000.0
HU_LUNG = -850.0
HU_FAT = -100.0
HU_VISCERAL_FAT = -90.0
HU_SINUS_FAT = -80.0
HU_WATER = 8.0
"""Bile, urine and gastric fluid."""
HU_CSF = 15.0
HU_BOWEL_WALL = 30.0
HU_KIDNEY = 32.0
HU_MUSCLE = 40.0
HU_BLOOD = 45.0
HU_SPLEEN = 47.0
HU_LIVER = 60.0
HU_DISC = 85.0
HU_CANCELLOUS = 400.0
HU_ILIUM = 650.0
HU_POSTERIOR_ELEMENTS = 700.0
HU_CORTICAL = 950.0
NOISE_SD_HU = 8.0
ABDOMEN_FOV_MM = 380.0
TOP_Z_MM = 115.0
"""z of the most superior slice centre: just above the liver dome, in the lung bases."""

INF = math.inf
Point = tuple[float, float, float]
Interval = tuple[float, float]
Bounds = tuple[Interval, Interval, Interval]
F32 = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]


class Region(Protocol):
    """A solid in LPS mm: a bounding box and a membership test on broadcastable arrays."""

    @property
    def prism(self) -> bool:
        """True when membership does not depend on z inside the bounding box."""
        ...

    def bounds_mm(self) -> Bounds:
        """(x, y, z) intervals that hold the whole solid, mm (may be infinite)."""
        ...

    def inside(self, x: F32, y: F32, z: F32) -> BoolArray:
        """True at points of the solid; ``x`` is (1, 1, n), ``y`` and ``z`` are (k, j, 1)."""
        ...


@dataclass(frozen=True)
class Ellipsoid:
    """An ellipsoid with semi-axes (u, v, w) in mm; u and v are rotated ``angle_deg`` about z
    (from +x towards +y). ``w=None`` makes an elliptic cylinder along z, cut to ``z_range``."""

    centre: Point
    semi: tuple[float, float, float | None]
    angle_deg: float = 0.0
    z_range: Interval = (-INF, INF)

    @property
    def prism(self) -> bool:
        """Cylinders are prisms; their z range is the bounding box's."""
        return self.semi[2] is None

    def level(self, x: F32, y: F32, z: F32) -> F32:
        """The quadratic form: below 1 inside, 1 on the surface (dimensionless)."""
        cx, cy, cz = self.centre
        a, b, c = self.semi
        dx, dy = x - np.float32(cx), y - np.float32(cy)
        u, v = dx, dy
        if self.angle_deg:
            t = math.radians(self.angle_deg)
            cos, sin = np.float32(math.cos(t)), np.float32(math.sin(t))
            u, v = dx * cos + dy * sin, dy * cos - dx * sin
        q = np.square(v / np.float32(b))  # (k, j, 1) unless rotated: broadcast once, below
        if c is not None:
            q = q + np.square((z - np.float32(cz)) / np.float32(c))
        return q + np.square(u / np.float32(a))

    def inside(self, x: F32, y: F32, z: F32) -> BoolArray:
        """Points with level <= 1 (and within ``z_range``)."""
        hit: BoolArray = self.level(x, y, z) <= 1.0
        lo, hi = self.z_range
        if math.isfinite(lo) or math.isfinite(hi):
            hit &= (z >= lo) & (z <= hi)
        return hit

    def bounds_mm(self, inflate: float = 1.0) -> Bounds:
        """Bounding box of the solid grown by ``inflate`` (level <= inflate**2)."""
        cx, cy, cz = self.centre
        a, b, c = self.semi
        t = math.radians(self.angle_deg)
        hx = inflate * math.hypot(a * math.cos(t), b * math.sin(t))
        hy = inflate * math.hypot(a * math.sin(t), b * math.cos(t))
        zs = (-INF, INF) if c is None else (cz - inflate * c, cz + inflate * c)
        z = (max(zs[0], self.z_range[0]), min(zs[1], self.z_range[1]))
        return (cx - hx, cx + hx), (cy - hy, cy + hy), z

    def shrunk(self, mm: float) -> Ellipsoid:
        """The same ellipsoid with every semi-axis ``mm`` shorter (a wall of ``mm``)."""
        a, b, c = self.semi
        semi = (a - mm, b - mm, None if c is None else c - mm)
        return Ellipsoid(self.centre, semi, self.angle_deg, self.z_range)


@dataclass(frozen=True)
class Slab:
    """Points with ``lo <= coordinate <= hi`` along one axis (0 = x, 1 = y, 2 = z), mm."""

    axis: int
    lo: float
    hi: float

    @property
    def prism(self) -> bool:
        """A z slab is exactly its bounding box along z."""
        return True

    def bounds_mm(self) -> Bounds:
        """Infinite except along ``axis``."""
        box = [(-INF, INF)] * 3
        box[self.axis] = (self.lo, self.hi)
        return box[0], box[1], box[2]

    def inside(self, x: F32, y: F32, z: F32) -> BoolArray:
        """Compare the one coordinate (the result broadcasts against the others)."""
        value = (x, y, z)[self.axis]
        hit: BoolArray = (value >= self.lo) & (value <= self.hi)
        return hit


@dataclass(frozen=True)
class Intersection:
    """Points inside every one of ``parts``."""

    parts: tuple[Region, ...]

    @property
    def prism(self) -> bool:
        """A prism when every part is."""
        return all(part.prism for part in self.parts)

    def bounds_mm(self) -> Bounds:
        """The overlap of the parts' boxes."""
        return _overlap(*(part.bounds_mm() for part in self.parts))

    def inside(self, x: F32, y: F32, z: F32) -> BoolArray:
        """AND of the parts."""
        hit = self.parts[0].inside(x, y, z)
        for part in self.parts[1:]:
            hit = hit & part.inside(x, y, z)
        return hit


@dataclass(frozen=True)
class Banded:
    """``region`` only within bands ``width_mm`` thick repeating every ``pitch_mm`` along z."""

    region: Region
    pitch_mm: float
    width_mm: float
    phase_mm: float = 0.0

    @property
    def prism(self) -> bool:
        """Bands depend on z."""
        return False

    def bounds_mm(self) -> Bounds:
        """The region's box."""
        return self.region.bounds_mm()

    def inside(self, x: F32, y: F32, z: F32) -> BoolArray:
        """Region AND the z band."""
        band = np.mod(z - np.float32(self.phase_mm), np.float32(self.pitch_mm)) < self.width_mm
        return self.region.inside(x, y, z) & band


@dataclass(frozen=True)
class Wobble:
    """A smooth surface perturbation: levels are multiplied by
    ``1 + amplitude * sin(x) sin(y) sin(z)`` with the given wavelengths (mm) and phases (rad)."""

    amplitude: float
    wavelengths_mm: Point
    phases: Point

    @property
    def inflate(self) -> float:
        """How much a wobbled surface can stick out, as a factor on the level."""
        return 1.0 / (1.0 - self.amplitude)

    def factor(self, x: F32, y: F32, z: F32) -> F32:
        """The multiplier at each point (broadcast shape of x, y, z)."""
        (lx, ly, lz), (px, py, pz) = self.wavelengths_mm, self.phases
        sx = np.sin(x * np.float32(2.0 * math.pi / lx) + np.float32(px))
        syz = np.sin(y * np.float32(2.0 * math.pi / ly) + np.float32(py))
        syz = syz * np.sin(z * np.float32(2.0 * math.pi / lz) + np.float32(pz))
        return np.float32(1.0) + np.float32(self.amplitude) * (syz * sx)


SMOOTH_UNION = 0.3
"""Blend width of the smooth union of lobes, in units of the level."""


@dataclass(frozen=True)
class Blob:
    """A smooth organ: the smooth union of ``lobes`` with a seeded surface wobble, minus
    ``notches`` (a hilum), kept inside ``clip`` (the abdominal cavity)."""

    lobes: tuple[Ellipsoid, ...]
    wobble: Wobble
    clip: Region
    notches: tuple[Ellipsoid, ...] = ()

    @property
    def prism(self) -> bool:
        """Organs are three-dimensional."""
        return False

    def bounds_mm(self) -> Bounds:
        """The lobes' boxes grown for union blending and wobble, within the clip box."""
        grow = math.sqrt(self.wobble.inflate + SMOOTH_UNION / 4.0)
        (x, y, z), *rest = (lobe.bounds_mm(grow) for lobe in self.lobes)
        for bx, by, bz in rest:
            x, y, z = _hull(x, bx), _hull(y, by), _hull(z, bz)
        return _overlap((x, y, z), self.clip.bounds_mm())

    def inside(self, x: F32, y: F32, z: F32) -> BoolArray:
        """Blended level (wobbled) <= 1, inside the clip, outside every notch."""
        level = self.lobes[0].level(x, y, z)
        for lobe in self.lobes[1:]:
            level = _smooth_min(level, lobe.level(x, y, z), SMOOTH_UNION)
        hit: BoolArray = level * self.wobble.factor(x, y, z) <= 1.0
        hit &= self.clip.inside(x, y, z)
        for notch in self.notches:
            hit &= ~notch.inside(x, y, z)
        return hit


@dataclass(frozen=True)
class Ribs:
    """Lower rib arcs in the muscle wall: a thin elliptic ring in z bands that slope down
    anteriorly, only above the costal margin (which is lower at the back), none over the
    anterior midline."""

    semi_mm: tuple[float, float]
    ring: Interval = (0.92, 0.98)
    pitch_mm: float = 30.0
    costal_z_mm: float = -40.0
    costal_slope: float = 0.45
    """The margin: ribs where ``z >= costal_z_mm - costal_slope * y``."""

    @property
    def prism(self) -> bool:
        """Bands depend on z."""
        return False

    def bounds_mm(self) -> Bounds:
        """The muscle ellipse, from the lowest (posterior) costal level up."""
        a, b = self.semi_mm
        return (-a, a), (-b, b), (self.costal_z_mm - self.costal_slope * b, INF)

    def inside(self, x: F32, y: F32, z: F32) -> BoolArray:
        """Ring AND band AND above the margin AND not anterior midline."""
        a, b = self.semi_mm
        lo, hi = self.ring
        r2 = (y / np.float32(b)) ** 2 + (x / np.float32(a)) ** 2
        ring = (r2 >= lo * lo) & (r2 <= hi * hi)
        band = np.mod((z + np.float32(0.35) * y) / np.float32(self.pitch_mm), 1.0) < 0.33
        band &= z >= np.float32(self.costal_z_mm) - np.float32(self.costal_slope) * y
        midline = (np.abs(x) < 35.0) & (y < 0.0)
        hit: BoolArray = ring & band & ~midline
        return hit


def _hull(a: Interval, b: Interval) -> Interval:
    return (min(a[0], b[0]), max(a[1], b[1]))


def _overlap(*boxes: Bounds) -> Bounds:
    x, y, z = boxes[0]
    for bx, by, bz in boxes[1:]:
        x = (max(x[0], bx[0]), min(x[1], bx[1]))
        y = (max(y[0], by[0]), min(y[1], by[1]))
        z = (max(z[0], bz[0]), min(z[1], bz[1]))
    return x, y, z


def _smooth_min(a: F32, b: F32, k: float) -> F32:
    """Polynomial smooth minimum: min(a, b) with the crease rounded over a width ``k``."""
    h = np.clip(0.5 + 0.5 * (b - a) / np.float32(k), 0.0, 1.0)
    return b + (a - b) * h - np.float32(k) * h * (1.0 - h)


class _Painter:
    """Paints regions into a HU volume and its label map, touching only each bounding box."""

    def __init__(self, geometry: SeriesGeometry) -> None:
        x, y, z = geometry.axes()
        self.x, self.y, self.z = (v.astype(np.float32) for v in (x, y, z))
        self.untilted = geometry.gantry_tilt_deg == 0.0
        shape = (geometry.slices, geometry.rows, geometry.columns)
        self.hu = np.full(shape, HU_AIR, dtype=np.float32)
        self.labels = np.zeros(shape, dtype=np.uint8)
        self._labelled = False

    def paint(self, region: Region, value_hu: float, label: int = LABEL_BACKGROUND) -> None:
        """Set ``value_hu`` and ``label`` wherever ``region`` is (later paints win)."""
        box = self._box(region.bounds_mm())
        if box is None:
            return
        ks, js, is_ = box
        y, z = self.y[ks, js], self.z[ks, js]
        if region.prism and self.untilted:  # the same cross-section on every slice
            y, z = y[:1], z[:1]
        inside = region.inside(self.x[:, :, is_], y, z)
        np.copyto(self.hu[ks, js, is_], np.float32(value_hu), where=inside)
        if label != LABEL_BACKGROUND or self._labelled:  # nothing to clear before any organ
            np.copyto(self.labels[ks, js, is_], np.uint8(label), where=inside)
            self._labelled = True

    def _box(self, bounds: Bounds) -> tuple[slice, slice, slice] | None:
        (x0, x1), (y0, y1), (z0, z1) = bounds
        x = self.x[0, 0]
        cols = np.flatnonzero((x >= x0) & (x <= x1))
        y, z = self.y[:, :, 0], self.z[:, :, 0]
        k_idx, j_idx = np.nonzero((y >= y0) & (y <= y1) & (z >= z0) & (z <= z1))
        if cols.size == 0 or k_idx.size == 0:
            return None
        return (
            slice(int(k_idx.min()), int(k_idx.max()) + 1),
            slice(int(j_idx.min()), int(j_idx.max()) + 1),
            slice(int(cols.min()), int(cols.max()) + 1),
        )

    def finish(self, rng: np.random.Generator) -> F32:
        """Add Gaussian noise (SD ``NOISE_SD_HU``) and return the HU volume."""
        sd = np.float32(NOISE_SD_HU)
        for plane in self.hu:  # slice by slice: no volume-sized temporary (2-3x faster)
            plane += rng.standard_normal(plane.shape, dtype=np.float32) * sd
        return self.hu


@dataclass(frozen=True)
class AbdomenPhantom:
    """HU volume ``[slice, row, column]`` (float32, noise included) and the organ label map
    (uint8, same indexing, values :data:`ORGAN_LABELS`)."""

    hu: F32
    labels: npt.NDArray[np.uint8]


def abdomen_geometry(*, matrix: int, slices: int, slice_thickness_mm: float) -> SeriesGeometry:
    """Abdomen protocol: 380 mm FOV, the top slice at ``TOP_Z_MM`` (lung bases) and further
    slices reaching caudally, inferior slice first."""
    return SeriesGeometry.axial(
        matrix=matrix,
        fov_mm=ABDOMEN_FOV_MM,
        slices=slices,
        slice_thickness_mm=slice_thickness_mm,
        centre_mm=(0.0, 0.0, TOP_Z_MM - slice_thickness_mm * (slices - 1) / 2.0),
    )


BODY = Ellipsoid((0.0, 0.0, 0.0), (165.0, 122.0, None))
MUSCLE_SEMI_MM = (153.0, 110.0)
MUSCLE = Ellipsoid((0.0, 0.0, 0.0), (*MUSCLE_SEMI_MM, None))
CAVITY = Ellipsoid((0.0, 0.0, 0.0), (141.0, 98.0, None))
"""Inside the abdominal wall: where viscera may be."""
ORGAN_ROOM = CAVITY.shrunk(3.0)
"""Where liver and spleen may be: the cavity less 3 mm of fat against the wall."""
VERTEBRA = Ellipsoid((0.0, 55.0, 0.0), (21.0, 18.0, None))


def ct_abdomen(geometry: SeriesGeometry, rng: np.random.Generator) -> AbdomenPhantom:
    """Non-contrast abdomen with liver (label 2, ~60 HU) and spleen (label 1, ~47 HU); see the
    module docstring for the rest. No pathological finding."""
    liver, spleen = _liver(rng), _spleen(rng)  # drawn first: bowel changes do not move them
    p = _Painter(geometry)
    _body_wall(p)
    _thorax_base(p)
    _hollow_viscera(p, rng)
    _retroperitoneum(p)
    p.paint(liver, HU_LIVER, LABEL_LIVER)
    p.paint(spleen, HU_SPLEEN, LABEL_SPLEEN)
    _vessels_and_gallbladder(p)
    _skeleton(p)
    return AbdomenPhantom(hu=p.finish(rng), labels=p.labels)


def _variation(rng: np.random.Generator) -> tuple[Point, Point, Wobble]:
    """Per-organ scale (x, y, z: 0.93-1.07), shift (+-5 mm) and surface wobble."""
    scale = _triple(rng.uniform(0.93, 1.07, 3))
    shift = _triple(rng.uniform(-5.0, 5.0, 3))
    wobble = Wobble(
        amplitude=0.1,
        wavelengths_mm=_triple(rng.uniform(70.0, 130.0, 3)),
        phases=_triple(rng.uniform(0.0, 2.0 * math.pi, 3)),
    )
    return scale, shift, wobble


def _triple(values: npt.NDArray[np.float64]) -> Point:
    return (float(values[0]), float(values[1]), float(values[2]))


def _lobe(
    origin: Point,
    offset: Point,
    semi: Point,
    variation: tuple[Point, Point],
    angle_deg: float = 0.0,
) -> Ellipsoid:
    """An organ part at ``origin + offset``, offset and semi-axes (mm) scaled, then shifted."""
    (sx, sy, sz), (tx, ty, tz) = variation
    centre = (
        origin[0] + offset[0] * sx + tx,
        origin[1] + offset[1] * sy + ty,
        origin[2] + offset[2] * sz + tz,
    )
    return Ellipsoid(centre, (semi[0] * sx, semi[1] * sy, semi[2] * sz), angle_deg)


LIVER_ORIGIN = (-65.0, -5.0, 10.0)
SPLEEN_ORIGIN = (84.0, 46.0, 45.0)
SPLEEN_ANGLE_DEG = 40.0
"""The spleen's thickness axis points posterolaterally; its hilum faces anteromedially."""


def _liver(rng: np.random.Generator) -> Blob:
    """Right lobe (most of the volume, patient's right) blended with a left lobe that crosses
    the midline anteriorly: ~1.2-1.8 L."""
    scale, shift, wobble = _variation(rng)
    right = _lobe(LIVER_ORIGIN, (0.0, 0.0, 0.0), (62.0, 68.0, 78.0), (scale, shift))
    left = _lobe(LIVER_ORIGIN, (85.0, -40.0, 35.0), (55.0, 30.0, 38.0), (scale, shift))
    return Blob((right, left), wobble, ORGAN_ROOM)


def _spleen(rng: np.random.Generator) -> Blob:
    """A crescent against the posterolateral left wall, ~11 cm long, hilum notched: ~130-210 mL."""
    scale, shift, wobble = _variation(rng)
    semi = (22.0, 40.0, 52.0)
    body = _lobe(SPLEEN_ORIGIN, (0.0, 0.0, 0.0), semi, (scale, shift), SPLEEN_ANGLE_DEG)
    a, b, c = (s * k for s, k in zip(semi, scale, strict=True))
    t = math.radians(SPLEEN_ANGLE_DEG)
    cx, cy, cz = body.centre
    hilum = (cx - 0.95 * a * math.cos(t), cy - 0.95 * a * math.sin(t), cz)
    notch = Ellipsoid(hilum, (0.55 * a, 0.45 * b, 0.5 * c), SPLEEN_ANGLE_DEG)
    return Blob((body,), wobble, ORGAN_ROOM, (notch,))


def _body_wall(p: _Painter) -> None:
    """Subcutaneous fat, the muscle wall and the fat of the abdominal cavity."""
    p.paint(BODY, HU_FAT)
    p.paint(MUSCLE, HU_MUSCLE)
    p.paint(CAVITY, HU_VISCERAL_FAT)


def _thorax_base(p: _Painter) -> None:
    """Lung bases (painted before the organs, so the liver and spleen domes push into them)
    and the bottom of the heart."""
    for side in (-1.0, 1.0):
        lung = Ellipsoid((side * 80.0, 35.0, 220.0), (62.0, 62.0, 150.0))
        p.paint(Intersection((lung, CAVITY)), HU_LUNG)
    p.paint(Ellipsoid((25.0, -30.0, 180.0), (55.0, 48.0, 75.0)), HU_MUSCLE)  # heart


def _hollow(p: _Painter, outer: Ellipsoid, content_hu: float, wall_mm: float = 3.0) -> None:
    """A hollow viscus in the cavity: wall of ``wall_mm`` around ``content_hu``."""
    p.paint(Intersection((outer, CAVITY)), HU_BOWEL_WALL)
    p.paint(Intersection((outer.shrunk(wall_mm), CAVITY)), content_hu)


def _hollow_viscera(p: _Painter, rng: np.random.Generator) -> None:
    """Stomach with an air-fluid level, colon with gas, seeded small-bowel loops, bladder."""
    stomach = Ellipsoid((55.0, -30.0, 40.0), (40.0, 30.0, 48.0))
    _hollow(p, stomach, HU_WATER, wall_mm=4.0)
    air = Intersection((stomach.shrunk(4.0), Slab(1, -INF, -42.0), CAVITY))  # supine: anterior
    p.paint(air, HU_AIR)
    _hollow(p, Ellipsoid((-100.0, 10.0, 0.0), (22.0, 20.0, None), z_range=(-200.0, -40.0)), HU_AIR)
    _hollow(p, Ellipsoid((105.0, 25.0, 0.0), (18.0, 18.0, None), z_range=(-200.0, 20.0)), HU_AIR)
    _hollow(p, Ellipsoid((0.0, -62.0, -50.0), (95.0, 15.0, 15.0)), HU_AIR)  # transverse colon
    for _ in range(20):
        centre = (
            float(rng.uniform(-85.0, 85.0)),
            float(rng.uniform(-75.0, 25.0)),
            float(rng.uniform(-210.0, -25.0)),
        )
        radius, length = float(rng.uniform(10.0, 15.0)), float(rng.uniform(20.0, 45.0))
        loop = Ellipsoid(centre, (length, radius, radius), float(rng.uniform(0.0, 180.0)))
        _hollow(p, loop, HU_AIR if rng.random() < 0.3 else HU_WATER)
    p.paint(Intersection((Ellipsoid((0.0, -30.0, -300.0), (45.0, 38.0, 40.0)), CAVITY)), HU_WATER)


def _retroperitoneum(p: _Painter) -> None:
    """Psoas muscles (growing caudally) and kidneys with renal sinus fat."""
    for side in (-1.0, 1.0):
        p.paint(Ellipsoid((side * 40.0, 50.0, -240.0), (17.0, 15.0, 230.0)), HU_MUSCLE)
    for side, z in ((-1.0, -55.0), (1.0, -42.0)):  # the right kidney sits lower
        centre = (side * 68.0, 61.0, z)
        angle = -side * 40.0  # long axis from anterolateral to posteromedial
        p.paint(Ellipsoid(centre, (30.0, 22.0, 52.0), angle), HU_KIDNEY)
        sinus = (centre[0] - side * 8.5, centre[1] - 8.5, z)  # the hilum faces anteromedially
        p.paint(Ellipsoid(sinus, (12.0, 8.0, 26.0), angle), HU_SINUS_FAT)


def _vessels_and_gallbladder(p: _Painter) -> None:
    """Painted after the organs: the gallbladder and the IVC groove indent the liver."""
    gallbladder = Ellipsoid((-40.0, -40.0, -28.0), (15.0, 14.0, 32.0))
    p.paint(Intersection((gallbladder, CAVITY)), HU_WATER)
    p.paint(Ellipsoid((-22.0, 24.0, 0.0), (14.0, 11.0, None), z_range=(-160.0, INF)), HU_BLOOD)
    p.paint(Ellipsoid((16.0, 22.0, 0.0), (11.0, 11.0, None), z_range=(-150.0, INF)), HU_BLOOD)
    for side in (-1.0, 1.0):  # common iliac arteries below the bifurcation
        iliac = Ellipsoid((side * 28.0, 26.0, 0.0), (7.0, 7.0, None), z_range=(-INF, -150.0))
        p.paint(iliac, HU_BLOOD)


def _skeleton(p: _Painter) -> None:
    """Paraspinal muscles, vertebral arch and canal, vertebral bodies with discs, iliac wings
    and lower ribs."""
    for side in (-1.0, 1.0):
        p.paint(Ellipsoid((side * 38.0, 92.0, 0.0), (25.0, 17.0, None)), HU_MUSCLE)
    p.paint(Ellipsoid((0.0, 86.0, 0.0), (17.0, 13.0, None)), HU_POSTERIOR_ELEMENTS)
    p.paint(Ellipsoid((0.0, 82.0, 0.0), (9.0, 8.0, None)), HU_CSF)  # spinal canal
    p.paint(VERTEBRA, HU_CORTICAL)
    p.paint(VERTEBRA.shrunk(3.0), HU_CANCELLOUS)
    p.paint(Banded(VERTEBRA, pitch_mm=34.0, width_mm=8.0, phase_mm=-12.0), HU_DISC)
    for side in (-1.0, 1.0):
        wing = Ellipsoid((side * 85.0, 30.0, -270.0), (9.0, 65.0, 60.0), side * 42.0)
        p.paint(wing, HU_ILIUM)
    p.paint(Ribs(MUSCLE_SEMI_MM), HU_CORTICAL)
