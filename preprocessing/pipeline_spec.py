"""Pipeline specs as data: the allow-list of MONAI transforms and the checks on each step.

Used by :class:`preprocessing.pipeline.Pipeline`; nothing in a spec is executed (see there).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from monai import transforms as mt
from monai.transforms import Transform

from preprocessing.errors import PipelineSpecError

ALLOWED_TRANSFORMS: dict[str, type[Transform]] = {
    "Orientation": mt.Orientation,
    "Spacing": mt.Spacing,
    "ScaleIntensityRange": mt.ScaleIntensityRange,
    "ThresholdIntensity": mt.ThresholdIntensity,
    "NormalizeIntensity": mt.NormalizeIntensity,
    "ScaleIntensity": mt.ScaleIntensity,
    "Resize": mt.Resize,
    "ResizeWithPadOrCrop": mt.ResizeWithPadOrCrop,
    "SpatialPad": mt.SpatialPad,
    "CenterSpatialCrop": mt.CenterSpatialCrop,
    "CropForeground": mt.CropForeground,
    "DivisiblePad": mt.DivisiblePad,
    "ScaleIntensityRangePercentiles": mt.ScaleIntensityRangePercentiles,
}
"""Transform names a spec may use, besides the ``Window`` alias."""

WINDOW_DEFAULTS: dict[str, Any] = {"b_min": 0.0, "b_max": 1.0, "clip": True}
# Arguments that are ours to set (output is always float32, geometry always eager or fused) or that
# take objects rather than plain data.
_REFUSED_ARGS = frozenset({"lazy", "dtype", "labels", "select_fn", "return_coords"})
_EXPRESSION_PREFIXES = ("$", "@", "%")
_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


@dataclass(frozen=True)
class Step:
    """One validated pipeline step.

    Attributes:
        index: Position in the spec, 0-based (used in error messages).
        name: The name as written in the spec (``Window`` stays ``Window``).
        args: The arguments as written in the spec.
        transform: The configured MONAI transform that implements the step.
    """

    index: int
    name: str
    args: dict[str, Any]
    transform: Transform


def step_error(index: int, name: object, what: str) -> PipelineSpecError:
    return PipelineSpecError(f"pipeline step {index} ({name}): {what}")


def parse_step(index: int, raw: object) -> Step:
    """Check one step against the allow-list and build its MONAI transform."""
    if not isinstance(raw, Mapping):
        raise step_error(index, "?", f"must be a mapping, got {type(raw).__name__}")
    if "transform" not in raw or not isinstance(raw["transform"], str):
        raise step_error(index, "?", "needs a 'transform' name")
    name = raw["transform"]
    args = {k: v for k, v in raw.items() if k != "transform"}
    for key, value in args.items():
        if not isinstance(key, str):
            raise step_error(index, name, f"argument name {key!r} is not a string")
        _check_plain(index, name, key, value)
    if name == "Window":
        return Step(index, name, dict(args), _build_window(index, args))
    cls = ALLOWED_TRANSFORMS.get(name)
    if cls is None:
        allowed = ", ".join([*ALLOWED_TRANSFORMS, "Window"])
        raise step_error(index, name, f"unknown transform; allowed: {allowed}")
    params = {
        p.name: p
        for p in inspect.signature(cls).parameters.values()
        if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name not in _REFUSED_ARGS
    }
    for key in args:
        if key not in params:
            raise step_error(index, name, f"unknown argument {key!r}; allowed: {', '.join(params)}")
    missing = [p for p, v in params.items() if v.default is v.empty and p not in args]
    if missing:
        raise step_error(index, name, f"missing argument(s) {', '.join(missing)}")
    _check_values(index, name, args)
    kwargs = dict(args)
    if name == "Orientation":
        kwargs["labels"] = _RAS_LABELS  # explicit, so MONAI does not warn about its default
    try:
        transform = cls(**kwargs)
    except Exception as exc:  # noqa: BLE001 - MONAI's __init__ rejects a value with any type
        raise step_error(index, name, f"bad value: {exc}") from None
    return Step(index, name, dict(args), transform)


def _check_plain(index: int, name: str, key: str, value: object, depth: int = 0) -> None:
    """Values are plain data: numbers, booleans, strings (not expressions), None, lists thereof."""
    if value is None or isinstance(value, bool | int | float):
        return
    if isinstance(value, str):
        if value.startswith(_EXPRESSION_PREFIXES):
            raise step_error(index, name, f"{key}={value!r}: expressions are never evaluated")
        return
    if isinstance(value, list | tuple) and depth < 2:
        for item in value:
            _check_plain(index, name, key, item, depth + 1)
        return
    raise step_error(index, name, f"{key}: {type(value).__name__} is not plain data")


def _numbers(value: object) -> list[float]:
    items = value if isinstance(value, list | tuple) else [value]
    return [float(v) for v in items if isinstance(v, int | float) and not isinstance(v, bool)]


def _check_values(index: int, name: str, args: Mapping[str, Any]) -> None:
    """Domain checks MONAI would only catch (or silently accept) at run time."""
    for key in ("pixdim", "min_pixdim", "max_pixdim"):
        if key in args and args[key] is not None and any(v <= 0 for v in _numbers(args[key])):
            raise step_error(index, name, f"{key} must be positive millimetres, got {args[key]}")
    for key in ("spatial_size", "roi_size"):
        if key not in args:
            continue
        value = args[key]
        items = value if isinstance(value, list | tuple) else [value]
        counts = [v for v in items if isinstance(v, int) and not isinstance(v, bool)]
        if len(counts) != len(items):
            raise step_error(index, name, f"{key} must be whole voxel counts, got {value}")
        if any(v == 0 or v < -1 for v in counts):
            raise step_error(index, name, f"{key} must be positive (or -1 = keep), got {value}")
    if name == "ScaleIntensityRange" and _numbers(args.get("a_min")) == _numbers(args.get("a_max")):
        raise step_error(index, name, "a_min equals a_max")


def _build_window(index: int, args: Mapping[str, Any]) -> Transform:
    """``Window(center, width)`` in HU is ``ScaleIntensityRange(center -+ width / 2)``."""
    allowed = {"center", "width", *WINDOW_DEFAULTS}
    for key in args:
        if key not in allowed:
            raise step_error(index, "Window", f"unknown argument {key!r}; allowed: {allowed}")
    center, width = args.get("center"), args.get("width")
    if not _numbers(center) or not _numbers(width) or isinstance(center, list | tuple):
        raise step_error(index, "Window", "needs numeric 'center' and 'width' (HU)")
    if isinstance(width, list | tuple) or float(width) <= 0:  # type: ignore[arg-type]
        raise step_error(index, "Window", f"width must be positive HU, got {width}")
    opts = {**WINDOW_DEFAULTS, **{k: v for k, v in args.items() if k in WINDOW_DEFAULTS}}
    c, w = float(center), float(width)  # type: ignore[arg-type]
    return mt.ScaleIntensityRange(a_min=c - w / 2.0, a_max=c + w / 2.0, **opts)
