"""dcmtk, an independent DICOM toolkit, reads and decompresses what statlane writes.

Decompressing our RLE and JPEG-LS variants with dcmtk and loading the result must give exactly
the volume statlane decodes itself, and exactly the uncompressed study of the same seed.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from models.synthetic import generate_study
from preprocessing import load_series
from tests.peers import require_executable

pytestmark = pytest.mark.peers

DECOMPRESSOR = {"rle": "dcmdrle", "jpeg-ls": "dcmdjpls"}


def test_dcmtk_recognises_every_generated_file(tmp_path: Path) -> None:
    dcmftest = require_executable("dcmftest", "the Debian package dcmtk")
    files: list[Path] = []
    for kind in ("ct-head", "ct-chest", "cr-chest", "dx-chest"):
        files += generate_study(kind, tmp_path, seed=1, matrix=64, finding=True).files
    result = subprocess.run(
        [str(dcmftest), *map(str, files)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout[-2000:]
    assert result.stdout.count("yes:") == len(files)


@pytest.mark.parametrize("compression", sorted(DECOMPRESSOR))
def test_dcmtk_decompression_matches_statlane(compression: str, tmp_path: Path) -> None:
    tool = require_executable(DECOMPRESSOR[compression], "the Debian package dcmtk")
    plain = generate_study("ct-head", tmp_path / "plain", seed=5, matrix=64)
    packed = generate_study(
        "ct-head", tmp_path / "packed", seed=5, matrix=64, compression=compression
    )
    unpacked_dir = tmp_path / "unpacked"
    unpacked_dir.mkdir()
    unpacked = []
    for source in packed.files:
        target = unpacked_dir / source.name
        subprocess.run([str(tool), str(source), str(target)], check=True, capture_output=True)
        unpacked.append(target)

    ours = load_series(packed.files)
    theirs = load_series(unpacked)
    reference = load_series(plain.files)
    assert np.array_equal(ours.array, theirs.array)
    assert np.array_equal(ours.array, reference.array)
    assert np.allclose(ours.affine, reference.affine)
