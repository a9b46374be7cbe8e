"""Export the registry as a Triton Inference Server model repository.

``OUT/<name>/config.pbtxt`` plus ``OUT/<name>/<version>/model.onnx`` per exported version. The
config text is produced from a ``model_config_pb2.ModelConfig`` message, so it parses by
construction. Three priority levels follow statlane's classes (Triton: 1 is the highest):
1 = stat, 2 = urgent, 3 = routine (the default). Routine requests past their timeout are
delayed, never dropped; stat requests past theirs are rejected so the caller falls back at once.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from models.manifest import Manifest, VersionState, verify_weights
from models.registry import ModelVersion, Registry

CONFIG_FILE = "config.pbtxt"
MODEL_FILE = "model.onnx"
PRIORITY_LEVELS = 3
STAT_PRIORITY = 1
ROUTINE_PRIORITY = 3
_DATA_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16"}


class TritonExportError(ValueError):
    """A model cannot be exported (no ONNX weights, versions disagree on tensors, ...)."""


@dataclass(frozen=True)
class ExportedModel:
    """One model written to the Triton repository.

    Attributes:
        name: Triton model name (the statlane model name).
        versions: Version numbers written, ascending.
        config_path: The written ``config.pbtxt``.
    """

    name: str
    versions: list[int]
    config_path: Path


def _pb2() -> Any:
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError as error:
        raise TritonExportError(
            "Triton export needs tritonclient's protobufs: pip install 'tritonclient[grpc]'"
        ) from error
    return model_config_pb2


def preferred_batch_sizes(max_batch: int) -> list[int]:
    """Powers of two from 2 up to ``max_batch``, plus ``max_batch`` itself (batch 1 never
    needs waiting for)."""
    sizes: list[int] = []
    size = 2
    while size <= max_batch:
        sizes.append(size)
        size *= 2
    if max_batch > 1 and max_batch not in sizes:
        sizes.append(max_batch)
    return sizes


def tensor_dims(manifest: Manifest, shape: Sequence[int]) -> list[int]:
    """Triton ``dims`` of a manifest tensor: without the batch axis (Triton adds it), and with
    variable (-1) spatial axes when the model is chunked, so one config takes sliding-window
    patches and whole volumes alike."""
    dims = [int(n) for n in shape[1:]]
    if manifest.runtime.chunking is not None:
        dims = dims[:1] + [-1] * (len(dims) - 1)
    return dims


def build_config(
    manifest: Manifest,
    versions: Sequence[int],
    *,
    instances: int = 1,
    kind: Literal["CPU", "GPU"] = "CPU",
    max_queue_delay_us: int = 1000,
) -> Any:
    """The ``ModelConfig`` message for one model.

    Args:
        manifest: The active version's manifest (tensors and batch size come from it).
        versions: Version numbers Triton should load.
        instances: Model instances per device (``instance_group.count``).
        kind: ``CPU`` or ``GPU`` instances.
        max_queue_delay_us: Longest wait for a fuller batch, microseconds.
    """
    pb = _pb2()
    if instances < 1:
        raise TritonExportError(f"instances must be >= 1, got {instances}")
    config = pb.ModelConfig(
        name=manifest.name,
        platform="onnxruntime_onnx",
        max_batch_size=manifest.runtime.max_batch,
    )
    config.input.append(
        pb.ModelInput(
            name=manifest.input.name,
            data_type=getattr(pb, _DATA_TYPES[manifest.input.dtype]),
            dims=tensor_dims(manifest, manifest.input.shape),
        )
    )
    for output in manifest.outputs:
        config.output.append(
            pb.ModelOutput(
                name=output.name,
                data_type=getattr(pb, _DATA_TYPES[output.dtype]),
                dims=tensor_dims(manifest, output.shape),
            )
        )
    policy = pb.ModelQueuePolicy
    batching = config.dynamic_batching
    batching.preferred_batch_size.extend(preferred_batch_sizes(manifest.runtime.max_batch))
    batching.max_queue_delay_microseconds = max_queue_delay_us
    batching.priority_levels = PRIORITY_LEVELS
    batching.default_priority_level = ROUTINE_PRIORITY
    batching.default_queue_policy.CopyFrom(
        policy(timeout_action=policy.DELAY, allow_timeout_override=True, max_queue_size=0)
    )
    batching.priority_queue_policy[STAT_PRIORITY].CopyFrom(
        policy(timeout_action=policy.REJECT, allow_timeout_override=True, max_queue_size=0)
    )
    group_kind = pb.ModelInstanceGroup.KIND_GPU if kind == "GPU" else pb.ModelInstanceGroup.KIND_CPU
    config.instance_group.append(pb.ModelInstanceGroup(count=instances, kind=group_kind))
    config.version_policy.specific.versions.extend(sorted(versions))
    return config


def config_text(config: Any) -> str:
    """``config.pbtxt`` text of a ``ModelConfig`` message."""
    from google.protobuf import text_format

    text: str = text_format.MessageToString(config)
    return text


def parse_config(path: Path) -> Any:
    """Parse a ``config.pbtxt`` back into a ``ModelConfig`` (raises ``ParseError``)."""
    from google.protobuf import text_format

    return text_format.Parse(path.read_text(encoding="utf-8"), _pb2().ModelConfig())


def _signature(manifest: Manifest) -> tuple[object, ...]:
    """What one Triton config fixes for every version: tensor names, dtypes, dims, max batch."""
    tensor = manifest.input
    outputs = [(o.name, o.dtype, tuple(o.shape)) for o in manifest.outputs]
    return (manifest.runtime.max_batch, tensor.name, tensor.dtype, tuple(tensor.shape), *outputs)


def export_triton(
    registry: Registry,
    out: Path,
    *,
    models: Sequence[str] | None = None,
    include_shadow: bool = False,
    instances: int = 1,
    kind: Literal["CPU", "GPU"] = "CPU",
    max_queue_delay_us: int = 1000,
) -> list[ExportedModel]:
    """Write a Triton model repository for the active (optionally also shadow) versions.

    Weights are verified against their sha256 before they are copied. A model folder already
    under ``out`` is replaced. Shadow versions must share the active version's tensors.

    Raises:
        PackageNotFoundError: A name in ``models`` is not in the registry.
        ManifestError / WeightsMismatchError: A package is invalid or was altered.
        TritonExportError: A version has no ONNX weights, or versions disagree on tensors.
    """
    names = list(models) if models else registry.names()
    if not names:
        raise TritonExportError(f"no models to export in {registry.root}")
    plans: list[tuple[ModelVersion, list[ModelVersion]]] = []
    for name in names:
        versions = registry.versions(name)
        active = next(v for v in versions if v.state is VersionState.ACTIVE)
        chosen = [
            v
            for v in versions
            if v.state is VersionState.ACTIVE or (include_shadow and v.state is VersionState.SHADOW)
        ]
        for version in chosen:
            if version.manifest.weights.onnx is None:
                raise TritonExportError(
                    f"{version.ident}: no ONNX weights; Triton export needs one"
                )
            if _signature(version.manifest) != _signature(active.manifest):
                raise TritonExportError(
                    f"{version.ident}: input/outputs/max_batch differ from active "
                    f"{active.ident}; one Triton config cannot serve both"
                )
            verify_weights(version.manifest, version.folder)
        plans.append((active, chosen))
    out.mkdir(parents=True, exist_ok=True)
    exported = []
    for active, chosen in plans:
        numbers = [v.manifest.version for v in chosen]
        config = build_config(
            active.manifest,
            numbers,
            instances=instances,
            kind=kind,
            max_queue_delay_us=max_queue_delay_us,
        )
        model_dir = out / active.manifest.name
        if model_dir.exists():
            shutil.rmtree(model_dir)
        for version in chosen:
            target = model_dir / str(version.manifest.version)
            target.mkdir(parents=True)
            assert version.manifest.weights.onnx is not None  # checked above
            shutil.copyfile(
                version.folder / version.manifest.weights.onnx.path, target / MODEL_FILE
            )
        config_path = model_dir / CONFIG_FILE
        config_path.write_text(config_text(config), encoding="utf-8")
        exported.append(ExportedModel(active.manifest.name, sorted(numbers), config_path))
    return exported
