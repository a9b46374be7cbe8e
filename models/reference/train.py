"""Train a reference model on synthetic phantoms and write its package version folder.

``statlane models train NAME`` calls :func:`train_model`. Training is deterministic for a given
seed (seeded torch and numpy, deterministic algorithms), draws phantoms only from
:data:`~models.reference.recipes.TRAIN_SEEDS` and runs them through the model's own
preprocessing pipeline, so what the network learns is what inference feeds it.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from models.manifest import (
    Manifest,
    ModelCard,
    WeightsFile,
    dump_manifest,
    sha256_of,
)
from models.reference.data import ModelSample, case_for, model_sample
from models.reference.export import (
    ONNX_FILE,
    TORCHSCRIPT_FILE,
    export_onnx,
    export_torchscript,
)
from models.reference.networks import build_network, count_parameters
from models.reference.recipes import TRAIN_SEEDS, Recipe, Variant, recipe_for
from preprocessing.pipeline import Pipeline

log = logging.getLogger(__name__)
INPUT_NAME = "image"


def train_model(
    name: str, out_dir: Path, *, version: int | None = None, seed: int = 0, smoke: bool = False
) -> Path:
    """Train reference model ``name`` and write ``out_dir/<name>/<version>/``.

    Args:
        name: A reference model (``ich-ct-head``, ``cxr-pneumothorax``, ``ct-chest-nodule``).
        out_dir: The packages root (one folder per model name).
        version: Version to write; default: one past the highest version already there.
        seed: Seeds torch, the crop sampler and which training phantoms are drawn.
        smoke: A few steps on a handful of small phantoms (seconds), for tests.

    Returns:
        The version folder, holding ``model.onnx``, ``model.ts`` and ``manifest.yaml``.
    """
    recipe = recipe_for(name)
    package = Path(out_dir) / name
    version = version if version is not None else _next_version(package)
    variant = recipe.smoke if smoke else recipe.variant(version)
    folder = package / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    # Denormal activations make CPU convolutions crawl; the setting is process-wide, so it is
    # switched off again below (other code, e.g. hypothesis, relies on IEEE subnormals).
    torch.set_flush_denormal(True)
    try:
        torch.manual_seed(seed)
        seeds = training_seeds(variant.pool, seed)
        samples = _draw(recipe, seeds, smoke=smoke)
        network = build_network(recipe.task, variant.channels)
        final_loss = _fit(network, recipe, variant, samples, seed)
        network.eval()
        example = torch.zeros((1, *recipe.input_shape[1:]), dtype=torch.float32)
        export_onnx(
            network,
            example,
            folder / ONNX_FILE,
            input_name=INPUT_NAME,
            output_name=recipe.output_name,
        )
        export_torchscript(network, example, folder / TORCHSCRIPT_FILE)
    finally:
        torch.use_deterministic_algorithms(previous)
        torch.set_flush_denormal(False)
    elapsed = time.perf_counter() - started
    manifest = build_manifest(recipe, version, folder, variant, seeds, seed, network, elapsed)
    dump_manifest(manifest, folder)
    log.info(
        "%s: trained in %.0f s (final loss %.4f) -> %s", manifest.ident, elapsed, final_loss, folder
    )
    return folder


def training_seeds(pool: int, seed: int) -> list[int]:
    """``pool`` consecutive phantom seeds inside :data:`TRAIN_SEEDS`, offset by ``seed``."""
    lo, hi = TRAIN_SEEDS
    span = hi - lo + 1
    return [lo + (seed * 1009 + i) % span for i in range(pool)]


def _next_version(package: Path) -> int:
    existing = [int(p.name) for p in package.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(existing, default=0) + 1


def _draw(recipe: Recipe, seeds: list[int], *, smoke: bool) -> list[ModelSample]:
    pipeline = Pipeline.from_spec(list(recipe.preprocessing))
    samples = []
    for s in tqdm(seeds, desc=f"{recipe.name} phantoms", unit="case", leave=False):
        if smoke:  # the smallest protocol: a handful of tiny phantoms
            from models.reference.data import phantom_case

            case = phantom_case(
                recipe.kinds[0], s, finding=s % 2 == 1, matrix=min(recipe.protocol.matrices)
            )
        else:
            case = case_for(recipe, s)
        samples.append(model_sample(recipe, case, pipeline))
    return samples


def _fit(
    network: nn.Module, recipe: Recipe, variant: Variant, samples: list[ModelSample], seed: int
) -> float:
    rng = np.random.default_rng(seed)
    optimiser = torch.optim.Adam(network.parameters(), lr=variant.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: 0.5 * (1.0 + math.cos(math.pi * step / max(variant.steps, 1)))
    )
    network.train()
    loss_value = float("nan")
    progress = tqdm(range(variant.steps), desc=f"{recipe.name} train", unit="step")
    for _step in progress:
        picks = rng.integers(len(samples), size=variant.batch)
        if recipe.task == "classification":
            x = torch.from_numpy(np.stack([samples[i].image for i in picks]))
            y = torch.tensor([[samples[i].label] for i in picks], dtype=torch.float32)
            loss = nn.functional.binary_cross_entropy_with_logits(network(x), y)
        else:
            crops = [_crop(samples[i], recipe.train_crop, rng) for i in picks]
            x = torch.from_numpy(np.stack([c[0] for c in crops]))
            y = torch.from_numpy(np.stack([c[1] for c in crops]))
            loss = segmentation_loss(network(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        loss_value = float(loss.detach())
        progress.set_postfix(loss=f"{loss_value:.4f}")
    return loss_value


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy plus soft Dice over the batch (robust to tiny lesions)."""
    bce = nn.functional.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum()
    dice = 1.0 - (2.0 * inter + 1.0) / (prob.sum() + target.sum() + 1.0)
    return bce + dice


