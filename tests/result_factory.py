"""Build ``router.result.AIResult`` values from synthetic studies, for router tests.

The findings are made by hand (not by running a model) so the tests of result objects and
messages are fast and know exactly what to expect: a bleed of ``volume_ml`` on the middle slice
in a box of known pixel coordinates. The multi-label organ result (:func:`organ_result`) runs
the real postprocessing on synthetic organ logits instead: a whole-body segmentation model
with one channel per organ, its label map placed on the source grid as the service does.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from models.manifest import (
    BackendKind,
    CodedConcept,
    FindingSpec,
    Manifest,
    ModelCard,
    OutputSpec,
    Postprocessing,
    RuntimeHints,
    Task,
    TensorSpec,
    Weights,
    WeightsFile,
)
from models.postprocess import Finding, postprocess
from models.synthetic import generate_study
from preprocessing.series import load_series
from router.result import AIResult, Algorithm, KeyImage, Mode, SourceInstance
from serving.service.results import build_result, mask_on_source, source_instance, study_identity

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


# ---- multi-label segmentation (organs) --------------------------------------------------------

ANATOMICAL_STRUCTURE = CodedConcept(value="91723000", scheme="SCT", meaning="Anatomical Structure")
ORGAN_OUTPUT = "logits"


def organ_concepts(count: int) -> list[CodedConcept]:
    """``count`` distinct SNOMED CT anatomic regions (DICOM CID 4, by keyword), then local codes."""
    concepts: list[CodedConcept] = []
    seen: set[str] = set()
    for keyword in codes.cid4.dir():
        code = getattr(codes.cid4, keyword)
        if code.scheme_designator == "SCT" and code.value not in seen and len(code.meaning) <= 64:
            seen.add(code.value)
            concepts.append(CodedConcept(value=code.value, scheme="SCT", meaning=code.meaning))
        if len(concepts) == count:
            return concepts
    for i in range(len(concepts) + 1, count + 1):
        concepts.append(
            CodedConcept(value=f"ORG{i:04d}", scheme="99STATLANE", meaning=f"Organ {i}")
        )
    return concepts


def organ_manifest(
    labels: int = 100,
    spatial: tuple[int, int, int] = (64, 64, 40),
    *,
    name: str = "organs-ct",
    **rules: Any,
) -> Manifest:
    """A whole-body CT segmentation model: channel 0 background, channel ``i`` organ ``i``.

    ``rules`` override the postprocessing (default: softmax, argmax, like a MONAI bundle).
    """
    concepts = organ_concepts(labels)
    findings = [
        FindingSpec(
            name=f"organ-{i:03d}",
            concept=concepts[i - 1],
            category=ANATOMICAL_STRUCTURE,
            output=ORGAN_OUTPUT,
            channel=i,
            derive=["presence", "probability", "bounding_box", "volume_ml"],
        )
        for i in range(1, labels + 1)
    ]
    postprocessing = Postprocessing(**{"activation": "softmax", "discrete": "argmax", **rules})
    return Manifest(
        name=name,
        version=1,
        task=Task.SEGMENTATION,
        modality=["CT"],
        body_part=["CHEST"],
        input=TensorSpec(name="image", shape=[-1, 1, *spatial]),
        outputs=[
            OutputSpec(
                name=ORGAN_OUTPUT,
                shape=[-1, labels + 1, *spatial],
                meaning="organ logits, channel 0 background",
            )
        ],
        preprocessing=[{"transform": "Orientation", "axcodes": "RAS"}],
        postprocessing=postprocessing,
        findings=findings,
        weights=Weights(onnx=WeightsFile(path="model.onnx", sha256="0" * 64)),
        runtime=RuntimeHints(max_batch=1, backends=[BackendKind.ONNXRUNTIME]),
        card=ModelCard(intended_use="tests only", training_data="none"),
    )


def organ_logits(spatial: tuple[int, int, int], labels: int, seed: int = 0) -> np.ndarray:
    """Logits ``(labels + 1, *spatial)`` of random-ish organ blobs that never overlap.

    The grid is cut into a lattice of at least ``labels`` cells; organ ``i`` is an ellipsoid
    with a random centre and radii inside cell ``i - 1``. Its logit is ``4 (1 - d)`` at
    ellipsoid distance ``d`` (positive inside, highest at the centre), background's 0, and every
    other channel -4, so argmax and a 0.5 sigmoid threshold both give the ellipsoid.
    """
    rng = np.random.default_rng(seed)
    logits = np.full((labels + 1, *spatial), -4.0, dtype=np.float32)
    logits[0] = 0.0
    side = math.ceil(labels ** (1.0 / 3.0))
    cells = [side, side, side]
    while math.prod(cells) - math.prod(cells[1:]) >= labels:  # drop spare cells where possible
        cells[0] -= 1
        cells.sort()
    cell = np.asarray(spatial, dtype=np.float64) / np.asarray(cells[::-1], dtype=np.float64)
    for i in range(1, labels + 1):
        index = np.unravel_index(i - 1, cells[::-1])
        lo_cell = np.asarray(index, dtype=np.float64) * cell
        radii = np.maximum(rng.uniform(0.25, 0.45, 3) * cell, 0.8)
        centre = lo_cell + cell / 2.0 + rng.uniform(-0.05, 0.05, 3) * cell
        lo = np.maximum(np.floor(centre - radii).astype(int), 0)
        hi = np.minimum(np.ceil(centre + radii).astype(int) + 1, spatial)
        x, y, z = np.ogrid[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        d = (
            ((x - centre[0]) / radii[0]) ** 2
            + ((y - centre[1]) / radii[1]) ** 2
            + ((z - centre[2]) / radii[2]) ** 2
        )
        box = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
        logits[(i, *box)] = (4.0 * (1.0 - d)).astype(np.float32)
    return logits


@dataclass(frozen=True)
class OrganCase:
    """A multi-label result and what produced it.

    Attributes:
        result: The result as the service builds it (findings, key images, label map).
        manifest: The segmentation model.
        logits: One item's logits on the model grid, ``(labels + 1, X, Y, Z)``.
        model_affine_ras: Model grid voxel → RAS mm.
    """

    result: AIResult
    manifest: Manifest
    logits: np.ndarray
    model_affine_ras: np.ndarray


def organ_result(
    tmp: Path,
    *,
    labels: int = 100,
    matrix: int = 64,
    slices: int = 32,
    model_grid: tuple[int, int, int] = (32, 32, 16),
    seed: int = 0,
) -> OrganCase:
    """A CT study under ``tmp`` and a ``labels``-organ segmentation result on it.

    The model grid covers the source volume at a coarser, axis-aligned spacing; the logits are
    :func:`organ_logits`; findings come from :func:`models.postprocess.postprocess` and the
    mask from :func:`serving.service.results.mask_on_source`, as in the service.
    """
    kind = "ct-head" if slices <= 64 else "ct-chest"
    study = generate_study(kind, tmp, seed=seed + 11, matrix=matrix, slices=slices)
    volume = load_series(study.files)
    by_uid = {}
    for path in study.files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        by_uid[str(ds.SOPInstanceUID)] = (ds, path)
    ordered = [by_uid[uid] for uid in volume.sop_instance_uids]
    instances = [source_instance_of(ds, path) for ds, path in ordered]
    # model voxel centres spread over the source volume (same axes, coarser)
    scale = (np.asarray(volume.shape, dtype=np.float64) - 1.0) / (np.asarray(model_grid) - 1.0)
    model_affine = volume.affine_ras @ np.diag([*scale, 1.0])
    manifest = organ_manifest(labels, model_grid)
    logits = organ_logits(model_grid, labels, seed)
    findings = postprocess({ORGAN_OUTPUT: logits[None]}, manifest, model_affine)
    mask = mask_on_source(
        {ORGAN_OUTPUT: logits}, manifest, model_affine, volume.affine, volume.shape
    )
    result = build_result(
        task_id="task-0003",
        study=identity_of(ordered[0][0]),
        instances=instances,
        manifest=manifest,
        findings=findings,
        completed_at=datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC),
        mode=Mode.ASSISTANT,
        mask=mask,
    )
    return OrganCase(result, manifest, logits, model_affine)
