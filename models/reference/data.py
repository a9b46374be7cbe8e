"""Training and evaluation samples drawn in-process from the synthetic phantoms.

A :class:`PhantomCase` is what :func:`models.synthetic.generate_study` would write for the same
arguments, kept in memory: the same phantom (same random stream), the same 12-bit stored values
and the same LPS affine :func:`preprocessing.load_series` reconstructs from the files
(``tests/test_reference_models.py`` holds the two equal). Samples then go through the model's own
preprocessing pipeline, so a network trained here sees exactly what inference sees.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from models.reference.recipes import Recipe
from models.runner import to_model_layout
from models.synthetic import phantom, radiograph
from models.synthetic.spec import StudyKind, StudySpec, seeded_int
from preprocessing.pipeline import Pipeline
from preprocessing.volume import Volume

FloatArray = npt.NDArray[np.float32]
_GEOMETRIC = frozenset(
    {"Orientation", "Spacing", "Resize", "ResizeWithPadOrCrop", "SpatialPad", "CenterSpatialCrop"}
)
_MODALITY = {
    StudyKind.CT_HEAD: "CT",
    StudyKind.CT_CHEST: "CT",
    StudyKind.CR_CHEST: "CR",
    StudyKind.DX_CHEST: "DX",
}


@dataclass(frozen=True)
class PhantomCase:
    """One synthetic series in memory with its ground truth.

    Attributes:
        kind: Which examination.
        seed: Phantom seed (as for ``generate_study``).
        finding: Whether a finding was planted.
        volume: The series as :func:`preprocessing.load_series` would return it.
        mask: Ground-truth mask ``[column, row, slice]`` (``[column, row, 1]`` for radiographs).
        truth_volume_ml: Lesion volume in mL (voxel count x voxel volume), CT only.
    """

    kind: StudyKind
    seed: int
    finding: bool
    volume: Volume
    mask: npt.NDArray[np.bool_] | None
    truth_volume_ml: float | None


@dataclass(frozen=True)
class ModelSample:
    """A case as the network sees it.

    Attributes:
        image: Model input without batch axis, ``(C, *spatial)`` float32.
        target: Ground truth on the model grid ``(1, *spatial)`` in [0, 1] (soft at edges), or
            ``None`` for classifiers.
        label: 1.0 when the finding is present.
        affine_ras: 4x4 voxel index → RAS mm of the model grid.
    """

    image: FloatArray
    target: FloatArray | None
    label: float
    affine_ras: npt.NDArray[np.float64]


def phantom_case(
    kind: StudyKind | str,
    seed: int,
    *,
    finding: bool,
    matrix: int | None = None,
    slices: int | None = None,
    slice_thickness_mm: float | None = None,
    gantry_tilt_deg: float = 0.0,
) -> PhantomCase:
    """The series ``generate_study`` writes for these arguments, without writing DICOM."""
    spec = StudySpec.build(
        kind,
        seed=seed,
        finding=finding,
        slices=slices,
        slice_thickness_mm=slice_thickness_mm,
        matrix=matrix,
        gantry_tilt_deg=gantry_tilt_deg,
        compression="none",
        fault=None,
        priority="ROUTINE",
    )
    rng = np.random.default_rng(seeded_int("phantom", spec.kind.value, spec.seed))
    if not spec.kind.is_ct:
        film = radiograph.chest_pa(spec.matrix, rng, spec.finding)
        s = film.pixel_spacing_mm
        volume = _volume(film.pixels.T[:, :, None].astype(np.float32), np.diag([s, s, 1.0, 1.0]))
        mask = None if film.mask is None else film.mask.T[:, :, None]
        return PhantomCase(spec.kind, seed, spec.finding, _with(volume, spec.kind), mask, None)
    geometry, ct = phantom.ct_series(spec)
    hu = phantom.stored_values(ct.hu).astype(np.float32) - np.float32(1024.0)
    volume = _volume(hu.transpose(2, 1, 0), geometry.affine_lps())
    truth = None
    mask = None
    if ct.mask is not None:
        mask = ct.mask.transpose(2, 1, 0)
        truth = float(mask.sum()) * geometry.voxel_volume_ml
    return PhantomCase(spec.kind, seed, spec.finding, _with(volume, spec.kind), mask, truth)


def _volume(array: FloatArray, affine: npt.NDArray[np.float64]) -> Volume:
    return Volume(array=array, affine=affine, series_uid="", study_uid="", modality="")


def _with(volume: Volume, kind: StudyKind) -> Volume:
    return Volume(
        array=volume.array,
        affine=volume.affine,
        series_uid=f"synthetic-{kind.value}",
        study_uid=f"synthetic-{kind.value}",
        modality=_MODALITY[kind],
    )


def case_for(recipe: Recipe, seed: int) -> PhantomCase:
    """Draw one case for ``recipe``: finding on odd seeds, protocol chosen from the seed."""
    rng = np.random.default_rng(seeded_int("protocol", recipe.name, seed))
    p = recipe.protocol
    kind = recipe.kinds[int(rng.integers(len(recipe.kinds)))]
    matrix = p.matrices[int(rng.integers(len(p.matrices)))]
    slices, thickness = p.stacks[int(rng.integers(len(p.stacks)))]
    tilt = p.tilts_deg[int(rng.integers(len(p.tilts_deg)))]
    return phantom_case(
        kind,
        seed,
        finding=seed % 2 == 1,
        matrix=matrix,
        slices=slices,
        slice_thickness_mm=thickness,
        gantry_tilt_deg=tilt,
    )


def model_sample(
    recipe: Recipe, case: PhantomCase, pipeline: Pipeline | None = None
) -> ModelSample:
    """Run ``case`` through the recipe's preprocessing; resample its mask onto the model grid."""
    pipeline = pipeline or Pipeline.from_spec(list(recipe.preprocessing))
    tensor = pipeline(case.volume)
    image = to_model_layout(tensor.numpy(), recipe.input_shape)[0]
    affine = np.asarray(tensor.affine, dtype=np.float64)
    target: FloatArray | None = None
    if recipe.task != "classification":
        target = np.zeros((1, *image.shape[1:]), dtype=np.float32)
        if case.mask is not None:
            geometric = [s for s in recipe.preprocessing if s["transform"] in _GEOMETRIC]
            mask = Volume(
                array=case.mask.astype(np.float32),
                affine=case.volume.affine,
                series_uid="",
                study_uid="",
                modality="",
            )
            resampled = Pipeline.from_spec(geometric)(mask).numpy()
            target = to_model_layout(np.clip(resampled, 0.0, 1.0), recipe.input_shape)[0]
    return ModelSample(image.astype(np.float32), target, float(case.finding), affine)