def _crop(
    sample: ModelSample, size: tuple[int, ...] | None, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A random crop (centred on the lesion 2 times in 3 when there is one), random L-R flip."""
    assert sample.target is not None
    image, target = sample.image, sample.target
    shape = image.shape[1:]
    size = tuple(shape) if size is None else size
    lesion = np.argwhere(target[0] > 0.5)
    starts = []
    for axis, (n, c) in enumerate(zip(shape, size, strict=True)):
        if lesion.size and rng.random() < 0.67:
            centre = int(lesion[rng.integers(len(lesion)), axis]) + int(
                rng.integers(-c // 4, c // 4 + 1)
            )
            start = centre - c // 2
        else:
            start = int(rng.integers(0, n - c + 1))
        starts.append(int(np.clip(start, 0, n - c)))
    region = tuple(slice(s, s + c) for s, c in zip(starts, size, strict=True))
    x, y = image[(slice(None), *region)], target[(slice(None), *region)]
    if rng.random() < 0.5:
        x, y = x[:, ::-1], y[:, ::-1]
    return np.ascontiguousarray(x), np.ascontiguousarray(y)


def build_manifest(
    recipe: Recipe,
    version: int,
    folder: Path,
    variant: Variant,
    seeds: list[int],
    seed: int,
    network: nn.Module,
    elapsed_s: float,
) -> Manifest:
    """The manifest of a freshly trained version (card metrics are filled by evaluation)."""
    kinds = ", ".join(k.value for k in recipe.kinds)
    card = ModelCard(
        intended_use=recipe.intended_use,
        training_data=(
            f"synthetic phantoms from statlane synth ({kinds}), seeds {min(seeds)}-{max(seeds)} "
            f"within the training range {TRAIN_SEEDS[0]}-{TRAIN_SEEDS[1]} ({len(seeds)} phantoms,"
            f" finding on odd seeds, matrices {list(recipe.protocol.matrices)}); {variant.steps} "
            f"steps x batch {variant.batch}, torch seed {seed}, {elapsed_s:.0f} s on CPU"
        ),
        limitations=recipe.limitations,
        not_for_clinical_use=True,
    )
    output_shape = [-1, 1] if recipe.task == "classification" else [-1, *recipe.input_shape[1:]]
    data = {
        "name": recipe.name,
        "version": version,
        "task": recipe.task,
        "description": (
            f"{recipe.description} {type(network).__name__} channels {list(variant.channels)}, "
            f"{count_parameters(network)} parameters."
        ),
        "modality": list(recipe.modality),
        "body_part": list(recipe.body_part),
        "input": {
            "name": INPUT_NAME,
            "shape": list(recipe.input_shape),
            **({"spacing_mm": list(recipe.spacing_mm)} if recipe.spacing_mm else {}),
            **({"orientation": "RAS"} if recipe.spatial_dims == 3 else {}),
        },
        "outputs": [
            {"name": recipe.output_name, "shape": output_shape, "meaning": recipe.output_meaning}
        ],
        "preprocessing": [dict(step) for step in recipe.preprocessing],
        "postprocessing": dict(recipe.postprocessing),
        "findings": [{**recipe.finding, "output": recipe.output_name}],
        "weights": {
            "onnx": WeightsFile(path=ONNX_FILE, sha256=sha256_of(folder / ONNX_FILE)),
            "torchscript": WeightsFile(
                path=TORCHSCRIPT_FILE, sha256=sha256_of(folder / TORCHSCRIPT_FILE)
            ),
        },
        "runtime": {
            "max_batch": recipe.max_batch,
            "backends": ["onnxruntime", "torchscript", "triton"],
        },
        "card": card,
    }
    return Manifest.model_validate(data)
