"""Reference models: in-process phantoms equal the DICOM path, manifests match their graphs,
and a smoke training run writes a valid, verified package."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from models.evaluate import shipped_packages
from models.manifest import load_manifest, verify_weights
from models.reference.data import case_for, model_sample, phantom_case
from models.reference.recipes import EVAL_SEED_START, RECIPES, TRAIN_SEEDS
from models.reference.train import train_model, training_seeds
from models.registry import check_onnx_graph
from models.runner import ModelRunner
from models.synthetic import generate_study
from preprocessing import load_series
from preprocessing.pipeline import Pipeline


@pytest.mark.parametrize(
    ("kind", "kwargs", "model"),
    [
        ("ct-head", {"matrix": 128, "slices": 32}, "ich-ct-head"),
        ("ct-chest", {"matrix": 64}, "ct-chest-nodule"),
        ("cr-chest", {"matrix": 256}, "cxr-pneumothorax"),
        ("dx-chest", {"matrix": 256}, "cxr-pneumothorax"),
    ],
)
def test_in_process_case_equals_dicom_path(
    tmp_path: Path, kind: str, kwargs: dict[str, Any], model: str
) -> None:
    study = generate_study(kind, tmp_path, seed=11, finding=True, **kwargs)
    from_files = load_series(study.files)
    case = phantom_case(kind, 11, finding=True, **kwargs)
    assert case.volume.modality == from_files.modality
    np.testing.assert_array_equal(case.volume.array, from_files.array)
    np.testing.assert_allclose(case.volume.affine, from_files.affine, atol=1e-4)
    pipeline = Pipeline.from_spec(list(RECIPES[model].preprocessing))
    a, b = pipeline(case.volume), pipeline(from_files)
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)
    np.testing.assert_allclose(np.asarray(a.affine), np.asarray(b.affine), atol=1e-4)
    if study.mask is not None and case.mask is not None:
        np.testing.assert_array_equal(
            np.load(study.mask).astype(bool).reshape(case.mask.shape), case.mask
        )


def test_sample_target_is_on_the_model_grid() -> None:
    recipe = RECIPES["ich-ct-head"]
    sample = model_sample(recipe, case_for(recipe, 3))  # odd seed: a haemorrhage
    assert sample.image.shape == tuple(recipe.input_shape[1:])
    assert sample.target is not None
    assert sample.target.shape == sample.image.shape
    assert sample.label == 1.0
    assert sample.target.max() > 0.5


def test_training_and_evaluation_seeds_are_disjoint() -> None:
    seeds = training_seeds(500, seed=9)
    assert min(seeds) >= TRAIN_SEEDS[0]
    assert max(seeds) <= TRAIN_SEEDS[1] < EVAL_SEED_START


@pytest.mark.parametrize("folder", shipped_packages(), ids=lambda p: f"{p.parent.name}@{p.name}")
def test_shipped_manifest_matches_graph(folder: Path) -> None:
    manifest = load_manifest(folder)
    verify_weights(manifest, folder)
    assert manifest.card.not_for_clinical_use
    assert "seeds" in manifest.card.training_data
    assert (folder / "model.onnx").stat().st_size < 2_500_000
    graph = onnx.load(str(folder / "model.onnx")).graph

    def dims(value: onnx.ValueInfoProto) -> list[int]:
        return [d.dim_value if d.dim_value else -1 for d in value.type.tensor_type.shape.dim]

    assert [i.name for i in graph.input] == [manifest.input.name]
    if manifest.runtime.chunking is None:
        assert dims(graph.input[0]) == manifest.input.shape
        assert {o.name: dims(o) for o in graph.output} == {
            o.name: o.shape for o in manifest.outputs
        }
    else:  # chunked: patches and whole volumes run, so the spatial axes are symbolic
        check_onnx_graph(manifest, folder / "model.onnx")
        assert dims(graph.input[0])[:2] == manifest.input.shape[:2]
        assert dims(graph.input[0])[2:] == [-1] * (len(manifest.input.shape) - 2)


def test_ich_versions_differ() -> None:
    v1, v2 = (load_manifest(p) for p in shipped_packages() if p.parent.name == "ich-ct-head")
    assert v1.weights.onnx is not None
    assert v2.weights.onnx is not None
    assert v1.weights.onnx.sha256 != v2.weights.onnx.sha256
    assert v1.description != v2.description


def test_smoke_training_writes_a_valid_package(tmp_path: Path) -> None:
    folder = train_model("ich-ct-head", tmp_path, smoke=True, seed=3)
    assert folder == tmp_path / "ich-ct-head" / "1"
    manifest = load_manifest(folder)
    verify_weights(manifest, folder)
    assert manifest.ident == "ich-ct-head@1"
    again = train_model("ich-ct-head", tmp_path, smoke=True, seed=3)
    assert again.name == "2"  # next version
    same = load_manifest(again)
    assert same.weights.onnx is not None
    assert manifest.weights.onnx is not None
    runner = ModelRunner(manifest, folder)
    batch = np.zeros((1, *manifest.input.shape[1:]), dtype=np.float32)
    out = runner.run(batch)["logits"]
    out_again = ModelRunner(same, again).run(batch)["logits"]
    np.testing.assert_allclose(out, out_again, atol=1e-5)  # deterministic for a seed
    # Training flushes denormals for speed; the process-wide setting must be restored.
    subnormal = np.array([1e-40], dtype=np.float32)
    assert float((subnormal * np.float32(1.0))[0]) != 0.0
