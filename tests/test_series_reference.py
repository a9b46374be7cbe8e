"""Reference table of real files (pydicom test files and pydicom-data) → expected volumes.

Spot values were read independently with plain pydicom (``pixel_array * RescaleSlope +
RescaleIntercept``, slices ordered by hand) and written here as literals, in the manner of
pydicom's ``tests/pixels/pixels_reference.py``. Voxels are ``(i, j, k)`` = (column, row, slice).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from preprocessing import SeriesAssembler, load_series
from tests.peers import require_testdata


def _testdata(name: str) -> list[Path]:
    path = require_testdata(name)
    return [path]


def _ct5n() -> list[Path]:
    folder = Path(str(_testdata("CT_small.dcm")[0])).parent / "dicomdirtests/98892001/CT5N"
    return sorted(folder.iterdir())


@dataclass(frozen=True)
class Reference:
    """Expected volume of one real file set."""

    name: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    orientation: tuple[float, ...]
    origin: tuple[float, float, float]
    spots: dict[tuple[int, int, int], float] = field(default_factory=dict)


REFERENCES = [
    Reference(
        "CT5N",
        (16, 16, 5),
        (0.488281, 0.488281, 2.5),
        (1, 0, 0, 0, 1, 0),
        (-72.199997, -143.0, -1.2375),
        {(0, 0, 0): -33.0, (5, 7, 1): -15.0, (8, 8, 2): 44.0, (15, 3, 4): -855.0,
         (10, 12, 3): -181.0},
    ),
    Reference(
        "CT_small.dcm",
        (128, 128, 1),
        (0.661468, 0.661468, 5.0),
        (1, 0, 0, 0, 1, 0),
        (-158.135803, -179.035797, -75.699997),
        {(0, 0, 0): -849.0, (64, 64, 0): 904.0, (100, 20, 0): -53.0, (20, 100, 0): 19.0},
    ),
    Reference(
        "693_J2KI.dcm",
        (512, 512, 1),
        (0.478516, 0.478516, 20.0),
        (1, 0, 0, 0, 1, 0),
        (-122.5, -112.4, 47.0),
        {(256, 256, 0): 32.0, (100, 300, 0): -967.0, (0, 0, 0): -3040.0},
    ),
    Reference(
        "693_J2KR.dcm",
        (512, 512, 1),
        (0.478516, 0.478516, 20.0),
        (1, 0, 0, 0, 1, 0),
        (-122.5, -112.4, 47.0),
        {(256, 256, 0): 24.0, (100, 300, 0): -962.0, (0, 0, 0): -3024.0, (300, 100, 0): -14.0},
    ),
    Reference(
        "693_UNCR.dcm",
        (512, 512, 1),
        (0.478516, 0.478516, 20.0),
        (1, 0, 0, 0, 1, 0),
        (-122.5, -112.4, 47.0),
        {(256, 256, 0): 24.0, (100, 300, 0): -962.0, (0, 0, 0): -3024.0, (300, 100, 0): -14.0},
    ),
    Reference(
        # Lossless J2K whose codestream sign disagrees with PixelRepresentation; pydicom corrects
        # it and the values are plausible HU (air -2000 padding, soft tissue ~30).
        "J2K_pixelrep_mismatch.dcm",
        (512, 512, 1),
        (0.431, 0.431, 5.0),
        (1, 0, 0, 0, 0.9272, -0.3746),
        (-110.2153, -98.1898, 72.1446),
        {(256, 256, 0): 27.0, (0, 0, 0): -2000.0, (200, 300, 0): 36.0},
    ),
    Reference(
        # Enhanced CT, 2 frames at z = -159 (frame 1) and -149 (frame 2); IOP row is -x, so the
        # normal is -z and frame 2 comes first.
        "eCT_Supplemental.dcm",
        (512, 512, 2),
        (0.388672, 0.388672, 10.0),
        (-1, 0, 0, 0, 1, 0),
        (99.5, -301.5, -149.0),
        {(256, 256, 0): -2.0, (256, 256, 1): 81.0, (300, 100, 0): 62.0, (300, 100, 1): 46.0,
         (100, 300, 1): 47.0, (0, 0, 0): -1024.0},
    ),
]  # fmt: skip


def _sources(ref: Reference) -> list[Path]:
    return _ct5n() if ref.name == "CT5N" else _testdata(ref.name)


@pytest.mark.parametrize("ref", REFERENCES, ids=lambda r: r.name)
def test_reference_volume(ref: Reference) -> None:
    volume = load_series(_sources(ref))
    assert volume.shape == ref.shape
    assert volume.array.dtype == np.float32
    assert volume.spacing == pytest.approx(ref.spacing, abs=1e-5)
    directions = volume.affine[:3, :2] / np.linalg.norm(volume.affine[:3, :2], axis=0)
    assert np.allclose(directions.T.ravel(), ref.orientation, atol=1e-4)
    assert np.allclose(volume.affine[:3, 3], ref.origin, atol=1e-4)
    assert volume.modality == "CT"
    for (i, j, k), value in ref.spots.items():
        assert volume.array[i, j, k] == pytest.approx(value), (i, j, k)


@pytest.mark.parametrize("ref", REFERENCES, ids=lambda r: r.name)
def test_reference_streaming_equals_batch(ref: Reference) -> None:
    sources = _sources(ref)
    assembler = SeriesAssembler(expected_count=len(sources))
    for source in reversed(sources):
        assembler.add(source)
    streamed, batch = assembler.volume(), load_series(sources)
    assert np.array_equal(streamed.array, batch.array)
    assert np.array_equal(streamed.affine, batch.affine)


def test_j2k_lossless_equals_uncompressed_exactly() -> None:
    lossless = load_series(_testdata("693_J2KR.dcm"))
    uncompressed = load_series(_testdata("693_UNCR.dcm"))
    assert np.array_equal(lossless.array, uncompressed.array)
    assert np.array_equal(lossless.affine, uncompressed.affine)


def test_j2k_lossy_is_close_to_uncompressed() -> None:
    lossy = load_series(_testdata("693_J2KI.dcm")).array
    uncompressed = load_series(_testdata("693_UNCR.dcm")).array
    # Lossy: an offset of a few tens of HU, but the same image.
    assert float(np.median(np.abs(lossy - uncompressed))) < 50.0
    assert float(np.corrcoef(lossy.ravel(), uncompressed.ravel())[0, 1]) > 0.99


def test_ct5n_sorted_by_position_not_instance_number() -> None:
    volume = load_series(_ct5n())
    z = [volume.affine[2, 3] + k * volume.affine[2, 2] for k in range(5)]
    assert z == pytest.approx([-1.2375, 1.2625, 3.7625, 6.2625, 8.7625])
