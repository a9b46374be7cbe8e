"""Reading a MONAI bundle's configs as plain data: expressions found, never evaluated.

``$`` strings are Python expressions, ``@`` strings references, ``%`` strings macros for MONAI's
ConfigParser. This module never evaluates an expression; it follows a pure ``@a#b`` reference
and a ``%file#a`` macro as lookups in the bundle's own config data, and reads the tensors, the
inferer and the labels from ``network_data_format``. Used by :mod:`models.bundle`.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from models.label_codes import (
    ANATOMICAL_STRUCTURE,
    APPROXIMATE_LABELS,
    code_for_label,
    laterality_for_label,
    normalise_label,
)
from models.manifest import (
    CodedConcept,
    Domain,
    FindingSpec,
    IntensityDomain,
    ManifestError,
    OutputSpec,
    PercentileBound,
    Task,
    TensorSpec,
    ValueRange,
)
from models.registry import onnx_io

_SLUG = re.compile(r"[^a-z0-9]+")


class BundleImportError(ValueError):
    """The bundle cannot become a package; the message says which file and what is missing."""


def slug(text: str) -> str:
    """A valid model name from free text (``Spleen CT Seg`` -> ``spleen-ct-seg``)."""
    name = _SLUG.sub("-", text.lower()).strip("-")
    if not name or not name[0].isalpha():
        name = f"bundle-{name}".strip("-")
    return name[:63].rstrip("-")


_EXPRESSION = ("$", "@", "%")
_REFERENCE = re.compile(r"^@[\w.-]+((#|::)[\w.-]+)*$")
_CONFIG_FILE = re.compile(r"^(.+?\.(?:json|ya?ml))(?:(?:#|::)(.*))?$")
_MISSING = object()


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


def resolve(config: dict[str, Any], value: object) -> object:
    """Follow a pure ``@a#b`` reference (``#`` or ``::`` between ids) as a lookup in ``config``.

    Nothing is evaluated: an expression (``$...``), a reference that does not resolve, or a
    chain longer than 8 links comes back as it is.
    """
    for _ in range(8):
        if not isinstance(value, str) or not _REFERENCE.match(value):
            return value
        found = _walk(config, value[1:])
        if found is _MISSING:
            return value
        value = found
    return value


def expand_macros(config: dict[str, Any], bundle: Path) -> dict[str, Any]:
    """``config`` with every ``%`` macro replaced by the data it names, as MONAI does on
    reading: ``%a#b`` names an id of ``config``, ``%configs/common.yaml#a`` one of another
    config file inside the bundle folder. A macro that names nothing stays as it is (and is
    reported with the expressions)."""

    def expand(node: object, depth: int) -> object:
        if isinstance(node, dict):
            return {k: expand(v, depth) for k, v in node.items()}
        if isinstance(node, list):
            return [expand(v, depth) for v in node]
        if isinstance(node, str) and node.startswith("%") and depth < 8:
            found = _macro(config, node[1:], bundle)
            return node if found is _MISSING else expand(copy.deepcopy(found), depth + 1)
        return node

    expanded = expand(config, 0)
    assert isinstance(expanded, dict)
    return expanded


def _walk(node: object, ids: str) -> object:
    for part in (p for p in re.split(r"#|::", ids) if p):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


def _macro(config: dict[str, Any], text: str, bundle: Path) -> object:
    """``%file#id`` (or ``%id`` inside ``config``), read as data; only the bundle's files."""
    match = _CONFIG_FILE.match(text)
    if match is None:
        return _walk(config, text)
    path = (bundle / match.group(1)).resolve()
    if bundle.resolve() not in path.parents or not path.is_file():
        return _MISSING
    try:
        raw = path.read_text(encoding="utf-8")
        data = json.loads(raw) if path.suffix == ".json" else yaml.safe_load(raw)
    except (OSError, ValueError, yaml.YAMLError):
        return _MISSING
    return _walk(data, match.group(2) or "")


def transforms_of(config: dict[str, Any], section: str) -> list[object] | None:
    """The ``transforms`` list of a ``Compose`` section (references followed), or None."""
    node = resolve(config, config.get(section))
    if isinstance(node, dict):
        node = resolve(config, node.get("transforms"))
    return node if isinstance(node, list) else None


def _ints(value: object) -> list[int] | None:
    if isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        return [int(v) for v in value]
    return None


