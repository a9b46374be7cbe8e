"""Planting one specific defect into an otherwise valid synthetic series.

Each fault changes exactly one thing the study assembler must notice; everything else in the
study stays valid DICOM."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from models.synthetic.identity import Patient
from models.synthetic.spec import Fault

CORONAL_ORIENTATION = ["1", "0", "0", "0", "0", "-1"]
NON_DICOM_NAME = "IM_9999.dcm"


@dataclass(frozen=True)
class FaultPlan:
    """Which image (0-based slice index) a fault hits; ``None`` for a whole-study fault."""

    fault: Fault
    slice_index: int | None

    @classmethod
    def choose(cls, fault: Fault, slices: int, rng: np.random.Generator) -> FaultPlan:
        """Pick an interior slice (never the first or last, so a gap stays a gap)."""
        if fault is Fault.NON_DICOM_FILE:
            return cls(fault, None)
        if slices < 3:
            return cls(fault, 0)
        return cls(fault, int(rng.integers(1, slices - 1)))

    def hits(self, index: int) -> bool:
        """True when slice ``index`` is the one to damage."""
        return self.slice_index == index

    def describe(self, files: dict[int, str]) -> dict[str, Any]:
        """The fault as ground-truth JSON (which slice, which file)."""
        target = None if self.slice_index is None else files.get(self.slice_index)
        if self.fault is Fault.NON_DICOM_FILE:
            target = NON_DICOM_NAME
        return {"type": self.fault.value, "slice_index": self.slice_index, "file": target}


def misorient(ds: Dataset) -> None:
    """Give one slice a coronal Image Orientation (Patient) in an axial series."""
    ds.ImageOrientationPatient = CORONAL_ORIENTATION


def swap_patient(ds: Dataset, other: Patient) -> None:
    """Put a different patient on one slice while it keeps the Study Instance UID."""
    ds.PatientName = other.name
    ds.PatientID = other.patient_id
    ds.PatientBirthDate = other.birth_date
    ds.PatientSex = other.sex


def coarser_matrix(stored: npt.NDArray[np.uint16]) -> npt.NDArray[np.uint16]:
    """Half-resolution copy of a slice (2x2 block means): Rows/Columns differ from the series."""
    rows, cols = (stored.shape[0] // 2) * 2, (stored.shape[1] // 2) * 2
    blocks = stored[:rows, :cols].reshape(rows // 2, 2, cols // 2, 2).astype(np.uint32)
    means = (blocks.sum(axis=(1, 3)) + 2) // 4
    return means.astype(np.uint16)


def truncate(path: Path, pixel_payload_bytes: int) -> None:
    """Cut a Part 10 file in the middle of its Pixel Data (the last element of the file)."""
    size = path.stat().st_size
    keep = size - pixel_payload_bytes // 2
    with path.open("r+b") as handle:
        handle.truncate(keep)


def write_non_dicom(path: Path, rng: np.random.Generator) -> None:
    """A stray non-DICOM file named like an image: text then random bytes, no DICM preamble."""
    text = b"statlane synthetic: this is not a DICOM file\n"
    payload = rng.integers(0, 256, size=2048, dtype=np.uint8).tobytes()
    path.write_bytes(text + payload)
