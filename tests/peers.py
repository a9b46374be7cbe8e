"""Finding real peers (dcmtk, dciodvfy, Orthanc) for integration tests.

On a developer laptop without a peer the test is skipped; with ``STATLANE_REQUIRE_PEERS=1`` (set
by ``.ci/run``) a missing peer is a failure, never a skip.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest


def peers_required() -> bool:
    """True when CI demands every peer be present."""
    return os.environ.get("STATLANE_REQUIRE_PEERS") == "1"


def require_executable(name: str, install_hint: str) -> Path:
    """Path of executable ``name`` (venv first, then PATH), or skip/fail the calling test."""
    beside_python = Path(sys.executable).parent / name
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return beside_python
    found = shutil.which(name)
    if found:
        return Path(found)
    message = f"peer {name!r} not found; install {install_hint}"
    if peers_required():
        pytest.fail(message + " (STATLANE_REQUIRE_PEERS=1)")
    pytest.skip(message)


def require_testdata(name: str) -> Path:
    """Path of a file from pydicom's test data or the ``pydicom-data`` package, or skip/fail."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    if path is not None:
        return Path(path)
    message = f"test file {name!r} not found; install pydicom-data"
    if peers_required():
        pytest.fail(message + " (STATLANE_REQUIRE_PEERS=1)")
    pytest.skip(message)


def require_dcmtk(name: str) -> Path:
    """Path of dcmtk tool ``name`` (storescu, findscu, ...), never pynetdicom's same-named app."""
    for folder in ("/usr/bin", "/usr/local/bin", "/opt/homebrew/bin"):
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name)
    if found and Path(found).parent != Path(sys.executable).parent:
        return Path(found)
    message = f"dcmtk {name!r} not found; install dcmtk (apt-get install dcmtk)"
    if peers_required():
        pytest.fail(message + " (STATLANE_REQUIRE_PEERS=1)")
    pytest.skip(message)
