"""Orchestration: one call writes one synthetic study folder with its ground truth."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from models.synthetic import abdomen, faults, phantom, radiograph, writer
from models.synthetic.geometry import SeriesGeometry
from models.synthetic.identity import Order, Patient, make_order, make_patient
from models.synthetic.spec import (
    FINDING_TYPES,
    Compression,
    Fault,
    StudyKind,
    StudySpec,
    SyntheticStudy,
    seeded_int,
)

GROUND_TRUTH_NAME = "ground_truth.json"
MASK_NAME = "mask.npy"
LABELS_NAME = "labels.npy"
LABEL_AXES = ["column", "row", "slice"]


def generate_study(
    kind: StudyKind | str,
    out_dir: Path,
    *,
    seed: int = 0,
    finding: bool = False,
    slices: int | None = None,
    slice_thickness_mm: float | None = None,
    matrix: int | None = None,
    gantry_tilt_deg: float = 0.0,
    compression: Compression | str = "none",
    fault: Fault | str | None = None,
    priority: str = "ROUTINE",
) -> SyntheticStudy:
    """Write one synthetic study to ``out_dir/<accession>/`` and return what was written.

    ``finding`` plants an intracranial haemorrhage (ct-head), a lung nodule (ct-chest) or a
    pneumothorax (cr-chest, dx-chest); ct-abdomen has no finding (``finding=True`` is a
    ``SynthSpecError``) but writes an organ label map (``labels.npy``, see
    :func:`load_label_map`) and organ volumes in the ground truth. ``matrix`` is rows = columns
    (default 512 for CT, 1024 for radiographs). Slice thickness is in mm, gantry tilt in degrees
    (ct-head only). The same arguments always give byte-identical files. Raises
    ``SynthSpecError`` for impossible requests and ``EncoderMissingError`` when the lossless
    encoder is not installed.
    """
    spec = StudySpec.build(
        kind,
        seed=seed,
        finding=finding,
        slices=slices,
        slice_thickness_mm=slice_thickness_mm,
        matrix=matrix,
        gantry_tilt_deg=gantry_tilt_deg,
        compression=compression,
        fault=fault,
        priority=priority,
    )
    writer.encoder_for(spec.compression)  # fail before writing anything
    patient = make_patient(spec.seed)
    order = make_order(spec, patient)
    study_dir = Path(out_dir) / order.accession_number
    study_dir.mkdir(parents=True, exist_ok=True)
    if spec.kind.is_ct:
        files, truth, mask = _write_ct(spec, patient, order, study_dir)
    else:
        files, truth, mask = _write_radiograph(spec, patient, order, study_dir)
    mask_path: Path | None = None
    if mask is not None:
        mask_path = study_dir / MASK_NAME
        np.save(mask_path, np.ascontiguousarray(mask.astype(np.uint8)))
        truth["mask"] = MASK_NAME
    labels_path = study_dir / LABELS_NAME if "label_map" in truth else None
    truth_path = study_dir / GROUND_TRUTH_NAME
    truth_path.write_text(json.dumps(truth, indent=2, sort_keys=False) + "\n")
    return SyntheticStudy(
        kind=spec.kind,
        study_dir=study_dir,
        study_uid=order.study_uid,
        accession_number=order.accession_number,
        series_uid=order.series_uid,
        files=files,
        ground_truth=truth_path,
        mask=mask_path,
        fault=spec.fault,
        compression=spec.compression,
        priority=spec.priority,
        finding=spec.finding,
        labels=labels_path,
    )


def _file_name(instance_number: int) -> str:
    return f"IM_{instance_number:04d}.dcm"


def _write_ct(
    spec: StudySpec, patient: Patient, order: Order, study_dir: Path
) -> tuple[list[Path], dict[str, Any], npt.NDArray[np.uint8] | None]:
    geometry, volume = phantom.ct_series(spec)
    stored = phantom.stored_values(volume.hu)
    sop_class, modality = writer.sop_class_for(spec.kind)
    base = writer.base_dataset(spec, patient, order, modality=modality, sop_class_uid=sop_class)
    fault_rng = np.random.default_rng(seeded_int("fault", spec.seed))
    plan = faults.FaultPlan.choose(spec.fault, spec.slices, fault_rng) if spec.fault else None
    files: list[Path] = []
    slice_files: dict[int, str] = {}
    for k in range(spec.slices):
        hit = plan is not None and plan.hits(k)
        if hit and spec.fault is Fault.MISSING_SLICE:
            continue
        uid = order.instance_uid(spec, k)
        ds = writer.ct_slice(base, geometry, k, stored[k], uid, spec.kind)
        if hit:
            _damage_slice(ds, spec, stored[k], geometry)
        path = study_dir / _file_name(k + 1)
        writer.save(ds, path, spec.compression)
        files.append(path)
        slice_files[k] = path.name
        if hit and spec.fault is Fault.TRUNCATED_FILE:
            faults.truncate(path, len(ds.PixelData))
        if hit and spec.fault is Fault.DUPLICATE_SLICE:
            extra = spec.slices  # a re-sent copy: new UID and instance number, same slice
            dup = writer.ct_slice(
                base, geometry, k, stored[k], order.instance_uid(spec, extra), spec.kind
            )
            dup.InstanceNumber = extra + 1
            dup_path = study_dir / _file_name(extra + 1)
            writer.save(dup, dup_path, spec.compression)
            files.append(dup_path)
    if spec.fault is Fault.NON_DICOM_FILE:
        stray = study_dir / faults.NON_DICOM_NAME
        faults.write_non_dicom(stray, fault_rng)
        files.append(stray)
    truth = _truth_header(spec, order)
    truth["geometry"] = _geometry_truth(geometry)
    truth["fault"] = plan.describe(slice_files) if plan else None
    mask = None
    if volume.mask is not None and volume.lesion is not None:
        truth.update(_lesion_truth(volume.mask, volume.lesion, geometry, slice_files))
        mask = volume.mask.transpose(2, 1, 0).astype(np.uint8)  # [column, row, slice]
    if volume.labels is not None:
        # [column, row, slice] as a transposed view: np.save writes it Fortran-ordered, no copy
        np.save(study_dir / LABELS_NAME, volume.labels.transpose(2, 1, 0))
        truth.update(_organ_truth(volume.labels, geometry))
    return files, truth, mask


def _damage_slice(
    ds: Dataset, spec: StudySpec, stored: npt.NDArray[np.uint16], geometry: SeriesGeometry
) -> None:
    if spec.fault is Fault.MIXED_ORIENTATION:
        faults.misorient(ds)
    elif spec.fault is Fault.TWO_PATIENTS:
        other = make_patient(spec.seed, variant="second-patient")
        if other.patient_id == ds.PatientID:
            other = make_patient(spec.seed, variant="third-patient")
        faults.swap_patient(ds, other)
    elif spec.fault is Fault.INCONSISTENT_GEOMETRY:
        writer.set_pixels(ds, faults.coarser_matrix(stored))
        ds.PixelSpacing = [writer.decimal_string(geometry.pixel_spacing_mm * 2.0)] * 2


def _write_radiograph(
    spec: StudySpec, patient: Patient, order: Order, study_dir: Path
) -> tuple[list[Path], dict[str, Any], npt.NDArray[np.uint8] | None]:
    rng = np.random.default_rng(seeded_int("phantom", spec.kind.value, spec.seed))
    film = radiograph.chest_pa(spec.matrix, rng, spec.finding)
    sop_class, modality = writer.sop_class_for(spec.kind)
    base = writer.base_dataset(spec, patient, order, modality=modality, sop_class_uid=sop_class)
    ds = writer.radiograph(
        base, film.pixels, film.pixel_spacing_mm, order.instance_uid(spec, 0), spec.kind
    )
    path = study_dir / _file_name(1)
    writer.save(ds, path, spec.compression)
    files = [path]
    fault_rng = np.random.default_rng(seeded_int("fault", spec.seed))
    plan = faults.FaultPlan.choose(spec.fault, 1, fault_rng) if spec.fault else None
    if spec.fault is Fault.TRUNCATED_FILE:
        faults.truncate(path, len(ds.PixelData))
    if spec.fault is Fault.NON_DICOM_FILE:
        stray = study_dir / faults.NON_DICOM_NAME
        faults.write_non_dicom(stray, fault_rng)
        files.append(stray)
    truth = _truth_header(spec, order)
    truth["geometry"] = {
        "rows": spec.matrix,
        "columns": spec.matrix,
        "imager_pixel_spacing_mm": film.pixel_spacing_mm,
    }
    truth["fault"] = plan.describe({0: path.name}) if plan else None
    mask = None
    if film.mask is not None:
        rows, cols = np.nonzero(film.mask)
        s = film.pixel_spacing_mm
        truth.update(
            {
                "side": film.side,
                "area_mm2": float(rows.size * s * s),
                "centre_px": [float(cols.mean()), float(rows.mean())],
                "centre_mm": [float(cols.mean() * s), float(rows.mean() * s)],
                "centre_frame": "image plane, mm from the centre of the top-left pixel",
                "bbox_px": [int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max())],
                "diameter_mm": None,
                "volume_ml": None,
            }
        )
        mask = film.mask.T.astype(np.uint8)  # [column, row]
    return files, truth, mask


def _truth_header(spec: StudySpec, order: Order) -> dict[str, Any]:
    return {
        "schema": "statlane.synthetic.ground-truth/1",
        "kind": spec.kind.value,
        "seed": spec.seed,
        "finding_present": spec.finding,
        "finding_type": FINDING_TYPES[spec.kind] if spec.finding else None,
        "priority": spec.priority,
        "accession_number": order.accession_number,
        "study_instance_uid": order.study_uid,
        "series_instance_uid": order.series_uid,
        "compression": spec.compression.value,
        "transfer_syntax_uid": str(writer.TRANSFER_SYNTAXES[spec.compression]),
        "mask_axes": ["column", "row", "slice"] if spec.kind.is_ct else ["column", "row"],
    }


def _geometry_truth(geometry: SeriesGeometry) -> dict[str, Any]:
    return {
        "rows": geometry.rows,
        "columns": geometry.columns,
        "slices": geometry.slices,
        "pixel_spacing_mm": geometry.pixel_spacing_mm,
        "slice_thickness_mm": geometry.slice_thickness_mm,
        "table_step_mm": geometry.table_step_mm,
        "gantry_tilt_deg": geometry.gantry_tilt_deg,
        "spacing_along_normal_mm": geometry.spacing_along_normal_mm,
        "voxel_volume_ml": geometry.voxel_volume_ml,
    }


def _organ_truth(labels: npt.NDArray[np.uint8], geometry: SeriesGeometry) -> dict[str, Any]:
    """Label-map description and, per organ, volume (mL) exactly = voxel count x voxel volume,
    centroid in LPS mm, the slices it spans and whether the series covers all of it."""
    counts = np.bincount(labels.ravel(), minlength=max(abdomen.ORGAN_LABELS.values()) + 1)
    nominal_hu = {"spleen": abdomen.HU_SPLEEN, "liver": abdomen.HU_LIVER}
    organs: dict[str, Any] = {}
    for name, value in abdomen.ORGAN_LABELS.items():
        voxels = int(counts[value])
        entry: dict[str, Any] = {
            "label": value,
            "voxel_count": voxels,
            "volume_ml": voxels * geometry.voxel_volume_ml,
            "nominal_hu": nominal_hu[name],
            "centre_mm": None,
            "slice_range": None,
            "complete": False,
        }
        if voxels:
            k_idx, j_idx, i_idx = np.nonzero(labels == value)
            centre = geometry.voxel_to_patient(
                np.array([i_idx.mean()]), np.array([j_idx.mean()]), np.array([k_idx.mean()])
            )[0]
            first, last = int(k_idx.min()), int(k_idx.max())
            entry["centre_mm"] = [float(v) for v in centre]
            entry["slice_range"] = [first, last]
            entry["complete"] = first > 0 and last < geometry.slices - 1
        organs[name] = entry
    return {
        "label_map": {
            "file": LABELS_NAME,
            "axes": LABEL_AXES,
            "dtype": "uint8",
            "values": {"background": abdomen.LABEL_BACKGROUND, **abdomen.ORGAN_LABELS},
            "affine_lps": geometry.affine_lps().tolist(),
            "grid": "source series as written, before any planted fault",
        },
        "organs": organs,
    }


def load_label_map(study_dir: Path) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float64]]:
    """The organ label map of a written ct-abdomen study and its voxel → LPS mm affine.

    Labels are uint8 indexed ``[column, row, slice]`` (slice 0 most inferior), the same order,
    shape and affine as ``preprocessing.Volume.array`` / ``.affine`` of the series loaded with
    ``load_study(scan_folder(study_dir))``; values are 0 background, 1 spleen, 2 liver
    (``abdomen.ORGAN_LABELS``). The map is on the source grid: after a missing- or
    duplicate-slice fault it no longer matches the loaded volume slice for slice. Raises
    ``FileNotFoundError`` when the study has no label map (every kind except ct-abdomen).
    """
    study_dir = Path(study_dir)
    truth = json.loads((study_dir / GROUND_TRUTH_NAME).read_text())
    entry = truth.get("label_map")
    if entry is None:
        raise FileNotFoundError(f"{study_dir}: a {truth.get('kind')} study has no label map")
    labels: npt.NDArray[np.uint8] = np.load(study_dir / entry["file"])
    affine = np.array(entry["affine_lps"], dtype=np.float64)
    return labels, affine


def _lesion_truth(
    mask: npt.NDArray[np.bool_],
    lesion: phantom.Lesion,
    geometry: SeriesGeometry,
    slice_files: dict[int, str],
) -> dict[str, Any]:
    """Volume (mL) exactly = voxel count x voxel volume; centroid in LPS mm; per-slice boxes."""
    k_idx, j_idx, i_idx = np.nonzero(mask)
    voxels = int(k_idx.size)
    volume_ml = voxels * geometry.voxel_volume_ml
    centroid = geometry.voxel_to_patient(
        np.array([i_idx.mean()]), np.array([j_idx.mean()]), np.array([k_idx.mean()])
    )[0]
    per_slice: list[dict[str, Any]] = []
    for k in range(int(k_idx.min()), int(k_idx.max()) + 1):
        in_k = k_idx == k
        if not in_k.any():
            continue
        cols, rows = i_idx[in_k], j_idx[in_k]
        per_slice.append(
            {
                "slice_index": k,
                "instance_number": k + 1,
                "file": slice_files.get(k),
                "voxels": int(in_k.sum()),
                "bbox_px": [int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max())],
            }
        )
    key = max(per_slice, key=lambda s: s["voxels"])
    return {
        "voxel_count": voxels,
        "volume_ml": volume_ml,
        "centre_mm": [float(v) for v in centroid],
        "nominal_centre_mm": list(lesion.centre_mm),
        "diameter_mm": lesion.diameter_mm,
        "equivalent_diameter_mm": phantom.sphere_equivalent_diameter_mm(volume_ml),
        "attenuation_hu": lesion.attenuation_hu,
        "key_slice": key,
        "slices_with_finding": per_slice,
    }
