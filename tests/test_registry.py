"""Model registry: resolving references, version states, validation of every package."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from models.manifest import MANIFEST_FILE, VersionState, dump_manifest, load_manifest, sha256_of
from models.registry import (
    ENV_ROOT,
    STATES_FILE,
    PackageNotFoundError,
    Registry,
    RegistryError,
    parse_ref,
)
from tests.model_factory import build_package, tiny_manifest


@pytest.fixture
def repo(tmp_path: Path) -> Registry:
    root = tmp_path / "repo"
    build_package(root, "tiny-ct", 1)
    build_package(root, "tiny-ct", 2)
    build_package(root, "other-ct", 1)
    return Registry(root)


def _states(registry: Registry, name: str, states: dict[int, str]) -> None:
    path = registry.root / name / STATES_FILE
    path.write_text(yaml.safe_dump({"versions": states}), encoding="utf-8")


def test_names_ignore_folders_without_versions(repo: Registry) -> None:
    (repo.root / "empty").mkdir()
    (repo.root / ".hidden" / "1").mkdir(parents=True)
    (repo.root / "tiny-ct" / "notes").mkdir()
    assert repo.names() == ["other-ct", "tiny-ct"]
    assert [v.manifest.version for v in repo.versions("tiny-ct")] == [1, 2]


def test_without_states_file_the_highest_version_is_active(repo: Registry) -> None:
    assert repo.get("tiny-ct").ident == "tiny-ct@2"
    assert repo.get("tiny-ct").state is VersionState.ACTIVE
    assert repo.get("tiny-ct@1").state is VersionState.RETIRED
    assert [v.ident for v in repo.active()] == ["other-ct@1", "tiny-ct@2"]


def test_states_file_decides_the_active_version(repo: Registry) -> None:
    _states(repo, "tiny-ct", {1: "active", 2: "shadow"})
    assert repo.get("tiny-ct").ident == "tiny-ct@1"
    assert repo.get("tiny-ct@2").state is VersionState.SHADOW


def test_unlisted_version_is_retired(repo: Registry) -> None:
    _states(repo, "tiny-ct", {1: "active"})
    assert repo.states("tiny-ct") == {1: VersionState.ACTIVE, 2: VersionState.RETIRED}


@pytest.mark.parametrize(
    ("states", "message"),
    [
        ({1: "active", 2: "active"}, "exactly one active"),
        ({1: "shadow", 2: "retired"}, "exactly one active"),
        ({1: "active", 2: "paused"}, "versions.2: unknown state 'paused'"),
        ({1: "active", 7: "shadow"}, "versions.7: no version folder 7"),
    ],
)
def test_bad_states_file_is_refused(repo: Registry, states: dict[int, str], message: str) -> None:
    _states(repo, "tiny-ct", states)
    with pytest.raises(RegistryError, match=message) as error:
        repo.get("tiny-ct")
    assert STATES_FILE in str(error.value)


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("absent", "absent: no such model .*have other-ct, tiny-ct"),
        ("tiny-ct@9", "tiny-ct@9: no such version .*have tiny-ct@1, tiny-ct@2"),
        ("tiny-ct@x", "version must be a positive integer"),
        ("tiny-ct@0", "version must be a positive integer"),
    ],
)
def test_unknown_reference_names_what_exists(repo: Registry, ref: str, message: str) -> None:
    with pytest.raises(PackageNotFoundError, match=message):
        repo.get(ref)


def test_parse_ref() -> None:
    assert parse_ref("ich-ct-head") == ("ich-ct-head", None)
    assert parse_ref("ich-ct-head@12") == ("ich-ct-head", 12)


def test_promoting_demotes_the_old_active_to_shadow(repo: Registry) -> None:
    states = repo.set_state("tiny-ct@1", "active")
    assert states == {1: VersionState.ACTIVE, 2: VersionState.SHADOW}
    on_disk = yaml.safe_load((repo.root / "tiny-ct" / STATES_FILE).read_text())
    assert on_disk == {"versions": {1: "active", 2: "shadow"}}
    assert not list((repo.root / "tiny-ct").glob("*.tmp"))
    assert repo.get("tiny-ct").ident == "tiny-ct@1"
    repo.set_state("tiny-ct@2", VersionState.RETIRED)
    assert repo.get("tiny-ct@2").state is VersionState.RETIRED


def test_the_active_version_cannot_be_demoted_directly(repo: Registry) -> None:
    with pytest.raises(RegistryError, match="promote another version"):
        repo.set_state("tiny-ct@2", "shadow")
    with pytest.raises(RegistryError, match="unknown state 'paused'"):
        repo.set_state("tiny-ct@1", "paused")
    assert not (repo.root / "tiny-ct" / STATES_FILE).exists()


def test_default_registry_is_the_shipped_folder_unless_overridden(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV_ROOT, raising=False)
    shipped = Path(__file__).resolve().parents[1] / "models" / "packages"
    assert Registry.default().root == shipped
    monkeypatch.setenv(ENV_ROOT, str(tmp_path))
    assert Registry.default().root == tmp_path


def test_factory_packages_validate(repo: Registry) -> None:
    results = repo.validate()
    assert [r.ref for r in results] == ["other-ct@1", "tiny-ct@1", "tiny-ct@2"]
    assert all(r.ok for r in results), [r.problem for r in results]
    assert [r.ref for r in repo.validate("tiny-ct@2")] == ["tiny-ct@2"]
    with pytest.raises(PackageNotFoundError):
        repo.validate("absent")


def test_every_shipped_package_validates() -> None:
    """The packages under models/packages (or $STATLANE_MODELS): none may be missing or bad."""
    registry = Registry.default()
    assert registry.names(), f"no model packages shipped in {registry.root}"
    problems = [f"{r.ref}: {r.problem}" for r in registry.validate() if not r.ok]
    assert not problems, "\n".join(problems)
    for name in registry.names():
        assert registry.get(name).state is VersionState.ACTIVE


def test_tampered_weights_are_refused(repo: Registry) -> None:
    folder = repo.root / "tiny-ct" / "2"
    with (folder / "model.onnx").open("ab") as handle:
        handle.write(b"\0")
    (result,) = repo.validate("tiny-ct@2")
    assert not result.ok
    assert "onnx weights model.onnx sha256" in str(result.problem)
    assert "altered" in str(result.problem)


def test_unknown_manifest_field_is_refused(repo: Registry) -> None:
    path = repo.root / "tiny-ct" / "1" / MANIFEST_FILE
    data = yaml.safe_load(path.read_text())
    data["input"]["surprise"] = 1
    path.write_text(yaml.safe_dump(data))
    (result,) = repo.validate("tiny-ct@1")
    assert str(path) in str(result.problem)
    assert "input.surprise: Extra inputs are not permitted" in str(result.problem)


def test_manifest_that_disagrees_with_the_onnx_graph_is_refused(repo: Registry) -> None:
    folder = repo.root / "tiny-ct" / "1"
    manifest = load_manifest(folder)
    wrong = manifest.input.model_copy(update={"shape": [-1, 1, 16, 16, 4]})
    dump_manifest(manifest.model_copy(update={"input": wrong}), folder)
    (result,) = repo.validate("tiny-ct@1")
    assert "model.onnx: input 'image': graph dims ['batch', 1, 16, 16, 8]" in str(result.problem)


def test_manifest_naming_another_model_is_refused(repo: Registry) -> None:
    folder = repo.root / "tiny-ct" / "1"
    dump_manifest(tiny_manifest("other-ct", 1, folder), folder)
    (result,) = repo.validate("tiny-ct@1")
    assert "manifest says other-ct@1, folder is tiny-ct@1" in str(result.problem)


def test_torchscript_that_does_not_load_is_refused(repo: Registry) -> None:
    folder = repo.root / "tiny-ct" / "1"
    (folder / "model.ts").write_bytes(b"not a zip archive")
    manifest = load_manifest(folder)
    ts = manifest.weights.torchscript
    assert ts is not None
    weights = manifest.weights.model_copy(
        update={"torchscript": ts.model_copy(update={"sha256": sha256_of(folder / "model.ts")})}
    )
    dump_manifest(manifest.model_copy(update={"weights": weights}), folder)
    (result,) = repo.validate("tiny-ct@1")
    assert "model.ts: TorchScript does not load" in str(result.problem)


def test_bad_states_file_is_reported_by_validate(repo: Registry) -> None:
    _states(repo, "tiny-ct", {1: "active", 2: "active"})
    results = {r.ref: r for r in repo.validate()}
    assert "exactly one active" in str(results["tiny-ct"].problem)
    assert results["tiny-ct@1"].ok
    assert results["tiny-ct@2"].ok