def _number(value: object, default: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return float(value)


def _sliding_window(config: dict[str, Any]) -> dict[str, Any] | None:
    """``SlidingWindowInferer`` settings with MONAI's defaults (mode ``constant``, overlap
    0.25, sigma_scale 0.125, sw_batch_size 1), or None without a plain ``roi_size``."""
    inferer = resolve(config, config.get("inferer"))
    if not isinstance(inferer, dict) or "SlidingWindow" not in str(inferer.get("_target_")):
        return None
    roi = _ints(resolve(config, inferer.get("roi_size")))
    if roi is None:
        return None
    overlap = resolve(config, inferer.get("overlap", 0.25))
    if isinstance(overlap, list) and overlap and len(set(map(str, overlap))) == 1:
        overlap = overlap[0]  # one overlap per axis, all the same
    overlap_s = _number(overlap, 0.25)
    mode = str(resolve(config, inferer.get("mode", "constant"))).lower()
    sigma = resolve(config, inferer.get("sigma_scale", 0.125))
    if isinstance(sigma, list) and sigma and len(set(map(str, sigma))) == 1:
        sigma = sigma[0]
    batch = resolve(config, inferer.get("sw_batch_size", 1))
    return {
        "roi_size": roi,
        "overlap": overlap_s if 0.0 <= overlap_s < 1.0 else 0.25,
        "mode": mode if mode in ("gaussian", "constant") else "constant",
        "sigma_scale": _number(sigma, 0.125) if _number(sigma, 0.125) > 0 else 0.125,
        "sw_batch_size": int(batch) if isinstance(batch, int) and 1 <= batch <= 256 else 1,
    }


def inferer_notes(config: dict[str, Any]) -> list[str]:
    """What of a ``SlidingWindowInferer`` statlane does not take over, one line each."""
    inferer = resolve(config, config.get("inferer"))
    if not isinstance(inferer, dict) or "SlidingWindow" not in str(inferer.get("_target_")):
        return []
    notes = []
    mode = str(resolve(config, inferer.get("mode", "constant"))).lower()
    if mode not in ("gaussian", "constant"):
        notes.append(f"inferer mode {mode!r} is not supported: constant blending used")
    for key in ("padding_mode", "cval", "sw_device", "device", "progress", "cache_roi_weight_map"):
        if key in inferer:
            notes.append(f"inferer {key}={inferer[key]!r} not taken over (statlane's own)")
    return notes


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
    """One finding per non-background channel of ``channel_def``.

    A segmentation label whose name is in the reviewed table (:mod:`models.label_codes`)
    gets its SNOMED CT code and the category "Anatomical Structure"; any other label a marked
    placeholder code in the private scheme ``99STATLANE`` (listed by the import report).
    """
    channel_def = spec_out.get("channel_def") or spec_out.get("label_def")
    if not isinstance(channel_def, dict):
        return []
    if task is Task.SEGMENTATION:
        derive: list[Any] = ["presence", "volume_ml" if dims == 3 else "area_mm2"]
    else:
        derive = ["presence", "probability"]
    findings = []
    names: set[str] = set()
    for channel, label in channel_def.items():
        if not str(channel).isdigit() or not isinstance(label, str) or label == "background":
            continue
        name = slug(label)
        if name in names:
            name = slug(f"{label}-{channel}")
        names.add(name)
        # an approximate entry (the portal *and splenic* veins coded as "Portal vein") would
        # name the segment wrongly: it stays a marked placeholder until someone codes it
        exact = normalise_label(label) not in APPROXIMATE_LABELS
        known = code_for_label(label) if task is Task.SEGMENTATION and exact else None
        side = laterality_for_label(label) if known is not None else None
        laterality = (
            CodedConcept(value=side.value, scheme="SCT", meaning=side.meaning) if side else None
        )
        if known is not None:
            concept = CodedConcept(value=known.value, scheme="SCT", meaning=known.meaning)
            category: CodedConcept | None = CodedConcept(
                value=ANATOMICAL_STRUCTURE.value, scheme="SCT", meaning=ANATOMICAL_STRUCTURE.meaning
            )
        else:
            concept = CodedConcept(value=name.upper(), scheme="99STATLANE", meaning=label[:64])
            category = None
        findings.append(
            FindingSpec(
                name=name,
                concept=concept,
                category=category,
                laterality=laterality,
                output=output,
                channel=int(channel),
                derive=derive,
            )
        )
    return findings


def _graph_io(bundle: Path) -> tuple[dict[str, list[int | str]], dict[str, list[int | str]]]:
    """Inputs and outputs (name → dims) of the shipped ONNX graph; empty when there is none.

    Raises:
        BundleImportError: The graph is unreadable or has more than one input.
    """
    if not (bundle / "models" / "model.onnx").is_file():
        return {}, {}
    try:
        graph_in, graph_out = onnx_io(bundle / "models" / "model.onnx")
    except ManifestError as error:
        raise BundleImportError(str(error)) from error
    if len(graph_in) != 1:
        raise BundleImportError(f"{bundle}/models/model.onnx: needs exactly one graph input")
    return graph_in, graph_out


def _output_shape(
    where: str,
    spec_out: dict[str, Any],
    dims: list[int | str],
    declared: list[object],
    spatial: list[int],
) -> list[int]:
    """One output's shape ``[-1, channels, *spatial]``: the graph's concrete dims win, then the
    declared spatial shape, then the input's when the output declares the same (symbolic) one.

    Raises:
        BundleImportError: The output's spatial shape is symbolic and unlike the input's.
    """
    out_declared = spec_out.get("spatial_shape", [])
    count = int(spec_out.get("num_channels", 1))
    concrete = _ints(dims[1:])
    if concrete and all(d > 0 for d in concrete):
        return [-1, *concrete]
    if _ints(out_declared) is not None:
        return [-1, count, *out_declared]
    if out_declared == declared:
        return [-1, count, *spatial]
    raise BundleImportError(f"{where}: spatial_shape {out_declared} unknown")


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
    graph_in, graph_out = _graph_io(bundle)
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
        shape = _output_shape(
            f"{where}.outputs.{key}", spec_out, graph_out.get(name, ["?"]), declared, spatial
        )
        segmentation = "segment" in str(spec_out.get("format", "")) or len(shape) > 2
        task = Task.SEGMENTATION if segmentation and index == 0 else task
        meaning = str(spec_out.get("format") or spec_out.get("type") or "model output")
        outputs.append(OutputSpec(name=name, dtype="float32", shape=shape, meaning=meaning))
        findings += _findings(name, spec_out, task, len(shape) - 2)
    if not findings:
        notes.append("no channel_def (or label_def) in the outputs: no findings declared")
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


def _window(steps: list[dict[str, Any]]) -> tuple[float, float] | None:
    """``(a_min, a_max)`` of the first intensity window in the mapped preprocessing."""
    for step in steps:
        name = step.get("transform")
        try:
            if name == "ScaleIntensityRange":
                low, high = float(step["a_min"]), float(step["a_max"])
            elif name == "Window":
                center, width = float(step["center"]), float(step["width"])
                low, high = center - width / 2.0, center + width / 2.0
            else:
                continue
        except (KeyError, TypeError, ValueError):
            continue
        return (min(low, high), max(low, high)) if low != high else None
    return None


def domain_from(
    meta: dict[str, Any], steps: list[dict[str, Any]], notes: list[str]
) -> Domain | None:
    """The input domain a bundle states, and nothing more (None when it states none).

    - ``network_data_format.inputs.*.format: hounsfield``: the values are HU, so an input
      whose 1st percentile is above -200 HU (no air, no fat: raw stored values, not HU) is out.
    - The preprocessing's intensity window (``ScaleIntensityRange`` ``a_min``/``a_max``, HU
      for a hounsfield input): the model reads only values inside it, so an input whose 99th
      percentile is below ``a_min`` or whose 1st percentile is above ``a_max`` is blank to it.

    Body part, pixel spacing, field of view, matrix and coverage are not stated by a bundle
    (``Spacing`` ``pixdim`` is the grid the model resamples to, not a range of inputs): they
    are left open and ``notes`` says so, for the operator to fill before enabling the model.
    """
    fmt = meta.get("network_data_format")
    inputs = fmt.get("inputs") if isinstance(fmt, dict) else None
    spec_in: object = next(iter(inputs.values()), {}) if isinstance(inputs, dict) and inputs else {}
    hounsfield = isinstance(spec_in, dict) and str(spec_in.get("format", "")).lower() == (
        "hounsfield"
    )
    window = _window(steps)
    bounds: list[PercentileBound] = []
    if hounsfield:
        bounds.append(PercentileBound(percentile=1.0, range=ValueRange(max=-200.0)))
    if window is not None:
        low, high = window
        bounds.append(PercentileBound(percentile=99.0, range=ValueRange(min=low)))
        bounds.append(PercentileBound(percentile=1.0, range=ValueRange(max=high)))
    notes.append(
        "domain: body part, pixel spacing, field of view, matrix and coverage are not stated "
        "by the bundle and were left open; fill manifest.domain before enabling the model"
    )
    if not bounds:
        return None
    intensity = IntensityDomain(
        unit="HU" if hounsfield else "stored",
        ignore_below=-1500.0 if hounsfield else None,
        percentiles=bounds,
    )
    return Domain(intensity=intensity)
