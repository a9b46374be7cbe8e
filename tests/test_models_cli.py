"""``statlane models``: every verb wired; a bad package is refused with one clear line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from models.manifest import MANIFEST_FILE
from serving.cli import main
from tests.model_factory import build_package


@pytest.fixture
def root(tmp_path: Path) -> Path:
    build_package(tmp_path / "repo", "tiny-ct", 1)
    build_package(tmp_path / "repo", "tiny-ct", 2)
    return tmp_path / "repo"


def _models(root: Path, *args: str) -> int:
    return main(["models", "--root", str(root), *args])


def test_help_lists_every_verb(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["models", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for verb in ("list", "show", "validate", "profile", "export-triton", "import-bundle", "train"):
        assert verb in out
    assert "evaluate" in out
    assert main(["models"]) == 2


def test_list_and_show(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _models(root, "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:3] for line in lines] == [
        ["tiny-ct@1", "retired", "classification"],
        ["tiny-ct@2", "active", "classification"],
    ]
    assert _models(root, "show", "tiny-ct") == 0
    out = capsys.readouterr().out
    assert out.startswith(f"# tiny-ct@2 (active) in {root / 'tiny-ct' / '2'}")
    assert yaml.safe_load(out)["version"] == 2


def test_validate_ok(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _models(root, "validate") == 0
    assert capsys.readouterr().out.splitlines() == ["OK      tiny-ct@1", "OK      tiny-ct@2"]


def test_tampered_weights_exit_1_naming_the_file(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with (root / "tiny-ct" / "1" / "model.ts").open("ab") as handle:
        handle.write(b"extra")
    assert _models(root, "validate") == 1
    captured = capsys.readouterr()
    failed, ok = captured.out.splitlines()
    assert failed.startswith("FAILED  tiny-ct@1: tiny-ct@1: torchscript weights model.ts sha256")
    assert ok == "OK      tiny-ct@2"
    assert captured.err.strip() == "statlane models validate: 1 of 2 failed"


def test_unknown_manifest_field_exit_1_naming_the_field(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = root / "tiny-ct" / "2" / MANIFEST_FILE
    data = yaml.safe_load(path.read_text())
    data["runtime"]["gpu_memory_gb"] = 8
    path.write_text(yaml.safe_dump(data))
    assert _models(root, "validate", "tiny-ct@2") == 1
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith(f"FAILED  tiny-ct@2: {path}: runtime.gpu_memory_gb: Extra inputs")
    assert _models(root, "show", "tiny-ct@2") == 1
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert err.startswith(f"statlane models show: {path}: runtime.gpu_memory_gb")


def test_not_found_is_a_usage_error(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _models(root, "validate", "absent") == 2
    assert _models(root, "show", "tiny-ct@7") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("statlane models validate: absent: no such model")
    assert err[1].startswith("statlane models show: tiny-ct@7: no such version")
    assert main(["models", "--root", str(root.parent / "empty"), "validate"]) == 1


def test_set_state(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _models(root, "set-state", "tiny-ct@1", "active") == 0
    assert capsys.readouterr().out.strip() == "tiny-ct@1: active, tiny-ct@2: shadow"
    assert _models(root, "set-state", "tiny-ct@1", "retired") == 1
    assert "promote another version" in capsys.readouterr().err


def test_train_calls_the_reference_trainer(
    root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import models.reference.train as train

    calls: list[tuple[Any, ...]] = []

    def fake(name: str, out_dir: Path, **kwargs: Any) -> Path:
        calls.append((name, out_dir, kwargs))
        return out_dir / name / "3"

    monkeypatch.setattr(train, "train_model", fake)
    assert _models(root, "train", "ich-ct-head", "--version", "3", "--seed", "7", "--smoke") == 0
    assert calls == [("ich-ct-head", root, {"version": 3, "seed": 7, "smoke": True})]
    assert capsys.readouterr().out.strip() == f"trained ich-ct-head -> {root / 'ich-ct-head' / '3'}"


def test_train_unknown_model_is_a_usage_error(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _models(root, "train", "no-such-model") == 2
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert err.startswith("statlane models train: unknown reference model 'no-such-model'")


def test_evaluate_calls_the_evaluator(
    root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import models.evaluate as evaluate

    calls: list[tuple[Any, ...]] = []

    def fake(folder: Path, **kwargs: Any) -> dict[str, Any]:
        calls.append((folder, kwargs))
        return {"metrics": {"sensitivity": 1.0}}

    monkeypatch.setattr(evaluate, "evaluate_package", fake)
    assert _models(root, "evaluate", "--cases", "10", "--backend", "torchscript") == 0
    assert calls == [
        (root / "tiny-ct" / "2", {"cases": 10, "seed": 1_000_000, "backend": "torchscript"})
    ]
    assert '"model": "tiny-ct@2"' in capsys.readouterr().out
