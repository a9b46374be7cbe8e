"""A bundle's configs as data: references, macros and transforms, mapped without evaluation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from models.bundle_config import expand_macros, resolve
from models.bundle_steps import NotEvaluated, map_postprocessing, map_preprocessing


def test_references_follow_hash_and_double_colon_ids_as_data() -> None:
    config = {"image_key": "image", "net": {"args": {"size": [96, 96]}}, "alias": "@image_key"}
    assert resolve(config, "@image_key") == "image"
    assert resolve(config, "@alias") == "image"  # a chain of references
    assert resolve(config, "@net#args#size") == [96, 96]
    assert resolve(config, "@net::args::size") == [96, 96]
    assert resolve(config, "@missing") == "@missing"  # names nothing: left as it is
    assert resolve(config, "$@image_key + 'x'") == "$@image_key + 'x'"  # an expression: never


def test_macros_read_the_config_itself_and_the_bundles_own_files(tmp_path: Path) -> None:
    (tmp_path / "configs").mkdir()
    common = {"pixdim": [1.5, 1.5, 2.0], "deep": {"roi": [64, 64, 64]}}
    (tmp_path / "configs" / "common.json").write_text(json.dumps(common))
    (tmp_path.parent / "outside.json").write_text(json.dumps({"x": 1}))
    config: dict[str, Any] = {
        "roi": [96, 96, 96],
        "inferer": {"roi_size": "%roi"},
        "spacing": "%configs/common.json#pixdim",
        "nested": "%configs/common.json::deep::roi",
        "escape": "%../outside.json#x",
    }
    expanded = expand_macros(config, tmp_path)
    assert expanded["inferer"]["roi_size"] == [96, 96, 96]
    assert expanded["spacing"] == [1.5, 1.5, 2.0]
    assert expanded["nested"] == [64, 64, 64]
    assert expanded["escape"] == "%../outside.json#x"  # a macro may not leave the bundle


def _pipeline(*transforms: dict[str, Any], section: str = "preprocessing") -> dict[str, Any]:
    return {"image_key": "image", section: {"_target_": "Compose", "transforms": list(transforms)}}


def test_postprocessing_maps_sigmoid_threshold_largest_component_and_invert() -> None:
    config = _pipeline(
        {"_target_": "Activationsd", "keys": "pred", "sigmoid": True},
        {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing"},
        {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.4},
        {"_target_": "KeepLargestConnectedComponentd", "keys": "pred", "applied_labels": [1]},
        {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir"},
        {"_target_": "FillHolesd", "keys": "pred"},
        section="postprocessing",
    )
    notes: list[str] = []
    post = map_postprocessing(config, notes)
    assert post.fields == {
        "activation": "sigmoid",
        "discrete": "threshold",
        "voxel_threshold": 0.4,
        "largest_component": True,
    }
    assert post.skipped == ["postprocessing SaveImaged"]
    [fill] = post.unmapped
    assert fill.target == "postprocessing FillHolesd"
    assert fill.unsupported
    assert notes == []


def test_postprocessing_refuses_what_it_cannot_honour() -> None:
    config = _pipeline(
        {"_target_": "Activationsd", "keys": "pred", "softmax": True, "sigmoid": True},
        {"_target_": "AsDiscreted", "keys": "pred", "argmax": True, "threshold": 0.5},
        section="postprocessing",
    )
    notes: list[str] = []
    post = map_postprocessing(config, notes)
    assert [u.reason for u in post.unmapped] == [
        "needs exactly one of softmax/sigmoid and no 'other' function",
        "only argmax, or a threshold in (0, 1), is supported",
    ]
    assert notes == ["no plain Activations step in postprocessing: activation 'none'"]


def test_preprocessing_sorts_label_only_data_only_and_unsupported_steps() -> None:
    config = _pipeline(
        {"_target_": "LoadImaged", "keys": ["@image_key", "label"]},
        {
            "_target_": "Spacingd",
            "keys": ["@image_key", "label"],
            "pixdim": [1, 1, 2],
            "mode": ["bilinear", "nearest"],
        },
        {"_target_": "CopyItemsd", "keys": "@image_key", "names": "raw"},
        {"_target_": "RandFlipd", "keys": "label", "prob": 0.5},
        {"_target_": "RandGaussianNoised", "keys": "@image_key", "prob": 0.5},
        {"_target_": "CropForegroundd", "keys": "@image_key", "source_key": "label"},
        {"_target_": "scripts.transforms.ScaleIntensityd", "keys": "@image_key"},
    )
    result = map_preprocessing(config, "image")
    assert result.steps == [{"transform": "Spacing", "pixdim": [1, 1, 2], "mode": "bilinear"}]
    reasons = {u.target: (u.unsupported, u.reason) for u in result.unmapped}
    assert reasons["CopyItemsd"][0] is False  # moves data only
    assert reasons["RandFlipd"] == (False, "applies to ['label'], not the input 'image'")
    assert reasons["RandGaussianNoised"][0] is True  # would change the image: refused
    assert reasons["CropForegroundd"] == (True, "source_key 'label' is not the input 'image'")
    assert reasons["scripts.transforms.ScaleIntensityd"] == (
        True,
        "a transform of the bundle's own code, not MONAI's; not evaluated",
    )


def test_an_argument_expression_is_evaluated_only_through_the_evaluator() -> None:
    config = _pipeline(
        {"_target_": "Spacingd", "keys": "@image_key", "pixdim": "$[1.5] * 3"},
    )
    assert map_preprocessing(config, "image").steps == []  # not evaluated without one
    seen: list[tuple[str, str]] = []

    def evaluate(where: str, text: str) -> object:
        seen.append((where, text))
        return [1.5, 1.5, 1.5]

    assert map_preprocessing(config, "image", evaluate).steps == [
        {"transform": "Spacing", "pixdim": [1.5, 1.5, 1.5]}
    ]
    assert seen == [("preprocessing#transforms#0#pixdim", "$[1.5] * 3")]

    def refuse(where: str, text: str) -> object:
        raise NotEvaluated("gives a dtype, not plain data")

    [unmapped] = map_preprocessing(config, "image", refuse).unmapped
    assert "gives a dtype, not plain data" in unmapped.reason


@pytest.mark.parametrize("key", ["@image_key", ["@image_key"]])
def test_keys_written_as_references_are_the_input(key: object) -> None:
    config = _pipeline({"_target_": "Orientationd", "keys": key, "axcodes": "RAS"})
    assert map_preprocessing(config, "image").steps == [
        {"transform": "Orientation", "axcodes": "RAS"}
    ]
