"""What each reference model is, as data: preprocessing, tensors, findings, training budget.

A :class:`Recipe` holds everything :mod:`models.reference.train` needs to build a package's
manifest and everything :mod:`models.reference.data` needs to draw phantoms for it. Versions
differ only in their :class:`Variant` (network width and training budget).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from models.synthetic.spec import StudyKind

TRAIN_SEEDS = (0, 9_999)
"""Inclusive range of phantom seeds training may draw from."""
EVAL_SEED_START = 1_000_000
"""Evaluation draws seeds from here upwards: disjoint from :data:`TRAIN_SEEDS`."""


@dataclass(frozen=True)
class Variant:
    """Network width and training budget of one model version.

    Attributes:
        channels: Feature channels per resolution level of the network.
        steps: Optimiser steps.
        batch: Samples per step.
        pool: Distinct phantoms drawn for training (re-used with augmentation).
        lr: Adam learning rate.
    """

    channels: tuple[int, ...]
    steps: int
    batch: int
    pool: int
    lr: float = 3e-3


@dataclass(frozen=True)
class Protocol:
    """Acquisition choices drawn per phantom; each tuple is sampled uniformly.

    Matrix in pixels, slice thickness in mm, gantry tilt in degrees.
    """

    matrices: tuple[int, ...]
    stacks: tuple[tuple[int | None, float | None], ...] = ((None, None),)
    tilts_deg: tuple[float, ...] = (0.0,)


@dataclass(frozen=True)
class Recipe:
    """One reference model: its manifest fields, sampling protocol and versions."""

    name: str
    task: str
    kinds: tuple[StudyKind, ...]
    modality: tuple[str, ...]
    body_part: tuple[str, ...]
    description: str
    preprocessing: tuple[dict[str, Any], ...]
    input_shape: tuple[int, ...]
    spacing_mm: tuple[float, ...] | None
    output_name: str
    output_meaning: str
    postprocessing: dict[str, Any]
    finding: dict[str, Any]
    max_batch: int
    protocol: Protocol
    train_crop: tuple[int, ...] | None
    variants: dict[int, Variant]
    intended_use: str
    limitations: str
    smoke: Variant = field(default=Variant(channels=(4, 8), steps=3, batch=2, pool=4))

    def variant(self, version: int) -> Variant:
        """The variant of ``version`` (versions past the last defined one reuse the last)."""
        known = sorted(self.variants)
        return self.variants[max([v for v in known if v <= version], default=known[0])]

    @property
    def spatial_dims(self) -> int:
        """2 for radiograph models, 3 for volume models."""
        return len(self.input_shape) - 2


_COMMON_LIMITS = (
    "Trained and evaluated on synthetic phantoms only; never validated on patient images. "
    "Not for clinical use."
)

ICH = Recipe(
    name="ich-ct-head",
    task="segmentation",
    kinds=(StudyKind.CT_HEAD,),
    modality=("CT",),
    body_part=("HEAD",),
    description="Intracranial haemorrhage segmentation on non-contrast CT head (reference model).",
    preprocessing=(
        {"transform": "Orientation", "axcodes": "RAS"},
        {"transform": "Spacing", "pixdim": [2.5, 2.5, 5.0], "mode": "bilinear"},
        {"transform": "Window", "center": 50, "width": 140},
        {"transform": "ResizeWithPadOrCrop", "spatial_size": [96, 96, 32]},
    ),
    input_shape=(-1, 1, 96, 96, 32),
    spacing_mm=(2.5, 2.5, 5.0),
    output_name="logits",
    output_meaning="per-voxel haemorrhage logit (sigmoid gives probability)",
    postprocessing={
        "activation": "sigmoid",
        "voxel_threshold": 0.5,
        "presence_threshold": 0.5,
        "connected_components": True,
        "min_volume_ml": 0.3,
    },
    finding={
        "name": "intracranial-hemorrhage",
        "concept": {"value": "1386000", "scheme": "SCT", "meaning": "Intracranial hemorrhage"},
        "channel": 0,
        "derive": ["presence", "probability", "bounding_box", "volume_ml", "area_mm2"],
        "critical": True,
    },
    max_batch=8,
    protocol=Protocol(matrices=(128, 256, 512), stacks=((32, 5.0), (64, 2.5)), tilts_deg=(0.0,)),
    train_crop=(48, 48, 32),
    variants={
        1: Variant(channels=(4, 8, 16), steps=100, batch=4, pool=100),
        2: Variant(channels=(8, 16, 32), steps=300, batch=4, pool=200),
    },
    intended_use=(
        "Demonstration of triage of intracranial haemorrhage on CT head inside statlane; "
        "flags a critical finding and measures its volume (mL)."
    ),
    limitations=_COMMON_LIMITS + " Intraparenchymal bleeds of 14-36 mm in a simple head only.",
)

CXR = Recipe(
    name="cxr-pneumothorax",
    task="classification",
    kinds=(StudyKind.CR_CHEST, StudyKind.DX_CHEST),
    modality=("CR", "DX"),
    body_part=("CHEST",),
    description="Pneumothorax classification on PA chest radiographs (reference model).",
    preprocessing=(
        {
            "transform": "ScaleIntensityRange",
            "a_min": 0.0,
            "a_max": 4095.0,
            "b_min": 0.0,
            "b_max": 1.0,
            "clip": True,
        },
        {"transform": "Resize", "spatial_size": [128, 128, 1], "mode": "area"},
    ),
    input_shape=(-1, 1, 128, 128),
    spacing_mm=None,
    output_name="logits",
    output_meaning="pneumothorax logit per image (sigmoid gives probability)",
    postprocessing={"activation": "sigmoid", "presence_threshold": 0.5},
    finding={
        "name": "pneumothorax",
        "concept": {"value": "36118008", "scheme": "SCT", "meaning": "Pneumothorax"},
        "channel": 0,
        "derive": ["presence", "probability"],
        "critical": True,
    },
    max_batch=32,
    protocol=Protocol(matrices=(256, 512, 1024)),
    train_crop=None,
    variants={1: Variant(channels=(8, 16, 32, 32), steps=250, batch=16, pool=300)},
    intended_use=(
        "Demonstration of triage of pneumothorax on PA chest radiographs (CR/DX) inside statlane."
    ),
    limitations=_COMMON_LIMITS + " Apical-lateral pneumothorax in a simple projection phantom.",
)

NODULE = Recipe(
    name="ct-chest-nodule",
    task="detection",
    kinds=(StudyKind.CT_CHEST,),
    modality=("CT",),
    body_part=("CHEST",),
    description="Solid lung nodule detection on chest CT (reference model, routine workload).",
    preprocessing=(
        {"transform": "Orientation", "axcodes": "RAS"},
        {"transform": "Spacing", "pixdim": [3.0, 3.0, 3.0], "mode": "bilinear"},
        {"transform": "Window", "center": -600, "width": 1500},
        {"transform": "ResizeWithPadOrCrop", "spatial_size": [112, 112, 84]},
    ),
    input_shape=(-1, 1, 112, 112, 84),
    spacing_mm=(3.0, 3.0, 3.0),
    output_name="heatmap",
    output_meaning="per-voxel nodule logit (sigmoid gives probability)",
    postprocessing={
        "activation": "sigmoid",
        "voxel_threshold": 0.5,
        "presence_threshold": 0.5,
        "connected_components": True,
        "min_volume_ml": 0.03,
    },
    finding={
        "name": "pulmonary-nodule",
        "concept": {"value": "786838002", "scheme": "SCT", "meaning": "Pulmonary nodule"},
        "channel": 0,
        "derive": ["presence", "probability", "bounding_box", "volume_ml"],
        "critical": False,
    },
    max_batch=4,
    protocol=Protocol(matrices=(128, 256, 512), stacks=((100, 2.5), (120, 2.5))),
    train_crop=(48, 48, 48),
    variants={1: Variant(channels=(16, 32, 64), steps=120, batch=4, pool=80)},
    intended_use="Demonstration of lung nodule detection on chest CT inside statlane.",
    limitations=_COMMON_LIMITS + " Solid 6-20 mm nodules in lungs without vessels.",
)

RECIPES: dict[str, Recipe] = {r.name: r for r in (ICH, CXR, NODULE)}


def recipe_for(name: str) -> Recipe:
    """The recipe of a reference model.

    Raises:
        KeyError: ``name`` is not a reference model; the message lists the known ones.
    """
    try:
        return RECIPES[name]
    except KeyError:
        raise KeyError(f"unknown reference model {name!r}; known: {', '.join(RECIPES)}") from None
