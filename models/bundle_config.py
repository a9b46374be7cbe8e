"""Reading a MONAI bundle's configs as plain data: expressions found, never evaluated.

``$`` strings are Python expressions, ``@`` strings references, ``%`` strings macros for MONAI's
ConfigParser. This module never evaluates one; it only follows a pure ``@a#b`` reference as a
lookup in the same data. Used by :mod:`models.bundle`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.manifest import (
    CodedConcept,
    FindingSpec,
    ManifestError,
    OutputSpec,
    Task,
    TensorSpec,
)
from models.registry import onnx_io
from preprocessing.errors import PipelineSpecError
from preprocessing.pipeline_spec import ALLOWED_TRANSFORMS, parse_step

_SLUG = re.compile(r"[^a-z0-9]+")


class BundleImportError(ValueError):
    """The bundle cannot become a package; the message says which file and what is missing."""


@dataclass(frozen=True)
class MappedStep:
    """A bundle transform converted to a manifest preprocessing step."""

    index: int
    target: str
    step: dict[str, Any]


@dataclass(frozen=True)
class UnmappedStep:
    """A bundle transform that was left out, and why."""

    index: int
    target: str
    reason: str


def slug(text: str) -> str:
    """A valid model name from free text (``Spleen CT Seg`` -> ``spleen-ct-seg``)."""
    name = _SLUG.sub("-", text.lower()).strip("-")
    if not name or not name[0].isalpha():
        name = f"bundle-{name}".strip("-")
    return name[:63].rstrip("-")


_EXPRESSION = ("$", "@", "%")
_REFERENCE = re.compile(r"^@\w+(#\w+)*$")
# Done by statlane's own loader (decode, channel-first, float32 tensor): expected, not reported.
_LOADER_STEPS = frozenset(
    {"LoadImage", "EnsureChannelFirst", "EnsureType", "ToTensor", "AddChannel", "CastToType"}
)
# Dictionary plumbing, or ours to set (output is always float32 and eager).
_KEY_ARGS = frozenset(
    {
        "keys",
        "allow_missing_keys",
        "meta_keys",
        "meta_key_postfix",
        "lazy",
        "dtype",
        "track_meta",
        "image_only",
    }
)
_PER_KEY_ARGS = frozenset({"mode", "padding_mode", "align_corners", "anti_aliasing"})


class _Unmapped(Exception):
    """Internal: this transform cannot be converted; the message is the reason."""


@dataclass(frozen=True)
class Tensors:
    """What ``network_data_format`` (and the ONNX graph) say about the tensors."""

    input_key: str
    input: TensorSpec
    spatial: list[int]
    outputs: list[OutputSpec]
    findings: list[FindingSpec]
    task: Task
    modality: list[str]


def find_expressions(data: object, where: str = "") -> list[tuple[str, str]]:
    """Every string starting with ``$``, ``@`` or ``%`` and its ``a#b#0`` path."""
    if isinstance(data, str):
        return [(where or "(root)", data)] if data.startswith(_EXPRESSION) else []
    items: list[tuple[object, object]] = []
    if isinstance(data, dict):
        items = list(data.items())
    elif isinstance(data, list):
        items = list(enumerate(data))
    found: list[tuple[str, str]] = []
    for key, value in items:
        found += find_expressions(value, f"{where}#{key}" if where else str(key))
    return found


def _lookup(config: dict[str, Any], value: object, depth: int = 0) -> object:
    """Follow a pure ``@a#b`` reference as a lookup in ``config``; anything else as is."""
    if not isinstance(value, str) or not _REFERENCE.match(value) or depth > 8:
        return value
    node: object = config
    for part in value[1:].split("#"):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return value
    return _lookup(config, node, depth + 1)


def _transforms(config: dict[str, Any], section: str) -> list[object] | None:
    node = _lookup(config, config.get(section))
    if isinstance(node, dict):
        node = _lookup(config, node.get("transforms"))
    return node if isinstance(node, list) else None


