"""A PA chest radiograph phantom built as a projection of analytic attenuators.

Image axes: columns run towards the patient's left (x, mm), rows towards the feet (-z, mm).
Line integrals of linear attenuation (1/mm) are summed along the AP direction and mapped to
12-bit presentation values (MONOCHROME2: air black, bone white)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

DETECTOR_MM = 430.0
"""Edge of the (square, 17 inch) detector field in mm."""
MU_WATER = 0.02
"""Effective linear attenuation of soft tissue at ~120 kVp, 1/mm."""
MU_BONE = 0.05
LUNG_DENSITY = 0.25
"""Lung parenchyma as a fraction of soft tissue density."""

Image = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Radiograph:
    """Stored values ``[row, column]`` (uint16, 12 bits) and the pneumothorax mask."""

    pixels: npt.NDArray[np.uint16]
    mask: npt.NDArray[np.bool_] | None
    side: str | None
    pixel_spacing_mm: float


class _Projector:
    def __init__(self, matrix: int) -> None:
        self.spacing = DETECTOR_MM / matrix
        coords = (np.arange(matrix) - (matrix - 1) / 2.0) * self.spacing
        self.x = coords[None, :]  # patient left is +x, to the right of the image
        self.z = -coords[:, None] + 20.0  # top of the image is superior
        self.path = np.zeros((matrix, matrix))

    def chord(self, centre: tuple[float, float], semi: tuple[float, float | None, float]) -> Image:
        """Chord length (mm) through an ellipsoid with semi-axes (x, z, depth); ``None`` for
        the z axis makes it a cylinder along z."""
        cx, cz = centre
        a, c, depth = semi
        q = ((self.x - cx) / a) ** 2 + (0.0 if c is None else ((self.z - cz) / c) ** 2)
        return 2.0 * depth * np.sqrt(np.clip(1.0 - q, 0.0, None))

    def inside(self, centre: tuple[float, float], semi: tuple[float, float]) -> Image:
        q = ((self.x - centre[0]) / semi[0]) ** 2 + ((self.z - centre[1]) / semi[1]) ** 2
        return q


LUNG_CENTRES = {"R": (-75.0, 25.0), "L": (75.0, 25.0)}
LUNG_SEMI = (62.0, 120.0, 90.0)


def chest_pa(matrix: int, rng: np.random.Generator, finding: bool) -> Radiograph:
    """PA chest: body, lung fields with vascular markings, heart, spine, ribs and clavicles;
    with ``finding`` an apical-lateral pneumothorax (no markings, visceral pleural line)."""
    pr = _Projector(matrix)
    trunk = pr.chord((0.0, 0.0), (170.0, None, 115.0))
    neck = pr.chord((0.0, 0.0), (60.0, None, 60.0))
    shoulder_line = 200.0 - 0.0015 * pr.x**2  # trunk narrows into the neck above the shoulders
    mu = MU_WATER * np.where(pr.z > shoulder_line, neck, trunk)
    lung_chord = {s: pr.chord(c, LUNG_SEMI) for s, c in LUNG_CENTRES.items()}
    lungs = lung_chord["R"] + lung_chord["L"]
    mu -= MU_WATER * (1.0 - LUNG_DENSITY) * lungs
    mu += MU_WATER * (1.0 - LUNG_DENSITY) * pr.chord((25.0, -40.0), (70.0, 60.0, 50.0))  # heart
    mu += (MU_BONE - MU_WATER) * pr.chord((0.0, 0.0), (18.0, None, 30.0))  # spine
    mu += _ribs_and_clavicles(pr)
    field = (pr.inside(LUNG_CENTRES["R"], LUNG_SEMI[:2]) < 1.0) | (
        pr.inside(LUNG_CENTRES["L"], LUNG_SEMI[:2]) < 1.0
    )
    markings = _vascular_markings(pr, rng) * field
    mask: npt.NDArray[np.bool_] | None = None
    side: str | None = None
    if finding:
        side = str(rng.choice(["R", "L"]))
        mask, pleural_line = _pneumothorax(pr, side, float(rng.uniform(0.72, 0.85)))
        mu -= MU_WATER * LUNG_DENSITY * lung_chord[side] * mask
        markings = markings * ~mask
        mu += pleural_line
    mu += markings
    presentation = 4000.0 * (1.0 - np.exp(-mu / 4.0)) + 40.0
    presentation += rng.normal(0.0, 12.0, presentation.shape)
    pixels = np.clip(np.rint(presentation), 0, 4095).astype(np.uint16)
    return Radiograph(pixels=pixels, mask=mask, side=side, pixel_spacing_mm=pr.spacing)


def _ribs_and_clavicles(pr: _Projector) -> Image:
    extra = np.zeros_like(pr.path)
    for side in (-1.0, 1.0):
        for n in range(9):
            # Posterior rib: an arc from the spine rising laterally, then curving down.
            top = 150.0 - n * 26.0
            u = side * pr.x
            centre_line = top + 0.25 * u - 0.003 * u**2
            band = np.abs(pr.z - centre_line) < 5.5
            lateral = (u > 18.0) & (u < 160.0)
            extra += 0.35 * (band & lateral)
        clavicle = np.abs(pr.z - (165.0 - 0.18 * (side * pr.x))) < 7.0
        extra += 0.4 * (clavicle & (side * pr.x > 10.0) & (side * pr.x < 140.0))
    return extra


def _vascular_markings(pr: _Projector, rng: np.random.Generator) -> Image:
    """Branching vessels from each hilum, thinning towards the periphery (1/mm-integrals)."""
    acc = np.zeros_like(pr.path)
    n = acc.shape[0]
    for hilum_x in (-45.0, 45.0):
        for _ in range(28):
            angle = rng.uniform(-np.pi * 0.95, np.pi * 0.95)
            direction = np.array([np.sign(hilum_x) * abs(np.sin(angle)), np.cos(angle)])
            pos = np.array([hilum_x, 15.0]) + rng.normal(0.0, 12.0, 2)
            weight = 1.0
            for _step in range(110):
                direction = direction + rng.normal(0.0, 0.08, 2)
                direction /= np.linalg.norm(direction)
                pos = pos + direction * 1.0
                col = round(float(pos[0]) / pr.spacing + (n - 1) / 2.0)
                row = round(-(float(pos[1]) - 20.0) / pr.spacing + (n - 1) / 2.0)
                if 0 <= row < n and 0 <= col < n:
                    acc[row, col] += weight
                weight *= 0.982
    return _gaussian_blur(acc, sigma_px=max(1.5 / pr.spacing, 0.7))


def _gaussian_blur(image: Image, sigma_px: float) -> Image:
    """Separable Gaussian blur via FFT (numpy only), preserving the image sum."""
    n = image.shape[0]
    freqs = np.fft.fftfreq(n)
    kernel = np.exp(-2.0 * (np.pi * sigma_px * freqs) ** 2)
    spectrum = np.fft.fft2(image) * kernel[:, None] * kernel[None, :]
    out: Image = np.real(np.fft.ifft2(spectrum)) * 6.0
    return out


def _pneumothorax(
    pr: _Projector, side: str, collapse: float
) -> tuple[npt.NDArray[np.bool_], Image]:
    """Air between chest wall and a lung shrunk towards its medial base by ``collapse``."""
    cx, cz = LUNG_CENTRES[side]
    a, c = LUNG_SEMI[0], LUNG_SEMI[1]
    medial = -1.0 if side == "L" else 1.0
    # Shrink towards a point at the lower medial edge (hilum side, near the diaphragm).
    px, pz = cx + medial * 0.6 * a, cz - 0.6 * c
    full = pr.inside((cx, cz), (a, c))
    shrunk_centre = (px + (cx - px) * collapse, pz + (cz - pz) * collapse)
    shrunk = pr.inside(shrunk_centre, (a * collapse, c * collapse))
    region = (full < 1.0) & (shrunk >= 1.0)
    width = 1.2 / max(a * collapse, 1.0)  # ~1 mm wide line in normalised units
    line = (np.abs(np.sqrt(shrunk) - 1.0) < width / 2.0 + pr.spacing / (2.0 * a)) & (full < 1.0)
    return region, np.where(line, 0.15, 0.0)
