"""Triton export: config.pbtxt parses with Triton's own protobuf and matches the ONNX graph."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from models.manifest import WeightsMismatchError, dump_manifest, load_manifest
from models.registry import ModelVersion, Registry, onnx_io
from models.triton_export import (
    ROUTINE_PRIORITY,
    STAT_PRIORITY,
    TritonExportError,
    export_triton,
    preferred_batch_sizes,
)
from serving.cli import main
from tests.model_factory import SPATIAL, build_package


@pytest.fixture
def repo(tmp_path: Path) -> Registry:
    build_package(tmp_path / "repo", "tiny-ct", 1)
    build_package(tmp_path / "repo", "tiny-ct", 2)
    return Registry(tmp_path / "repo")


def _parse(path: Path) -> pb.ModelConfig:
    return text_format.Parse(path.read_text(encoding="utf-8"), pb.ModelConfig())


def _triton_dim(dim: int | str) -> int:
    return dim if isinstance(dim, int) else -1


def _check_against_graph(out: Path, version: ModelVersion) -> pb.ModelConfig:
    """config.pbtxt of ``version``'s model agrees with the exported ONNX graph and manifest."""
    manifest = version.manifest
    config = _parse(out / manifest.name / "config.pbtxt")
    model = out / manifest.name / str(manifest.version) / "model.onnx"
    inputs, outputs = onnx_io(model)
    assert config.name == manifest.name
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == manifest.runtime.max_batch
    assert [i.name for i in config.input] == list(inputs)
    for tensor in config.input:
        assert tensor.data_type == pb.TYPE_FP32
        # Triton leaves out the batch axis; symbolic graph axes (chunked models) are -1
        assert list(tensor.dims) == [_triton_dim(d) for d in inputs[tensor.name][1:]]
        assert isinstance(inputs[tensor.name][0], str)  # ...which is symbolic in the graph
    assert {o.name for o in config.output} == set(outputs)
    for tensor in config.output:
        assert list(tensor.dims) == [_triton_dim(d) for d in outputs[tensor.name][1:]]
    assert manifest.version in config.version_policy.specific.versions
    return config


def test_factory_package_exports(repo: Registry, tmp_path: Path) -> None:
    out = tmp_path / "triton"
    (exported,) = export_triton(repo, out, instances=2, kind="GPU", max_queue_delay_us=500)
    assert exported.versions == [2]
    config = _check_against_graph(out, repo.get("tiny-ct"))
    assert list(config.input[0].dims) == [1, *SPATIAL]
    assert list(config.version_policy.specific.versions) == [2]
    assert not (out / "tiny-ct" / "1").exists()
    batching = config.dynamic_batching
    assert list(batching.preferred_batch_size) == [2, 4]
    assert batching.max_queue_delay_microseconds == 500
    assert batching.priority_levels == 3
    assert batching.default_priority_level == ROUTINE_PRIORITY
    assert batching.default_queue_policy.timeout_action == pb.ModelQueuePolicy.DELAY
    assert batching.default_queue_policy.allow_timeout_override
    stat = batching.priority_queue_policy[STAT_PRIORITY]
    assert stat.timeout_action == pb.ModelQueuePolicy.REJECT
    (group,) = config.instance_group
    assert (group.count, group.kind) == (2, pb.ModelInstanceGroup.KIND_GPU)


def test_every_shipped_package_exports(tmp_path: Path) -> None:
    """The shipped repository's active versions export; every config matches its ONNX graph."""
    registry = Registry.default()
    assert registry.names(), f"no model packages shipped in {registry.root}"
    out = tmp_path / "triton"
    exported = export_triton(registry, out)
    assert [e.name for e in exported] == registry.names()
    for model in exported:
        for number in model.versions:
            _check_against_graph(out, registry.get(f"{model.name}@{number}"))


def test_shadow_versions_on_request(repo: Registry, tmp_path: Path) -> None:
    repo.set_state("tiny-ct@1", "shadow")
    (exported,) = export_triton(repo, tmp_path / "a")
    assert exported.versions == [2]
    (exported,) = export_triton(repo, tmp_path / "b", include_shadow=True)
    assert exported.versions == [1, 2]
    config = _check_against_graph(tmp_path / "b", repo.get("tiny-ct@1"))
    assert list(config.version_policy.specific.versions) == [1, 2]
    repo.set_state("tiny-ct@1", "retired")
    (exported,) = export_triton(repo, tmp_path / "c", include_shadow=True)
    assert exported.versions == [2]


def test_preferred_batch_sizes() -> None:
    assert preferred_batch_sizes(1) == []
    assert preferred_batch_sizes(6) == [2, 4, 6]
    assert preferred_batch_sizes(8) == [2, 4, 8]


def test_package_without_onnx_is_refused(tmp_path: Path) -> None:
    build_package(tmp_path / "repo", "ts-only", 1, onnx=False)
    with pytest.raises(TritonExportError, match="ts-only@1: no ONNX weights"):
        export_triton(Registry(tmp_path / "repo"), tmp_path / "out")


def test_tampered_weights_are_not_exported(repo: Registry, tmp_path: Path) -> None:
    with (repo.root / "tiny-ct" / "2" / "model.onnx").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(WeightsMismatchError, match="tiny-ct@2"):
        export_triton(repo, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_export_triton(
    repo: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "triton"
    args = ["models", "--root", str(repo.root), "export-triton", str(out), "--models", "tiny-ct"]
    assert main([*args, "--instances", "3", "--kind", "cpu"]) == 0
    assert "tiny-ct versions 2" in capsys.readouterr().out
    config = _parse(out / "tiny-ct" / "config.pbtxt")
    assert config.instance_group[0].count == 3
    assert load_manifest(repo.root / "tiny-ct" / "2").input.shape[1:] == list(config.input[0].dims)
    assert main([*args[:-1], "absent"]) == 2
    assert capsys.readouterr().err.strip().startswith("statlane models export-triton: absent")


def test_shadow_with_other_tensors_is_refused(tmp_path: Path) -> None:
    build_package(tmp_path / "repo", "tiny-ct", 1)
    folder = build_package(tmp_path / "repo", "tiny-ct", 2)
    manifest = load_manifest(folder)
    runtime = manifest.runtime.model_copy(update={"max_batch": 8})
    dump_manifest(manifest.model_copy(update={"runtime": runtime}), folder)
    registry = Registry(tmp_path / "repo")
    registry.set_state("tiny-ct@1", "shadow")
    with pytest.raises(TritonExportError, match="tiny-ct@1: input/outputs/max_batch differ"):
        export_triton(registry, tmp_path / "out", include_shadow=True)
    (exported,) = export_triton(registry, tmp_path / "out")
    assert _parse(exported.config_path).max_batch_size == 8
