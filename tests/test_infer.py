"""``statlane infer`` on generated studies: findings, volumes, and one-line failures."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from models.synthetic import generate_study
from serving.commands import infer


def _args(
    study: Path, model: str, *, as_json: bool = True, backend: str = "onnxruntime"
) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    infer.add_parser(parser.add_subparsers())
    argv = ["infer", str(study), "--model", model, "--backend", backend]
    return parser.parse_args([*argv, "--json"] if as_json else argv)


@pytest.fixture(scope="module")
def ich_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    study = generate_study("ct-head", tmp_path_factory.mktemp("ich"), seed=20_001, finding=True)
    assert study.ground_truth is not None
    return study.study_dir, json.loads(study.ground_truth.read_text())


def test_hemorrhage_found_with_its_volume(
    ich_study: tuple[Path, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    folder, truth = ich_study
    assert infer.run(_args(folder, "ich-ct-head")) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == "ich-ct-head@2"  # the active version
    assert report["study_instance_uid"] == truth["study_instance_uid"]
    (finding,) = report["findings"]
    assert finding["present"]
    assert finding["critical"]
    assert finding["concept_value"] == "1386000"
    truth_ml = float(truth["volume_ml"])
    assert finding["volume_ml"] == pytest.approx(truth_ml, rel=0.30)
    assert finding["key_instance_uid"]  # a source slice to show


def test_table_output_and_torchscript(
    ich_study: tuple[Path, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    folder, _ = ich_study
    assert infer.run(_args(folder, "ich-ct-head@1", as_json=False, backend="torchscript")) == 0
    out = capsys.readouterr().out
    assert "ich-ct-head@1 (torchscript)" in out
    assert "intracranial-hemorrhage" in out
    assert "PatientName" not in out


def test_negative_radiograph(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    study = generate_study("cr-chest", tmp_path, seed=20_002, finding=False, matrix=512)
    assert infer.run(_args(study.study_dir, "cxr-pneumothorax")) == 0
    (finding,) = json.loads(capsys.readouterr().out)["findings"]
    assert finding["name"] == "pneumothorax"
    assert 0.0 <= finding["probability"] <= 1.0


def test_failures_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert infer.run(_args(tmp_path / "missing", "ich-ct-head")) == 2
    assert capsys.readouterr().err.count("\n") == 1
    study = generate_study("cr-chest", tmp_path, seed=20_003, matrix=64)
    assert infer.run(_args(study.study_dir, "ich-ct-head")) == 1
    err = capsys.readouterr().err
    assert "no CT series" in err
    assert err.count("\n") == 1
    assert infer.run(_args(study.study_dir, "no-such-model")) == 2
    assert "no such model" in capsys.readouterr().err
    assert infer.run(_args(study.study_dir, "ich-ct-head@9")) == 2
    assert "no such version" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert infer.run(_args(empty, "ich-ct-head")) == 1
    assert capsys.readouterr().err.startswith("statlane infer:")