def _short_name(target: str) -> tuple[str, bool]:
    """``monai.transforms.Spacingd`` -> (``Spacing``, True); unknown names come back as is."""
    short = target.rsplit(".", 1)[-1]
    for suffix in ("d", "D", "Dict"):
        base = short.removesuffix(suffix)
        if short.endswith(suffix) and (base in ALLOWED_TRANSFORMS or base in _LOADER_STEPS):
            return base, True
    return short, False


def _map_step(config: dict[str, Any], raw: object, input_key: str) -> dict[str, Any] | None:
    """One bundle transform -> one manifest step, ``None`` for loader steps."""
    if not isinstance(raw, dict) or not isinstance(raw.get("_target_"), str):
        raise _Unmapped("not a plain mapping with a _target_")
    if raw["_target_"].startswith(_EXPRESSION) or isinstance(raw.get("_disabled_"), str):
        raise _Unmapped("_target_/_disabled_ is an expression; not evaluated")
    name, dictionary = _short_name(raw["_target_"])
    if raw.get("_disabled_") is True or name in _LOADER_STEPS:
        return None
    if name not in ALLOWED_TRANSFORMS:
        raise _Unmapped("not in the allow-list; add an equivalent step by hand if it matters")
    keys = raw.get("keys", [])
    key_list = [keys] if isinstance(keys, str) else keys
    if dictionary:
        if not isinstance(key_list, list) or not all(
            isinstance(k, str) and not k.startswith(_EXPRESSION) for k in key_list
        ):
            raise _Unmapped(f"keys {keys!r} are not plain names; not evaluated")
        if input_key not in key_list:
            raise _Unmapped(f"applies to {key_list}, not the input {input_key!r}")
    args: dict[str, Any] = {}
    for key, value in raw.items():
        if (key.startswith("_") and key.endswith("_")) or key in _KEY_ARGS:
            continue
        value = _lookup(config, value)
        if isinstance(value, str) and value.startswith(_EXPRESSION):
            raise _Unmapped(f"{key}={value!r} is an expression; not evaluated")
        per_key = dictionary and key in _PER_KEY_ARGS and len(key_list) > 1
        if per_key and isinstance(value, list) and len(value) == len(key_list):
            value = value[key_list.index(input_key)]
        args[key] = value
    step = {"transform": name, **args}
    try:
        parse_step(0, step)
    except PipelineSpecError as error:
        raise _Unmapped(error.detail.removeprefix(f"pipeline step 0 ({name}): ")) from None
    return step


@dataclass
class PreprocessingMap:
    """The bundle's preprocessing, converted.

    Attributes:
        steps: Manifest preprocessing steps, in order.
        mapped: Which bundle transform became which step.
        skipped: Loader transforms statlane does itself (decode, channel-first, ...).
        unmapped: Transforms left out, with reasons.
    """

    steps: list[dict[str, Any]] = field(default_factory=list)
    mapped: list[MappedStep] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    unmapped: list[UnmappedStep] = field(default_factory=list)


def map_preprocessing(config: dict[str, Any], input_key: str) -> PreprocessingMap:
    """Convert the bundle's preprocessing transforms that apply to ``input_key``."""
    result = PreprocessingMap()
    transforms = _transforms(config, "preprocessing")
    if transforms is None:
        found = config.get("preprocessing")
        reason = f"no plain transforms list ({found!r})"
        result.unmapped.append(UnmappedStep(-1, "preprocessing", reason))
        return result
    for index, raw in enumerate(transforms):
        raw = _lookup(config, raw)
        target = str(raw.get("_target_", "?")) if isinstance(raw, dict) else repr(raw)
        try:
            step = _map_step(config, raw, input_key)
        except _Unmapped as why:
            result.unmapped.append(UnmappedStep(index, target, str(why)))
            continue
        if step is None:
            result.skipped.append(target)
        else:
            result.mapped.append(MappedStep(index, target, step))
            result.steps.append(step)
    return result


