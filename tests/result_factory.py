"""Build ``router.result.AIResult`` values from synthetic studies, for router tests.

The findings are made by hand (not by running a model) so the tests of result objects and
messages are fast and know exactly what to expect: a bleed of ``volume_ml`` on the middle slice
in a box of known pixel coordinates.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pydicom

from models.postprocess import Finding
from models.synthetic import generate_study
from router.result import AIResult, Algorithm, KeyImage, Mode, SourceInstance
from serving.service.results import source_instance, study_identity

# The service's own readers of source headers: tests build results the way production does.
identity_of = study_identity


def source_instance_of(ds: pydicom.Dataset, path: Path) -> SourceInstance:
    """Geometry of one source instance (the service's reader)."""
    return source_instance(ds, str(path))


def algorithm(name: str = "ich-ct-head", version: str = "2") -> Algorithm:
    """A deterministic algorithm identification."""
    digest = int(hashlib.sha256(f"{name}@{version}".encode()).hexdigest()[:24], 16)
    return Algorithm(
        name=name, version=version, manufacturer="statlane", device_uid=f"2.25.{digest}"
    )


def ct_head_result(
    tmp: Path,
    *,
    present: bool = True,
    matrix: int = 128,
    slices: int = 32,
    mode: Mode = Mode.ASSISTANT,
    seed: int = 3,
) -> AIResult:
    """A CT head study written under ``tmp`` and a hand-made ICH result on it.

    When ``present``, the bleed lies on the middle slice in the pixel box
    ``(40, 50, 60, 70)`` (column0, row0, column1, row1) and across three slices in the mask.
    """
    study = generate_study("ct-head", tmp, seed=seed, finding=present, matrix=matrix, slices=slices)
    datasets = [pydicom.dcmread(p, stop_before_pixels=True) for p in study.files]
    instances = tuple(
        source_instance_of(ds, p) for ds, p in zip(datasets, study.files, strict=True)
    )
    key = len(instances) // 2
    finding = Finding(
        name="intracranial-hemorrhage",
        concept_value="1386000",
        concept_scheme="SCT",
        concept_meaning="Intracranial hemorrhage",
        critical=True,
        present=present,
        probability=0.97 if present else 0.03,
        volume_ml=4.2 if present else 0.0,
        key_slice=key if present else None,
        area_mm2=310.5 if present else None,
    )
    mask = None
    key_images: tuple[KeyImage, ...] = ()
    if present:
        mask = np.zeros((len(instances), matrix, matrix), dtype=bool)
        mask[key - 1 : key + 2, 50:71, 40:61] = True
        key_images = (
            KeyImage(
                finding=finding.name,
                sop_instance_uid=instances[key].sop_instance_uid,
                frame=1,
                box_px=(40.0, 50.0, 60.0, 70.0),
            ),
        )
    return AIResult(
        task_id="task-0001",
        study=identity_of(datasets[0]),
        source_instances=instances,
        algorithm=algorithm(),
        findings=(finding,),
        completed_at=datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC),
        key_images=key_images,
        mask=mask,
        mode=mode,
    )


def cxr_result(tmp: Path, *, present: bool = True, seed: int = 5) -> AIResult:
    """A chest radiograph (CR) and a pneumothorax classifier result on it (no box, no mask)."""
    study = generate_study("cr-chest", tmp, seed=seed, finding=present, matrix=256)
    ds = pydicom.dcmread(study.files[0], stop_before_pixels=True)
    finding = Finding(
        name="pneumothorax",
        concept_value="36118008",
        concept_scheme="SCT",
        concept_meaning="Pneumothorax",
        critical=True,
        present=present,
        probability=0.91 if present else 0.05,
    )
    return AIResult(
        task_id="task-0002",
        study=identity_of(ds),
        source_instances=(source_instance_of(ds, study.files[0]),),
        algorithm=algorithm("cxr-pneumothorax", "1"),
        findings=(finding,),
        completed_at=datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC),
    )
