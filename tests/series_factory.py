"""A tiny in-memory factory of valid DICOM series with small matrices, for tests.

Every slice's stored values follow :func:`stored_value`, so a test can predict any voxel of the
loaded volume: ``array[i, j, k] == stored_value(k, j, i) * slope + intercept`` where ``k`` is
the spatial slice index (increasing along the slice normal), ``j`` the row and ``i`` the column.
Identity values are synthetic ("ANON...") — never real patients.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"


def stored_value(k: np.ndarray | int, row: np.ndarray | int, col: np.ndarray | int) -> np.ndarray:
    """Stored pixel value of spatial slice ``k`` at (row, col); fits int16 and uint16."""
    return np.asarray(k) * 97 + np.asarray(row) * 7 + np.asarray(col) * 3 + 20


def _frame(k: int, rows: int, columns: int, signed: bool) -> np.ndarray:
    r, c = np.mgrid[0:rows, 0:columns]
    return stored_value(k, r, c).astype(np.int16 if signed else np.uint16)


def _base(
    modality: str, study_uid: str, series_uid: str, patient_id: str, accession: str
) -> Dataset:
    ds = Dataset()
    ds.PatientID = patient_id
    ds.PatientName = "ANON^TEST"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.AccessionNumber = accession
    ds.Modality = modality
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    return ds


def _with_meta(ds: Dataset, sop_class: str) -> Dataset:
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def make_series(
    n_slices: int = 6,
    rows: int = 24,
    columns: int = 20,
    *,
    pixel_spacing: tuple[float, float] = (0.8, 0.7),
    step_mm: float = 2.5,
    origin: Sequence[float] = (-100.0, -120.0, 30.0),
    orientation: Sequence[float] = AXIAL,
    tilt_deg: float = 0.0,
    slope: float = 1.0,
    intercept: float = -1024.0,
    signed: bool = True,
    modality: str = "CT",
    series_uid: str | None = None,
    study_uid: str | None = None,
    patient_id: str = "ANON0001",
    accession: str = "ACC0001",
) -> list[Dataset]:
    """A valid single-frame series in spatial order (slice ``k`` at ``origin + k * step``).

    With ``tilt_deg`` the column direction is tilted about the patient x axis (gantry tilt)
    while positions still advance along z by ``step_mm``, as scanners write tilted series.
    """
    series_uid = series_uid or str(generate_uid())
    study_uid = study_uid or str(generate_uid())
    iop = list(orientation)
    if tilt_deg:
        t = math.radians(tilt_deg)
        iop = [1.0, 0.0, 0.0, 0.0, math.cos(t), -math.sin(t)]
        advance = np.array([0.0, 0.0, step_mm])
    else:
        normal = np.cross(iop[:3], iop[3:])
        advance = normal * step_mm
    datasets = []
    for k in range(n_slices):
        ds = _base(modality, study_uid, series_uid, patient_id, accession)
        ds.ImageOrientationPatient = [round(v, 10) for v in iop]
        ds.ImagePositionPatient = [round(float(v), 6) for v in np.asarray(origin) + k * advance]
        ds.PixelSpacing = list(pixel_spacing)
        ds.SliceThickness = step_mm
        ds.InstanceNumber = n_slices - k  # deliberately opposite to spatial order
        ds.Rows, ds.Columns = rows, columns
        ds.PixelRepresentation = 1 if signed else 0
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
        ds.PixelData = _frame(k, rows, columns, signed).tobytes()
        datasets.append(_with_meta(ds, CTImageStorage))
    return datasets


def make_radiograph(
    rows: int = 32,
    columns: int = 24,
    *,
    modality: str = "CR",
    spacing: tuple[float, float] = (0.2, 0.15),
) -> Dataset:
    """A single projection image without ImagePositionPatient/ImageOrientationPatient."""
    ds = _base(modality, generate_uid(), generate_uid(), "ANON0002", "ACC0002")
    ds.ImagerPixelSpacing = list(spacing)
    ds.Rows, ds.Columns = rows, columns
    ds.PixelRepresentation = 0
    ds.PixelData = _frame(0, rows, columns, signed=False).tobytes()
    return _with_meta(ds, CR_IMAGE_STORAGE)


def to_bytes(ds: Dataset) -> bytes:
    """The Part 10 file bytes of ``ds``."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def write_series(datasets: Sequence[Dataset], folder: Path, *, seed: int = 0) -> list[Path]:
    """Write ``datasets`` as files whose names are in a shuffled order; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng(seed).permutation(len(datasets))
    paths = []
    for index, ds in zip(order, datasets, strict=True):
        path = folder / f"{index:04d}.dcm"
        path.write_bytes(to_bytes(ds))
        paths.append(path)
    return paths