def _ints(value: object) -> list[int] | None:
    if isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        return [int(v) for v in value]
    return None


def _sliding_window(config: dict[str, Any]) -> dict[str, Any] | None:
    inferer = _lookup(config, config.get("inferer"))
    if not isinstance(inferer, dict) or "SlidingWindow" not in str(inferer.get("_target_")):
        return None
    roi = _ints(_lookup(config, inferer.get("roi_size")))
    if roi is None:
        return None
    overlap = inferer.get("overlap", 0.25)
    ok = isinstance(overlap, int | float) and not isinstance(overlap, bool) and 0 <= overlap < 1
    return {"roi_size": roi, "overlap": float(overlap) if ok else 0.25}


def chunking_from(config: dict[str, Any], spatial: list[int]) -> dict[str, Any] | None:
    """Sliding-window settings from a ``SlidingWindowInferer`` with a plain ``roi_size``."""
    window = _sliding_window(config)
    return window if window and len(window["roi_size"]) == len(spatial) else None


def geometry_of(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """``spacing_mm`` / ``orientation`` of the input, from Spacing / Orientation steps."""
    update: dict[str, Any] = {}
    for step in steps:
        if step["transform"] == "Spacing" and isinstance(step.get("pixdim"), list):
            update["spacing_mm"] = [float(v) for v in step["pixdim"]]
        if step["transform"] == "Orientation" and isinstance(step.get("axcodes"), str):
            update["orientation"] = step["axcodes"]
    return update


def activation_of(config: dict[str, Any], notes: list[str]) -> Any:
    """``softmax`` / ``sigmoid`` from an ``Activations(d)`` postprocessing step, else ``none``."""
    for raw in _transforms(config, "postprocessing") or []:
        raw = _lookup(config, raw)
        if isinstance(raw, dict) and "Activations" in str(raw.get("_target_")):
            for kind in ("softmax", "sigmoid"):
                if raw.get(kind) is True:
                    return kind
    notes.append("no plain Activations step in postprocessing: activation 'none'")
    return "none"


def _spatial(
    declared: list[object],
    given: list[int] | None,
    graph: list[int | str] | None,
    config: dict[str, Any],
    notes: list[str],
) -> list[int]:
    """A concrete spatial input size, voxels; says where it came from when not declared."""
    if given is not None:
        notes.append(f"input spatial shape {given} from --input-shape (bundle: {declared})")
        return list(given)
    if _ints(declared):
        return [int(v) for v in declared]  # type: ignore[call-overload]
    if graph is not None and _ints(graph[2:]) and len(graph) > 2:
        notes.append(f"spatial_shape {declared} is symbolic; used the ONNX graph's {graph[2:]}")
        return [int(v) for v in graph[2:]]
    window = _sliding_window(config)
    if window is not None:
        roi = window["roi_size"]
        notes.append(f"spatial_shape {declared} is symbolic; used the inferer roi_size {roi}")
        return list(roi)
    raise BundleImportError(
        f"spatial_shape {declared} is symbolic and nothing in the bundle fixes it; "
        "pass --input-shape (voxels, e.g. 96,96,96)"
    )


def _findings(output: str, spec_out: dict[str, Any], task: Task, dims: int) -> list[FindingSpec]:
    """One placeholder-coded finding per non-background channel of ``channel_def``."""
    channel_def = spec_out.get("channel_def")
    if not isinstance(channel_def, dict):
        return []
    if task is Task.SEGMENTATION:
        derive: list[Any] = ["presence", "volume_ml" if dims == 3 else "area_mm2"]
    else:
        derive = ["presence", "probability"]
    findings = []
    for channel, label in channel_def.items():
        if not str(channel).isdigit() or not isinstance(label, str) or label == "background":
            continue
        name = slug(label)
        concept = CodedConcept(value=name.upper(), scheme="99STATLANE", meaning=label)
        findings.append(
            FindingSpec(
                name=name, concept=concept, output=output, channel=int(channel), derive=derive
            )
        )
    return findings


def tensors_from(
    meta: dict[str, Any],
    config: dict[str, Any],
    bundle: Path,
    input_shape: list[int] | None,
    notes: list[str],
) -> Tensors:
    """Input/output specs, task and findings from ``network_data_format`` (and the ONNX graph,
    whose tensor names and concrete dims win when the bundle ships one)."""
    where = f"{bundle}/configs/metadata.json: network_data_format"
    fmt = meta.get("network_data_format")
    if not isinstance(fmt, dict) or not fmt.get("inputs") or not fmt.get("outputs"):
        raise BundleImportError(f"{where}: needs 'inputs' and 'outputs'")
    if not isinstance(fmt["inputs"], dict) or len(fmt["inputs"]) != 1:
        raise BundleImportError(f"{where}.inputs: exactly one input is supported")
    ((input_key, spec_in),) = fmt["inputs"].items()
    graph_in: dict[str, list[int | str]] = {}
    graph_out: dict[str, list[int | str]] = {}
    if (bundle / "models" / "model.onnx").is_file():
        try:
            graph_in, graph_out = onnx_io(bundle / "models" / "model.onnx")
        except ManifestError as error:
            raise BundleImportError(str(error)) from error
        if len(graph_in) != 1:
            raise BundleImportError(f"{bundle}/models/model.onnx: needs exactly one graph input")
    input_name = next(iter(graph_in), input_key)
    declared = spec_in.get("spatial_shape", [])
    spatial = _spatial(declared, input_shape, graph_in.get(input_name), config, notes)
    channels = int(spec_in.get("num_channels", 1))
    dtype = spec_in.get("dtype", "float32")
    if dtype not in ("float32", "float16"):
        notes.append(f"input dtype {dtype!r} is not float32/float16: float32 used")
        dtype = "float32"
    tensor = TensorSpec(name=input_name, dtype=dtype, shape=[-1, channels, *spatial])
    outputs: list[OutputSpec] = []
    findings: list[FindingSpec] = []
    task = Task.CLASSIFICATION
    for index, (key, spec_out) in enumerate(fmt["outputs"].items()):
        name = key
        if graph_out and key not in graph_out:
            if len(graph_out) != len(fmt["outputs"]):
                raise BundleImportError(f"{where}.outputs: {key!r} is not a graph output")
            name = list(graph_out)[index]
        dims = graph_out.get(name, ["?"])
        out_declared = spec_out.get("spatial_shape", [])
        count = int(spec_out.get("num_channels", 1))
        if _ints(dims[1:]) and all(d > 0 for d in dims[1:]):  # type: ignore[operator]
            shape = [-1, *[int(d) for d in dims[1:]]]
        elif _ints(out_declared) is not None:
            shape = [-1, count, *out_declared]
        elif out_declared == declared:
            shape = [-1, count, *spatial]
        else:
            raise BundleImportError(f"{where}.outputs.{key}: spatial_shape {out_declared} unknown")
        segmentation = "segment" in str(spec_out.get("format", "")) or len(shape) > 2
        task = Task.SEGMENTATION if segmentation and index == 0 else task
        meaning = str(spec_out.get("format") or spec_out.get("type") or "model output")
        outputs.append(OutputSpec(name=name, dtype="float32", shape=shape, meaning=meaning))
        findings += _findings(name, spec_out, task, len(shape) - 2)
    if not findings:
        notes.append("no channel_def in the outputs: no findings declared")
    modality = spec_in.get("modality")
    if not isinstance(modality, str):
        notes.append("no input modality in the metadata: modality OT")
    return Tensors(
        input_key,
        tensor,
        spatial,
        outputs,
        findings,
        task,
        [modality.upper() if isinstance(modality, str) else "OT"],
    )
