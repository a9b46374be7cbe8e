"""Declarative preprocessing pipelines: an allow-listed chain of MONAI array transforms as data.

A pipeline is a list of steps, each a mapping with a ``transform`` name and that transform's
keyword arguments, given as Python data or YAML text::

    - {transform: Orientation, axcodes: RAS}
    - {transform: Spacing, pixdim: [1.0, 1.0, 5.0], mode: bilinear}
    - {transform: Window, center: 40, width: 80}          # = ScaleIntensityRange 0..80 -> 0..1
    - {transform: Resize, spatial_size: [128, 128, 32]}

Nothing in a spec is executed: names come from an allow-list, argument names are checked against
each transform's signature, values must be plain numbers, strings, booleans or lists of them, and
MONAI-bundle expressions (strings starting with ``$``, ``@`` or ``%``) are refused. Every step is
built and dry-run on a tiny volume when the pipeline is made, so a bad value fails at load time
with :class:`~preprocessing.errors.PipelineSpecError` naming the step, not in the middle of a stat
study.

Two ways to run a pipeline, which the differential tests hold equal:

* :meth:`Pipeline.reference` - plain MONAI, each transform applied in turn to a ``MetaTensor``.
* :meth:`Pipeline.__call__` - the fast path. Consecutive Orientation/Spacing steps are composed
  from MONAI's own lazy geometry into one voxel map applied in one resampling
  (:mod:`preprocessing.resample`): flips and permutations cost nothing, an axis-aligned Spacing is
  three separable 1-D passes in float32, a sheared (gantry-tilt) map goes through ``grid_sample``
  with the full affine. Windowing and thresholding run in place; every other step is the MONAI
  transform itself on the working tensor, on the requested device.

Guaranteed tolerance (``tests/test_pipeline.py``): on a [0, 1]-windowed output the fast path is
within ``FAST_PATH_ATOL`` (max absolute difference) of the reference, with identical shape and
affine; the difference is float32-versus-float64 interpolation rounding (MONAI's Spacing
resamples in float64).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from monai import transforms as mt
from monai.data import MetaTensor
from monai.transforms import Transform

from preprocessing.errors import PipelineSpecError
from preprocessing.resample import resample
from preprocessing.volume import Volume

FAST_PATH_ATOL = 1e-4
"""Max absolute difference, fast path vs reference, on a [0, 1]-windowed output."""

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
}
"""Transform names a spec may use, besides the ``Window`` alias."""

WINDOW_DEFAULTS: dict[str, Any] = {"b_min": 0.0, "b_max": 1.0, "clip": True}
# Arguments that are ours to set (output is always float32, geometry always eager or fused) or that
# take objects rather than plain data.
_REFUSED_ARGS = frozenset({"lazy", "dtype", "labels"})
_FUSABLE = frozenset({"Orientation", "Spacing"})
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


class Pipeline:
    """A validated preprocessing pipeline; build it with :meth:`from_spec` or :meth:`from_file`."""

    def __init__(self, steps: Sequence[Step]) -> None:
        self.steps: tuple[Step, ...] = tuple(steps)

    @classmethod
    def from_spec(cls, spec: Sequence[Mapping[str, Any]] | str) -> Pipeline:
        """Validate a spec (a list of step mappings, or YAML text of one) and build the pipeline.

        Raises:
            PipelineSpecError: the spec is not a list of mappings, or a step names a transform or
                argument that is not allowed, or a value MONAI rejects (message names the step).
        """
        if isinstance(spec, str):
            try:
                spec = yaml.safe_load(spec)
            except yaml.YAMLError as exc:
                raise PipelineSpecError(f"pipeline spec is not valid YAML: {exc}") from None
        if not isinstance(spec, list) or not spec:
            raise PipelineSpecError("pipeline spec must be a non-empty list of steps")
        pipeline = cls([_parse_step(i, raw) for i, raw in enumerate(spec)])
        pipeline._dry_run()
        return pipeline

    @classmethod
    def from_file(cls, path: str | Path) -> Pipeline:
        """Read a YAML spec from ``path`` and build the pipeline."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise PipelineSpecError(f"cannot read pipeline spec {path}: {exc.strerror}") from None
        return cls.from_spec(text)

    def to_spec(self) -> list[dict[str, Any]]:
        """The spec as plain data (YAML-serialisable); ``from_spec(to_spec())`` is equal."""
        return [{"transform": s.name, **copy.deepcopy(s.args)} for s in self.steps]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pipeline) and self.to_spec() == other.to_spec()

    def __hash__(self) -> int:
        return hash(yaml.safe_dump(self.to_spec()))

    def __repr__(self) -> str:
        return f"Pipeline({self.to_spec()!r})"

    def reference(self, volume: Volume, device: str | torch.device = "cpu") -> MetaTensor:
        """Apply the steps one by one with plain MONAI (the behaviour the fast path must match).

        Returns:
            Channel-first float32 ``MetaTensor`` ``(1, X, Y, Z)`` whose affine is in RAS mm.
        """
        dev = torch.device(device)
        img: Any = MetaTensor(
            torch.as_tensor(np.asarray(volume.array, dtype=np.float32)[None], device=dev),
            affine=torch.as_tensor(volume.affine_ras, dtype=torch.float64),
        )
        for step in self.steps:
            img = step.transform(img)
        return _as_output(img)

    def __call__(self, volume: Volume, device: str | torch.device = "cpu") -> MetaTensor:
        """Apply the pipeline on the fast path (fused resampling, in-place intensity steps).

        Args:
            volume: The series; its array is never modified.
            device: Where to compute (``"cpu"``, ``"cuda"``, ``"cuda:1"``...).

        Returns:
            Channel-first float32 ``MetaTensor`` ``(1, X, Y, Z)`` on ``device``, RAS affine in mm,
            within ``FAST_PATH_ATOL`` of :meth:`reference` on a [0, 1]-windowed output.
        """
        return _FastRun(volume, torch.device(device)).run(self.steps)

    def _dry_run(self) -> None:
        """Run every step on a tiny LPS volume so values MONAI rejects fail now, by step."""
        affine = np.diag([0.5, 0.5, 2.0, 1.0])
        img: Any = MetaTensor(torch.zeros(1, 6, 6, 4), affine=torch.as_tensor(_LPS_TO_RAS @ affine))
        for step in self.steps:
            try:
                img = step.transform(img)
            except Exception as exc:  # MONAI raises ValueError, TypeError, RuntimeError, ...
                raise _step_error(step.index, step.name, f"rejected by MONAI: {exc}") from None


_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class _FastRun:
    """State of one fast-path run: the working tensor, its affine and a not-yet-applied voxel map.

    ``pending`` maps voxel indices of the current (virtual) grid to voxel indices of ``tensor``;
    it holds at most one interpolating step so the fused result equals stepwise MONAI.
    """

    def __init__(self, volume: Volume, device: torch.device) -> None:
        array = np.asarray(volume.array)
        if array.dtype != np.float32:
            array = array.astype(np.float32)
        self.tensor = torch.from_numpy(array)[None].to(device)
        self.owned = self.tensor.device.type != "cpu" or array is not volume.array
        self.affine = torch.as_tensor(volume.affine_ras, dtype=torch.float64)
        self.shape: tuple[int, ...] = tuple(int(s) for s in array.shape)
        self.pending: np.ndarray | None = None
        self.pending_kwargs: dict[str, Any] = {}

    def run(self, steps: Sequence[Step]) -> MetaTensor:
        for step in steps:
            if step.name in _FUSABLE:
                self._fuse(step)
                continue
            self._materialize()
            if step.name in ("Window", "ScaleIntensityRange", "ThresholdIntensity"):
                self._intensity_in_place(step)
            else:
                self._delegate(step)
        self._materialize()
        return MetaTensor(self.tensor.to(torch.float32), affine=self.affine)

    def _fuse(self, step: Step) -> None:
        """Compose the step's voxel map (from MONAI's lazy geometry) into ``pending``."""
        probe = MetaTensor(torch.zeros(1).expand(1, *self.shape), affine=self.affine)
        out = step.transform(probe, lazy=True)  # type: ignore[call-arg]
        if not out.pending_operations:
            return  # MONAI found nothing to do (already RAS, already at pixdim)
        op = out.pending_operations[-1]
        xform = np.asarray(op["lazy_affine"], dtype=np.float64)
        interpolates = step.name == "Spacing"
        if interpolates and self.pending_kwargs:
            self._materialize()  # two interpolations in a row: keep them two, as MONAI does
        self.pending = xform if self.pending is None else self.pending @ xform
        if interpolates:
            info = op.get("extra_info", {})
            ac = info.get("align_corners")
            self.pending_kwargs = {
                "mode": str(info.get("mode", "bilinear")),
                "padding_mode": str(info.get("padding_mode", "border")),
                "align_corners": ac if isinstance(ac, bool) else False,
            }
        self.shape = tuple(int(s) for s in out.peek_pending_shape())
        self.affine = torch.as_tensor(out.peek_pending_affine(), dtype=torch.float64)

    def _materialize(self) -> None:
        if self.pending is None:
            return
        kwargs = self.pending_kwargs or {"mode": "nearest", "padding_mode": "zeros"}
        self.tensor = resample(self.tensor, self.pending, self.shape, **kwargs)
        self.owned = True
        self.pending, self.pending_kwargs = None, {}

    def _intensity_in_place(self, step: Step) -> None:
        if not self.owned:
            self.tensor, self.owned = self.tensor.clone(), True
        t, tr = self.tensor, step.transform
        if isinstance(tr, mt.ThresholdIntensity):
            keep = t > tr.threshold if tr.above else t < tr.threshold
            t.masked_fill_(~keep, float(tr.cval))
            return
        assert isinstance(tr, mt.ScaleIntensityRange)
        span = tr.a_max - tr.a_min
        if span == 0.0:  # MONAI's degenerate case: a shift only
            t.sub_(tr.a_min - (tr.b_min or 0.0))
            return
        if tr.b_min is not None and tr.b_max is not None:
            t.sub_(tr.a_min).mul_((tr.b_max - tr.b_min) / span).add_(tr.b_min)
        else:
            t.sub_(tr.a_min).div_(span)
        if tr.clip and (tr.b_min is not None or tr.b_max is not None):
            t.clamp_(min=tr.b_min, max=tr.b_max)

    def _delegate(self, step: Step) -> None:
        """Any other step: the MONAI transform itself, on the working tensor's device."""
        out = step.transform(MetaTensor(self.tensor, affine=self.affine))
        self.affine = torch.as_tensor(out.affine, dtype=torch.float64)
        self.tensor = out.as_tensor() if isinstance(out, MetaTensor) else torch.as_tensor(out)
        # A crop may be a view of the caller's volume: ownership does not change here.
        self.shape = tuple(int(s) for s in self.tensor.shape[1:])


def _as_output(img: Any) -> MetaTensor:
    if not isinstance(img, MetaTensor):
        img = MetaTensor(torch.as_tensor(img))
    return img.to(torch.float32) if img.dtype != torch.float32 else img


def _step_error(index: int, name: object, what: str) -> PipelineSpecError:
    return PipelineSpecError(f"pipeline step {index} ({name}): {what}")


def _parse_step(index: int, raw: object) -> Step:
    """Check one step against the allow-list and build its MONAI transform."""
    if not isinstance(raw, Mapping):
        raise _step_error(index, "?", f"must be a mapping, got {type(raw).__name__}")
    if "transform" not in raw or not isinstance(raw["transform"], str):
        raise _step_error(index, "?", "needs a 'transform' name")
    name = raw["transform"]
    args = {k: v for k, v in raw.items() if k != "transform"}
    for key, value in args.items():
        if not isinstance(key, str):
            raise _step_error(index, name, f"argument name {key!r} is not a string")
        _check_plain(index, name, key, value)
    if name == "Window":
        return Step(index, name, dict(args), _build_window(index, args))
    cls = ALLOWED_TRANSFORMS.get(name)
    if cls is None:
        allowed = ", ".join([*ALLOWED_TRANSFORMS, "Window"])
        raise _step_error(index, name, f"unknown transform; allowed: {allowed}")
    params = {
        p.name: p
        for p in inspect.signature(cls).parameters.values()
        if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name not in _REFUSED_ARGS
    }
    for key in args:
        if key not in params:
            raise _step_error(
                index, name, f"unknown argument {key!r}; allowed: {', '.join(params)}"
            )
    missing = [p for p, v in params.items() if v.default is v.empty and p not in args]
    if missing:
        raise _step_error(index, name, f"missing argument(s) {', '.join(missing)}")
    _check_values(index, name, args)
    kwargs = dict(args)
    if name == "Orientation":
        kwargs["labels"] = _RAS_LABELS  # explicit, so MONAI does not warn about its default
    try:
        transform = cls(**kwargs)
    except Exception as exc:  # MONAI validates some values in __init__
        raise _step_error(index, name, f"bad value: {exc}") from None
    return Step(index, name, dict(args), transform)


def _check_plain(index: int, name: str, key: str, value: object, depth: int = 0) -> None:
    """Values are plain data: numbers, booleans, strings (not expressions), None, lists thereof."""
    if value is None or isinstance(value, bool | int | float):
        return
    if isinstance(value, str):
        if value.startswith(_EXPRESSION_PREFIXES):
            raise _step_error(index, name, f"{key}={value!r}: expressions are never evaluated")
        return
    if isinstance(value, list | tuple) and depth < 2:
        for item in value:
            _check_plain(index, name, key, item, depth + 1)
        return
    raise _step_error(index, name, f"{key}: {type(value).__name__} is not plain data")


def _numbers(value: object) -> list[float]:
    items = value if isinstance(value, list | tuple) else [value]
    return [float(v) for v in items if isinstance(v, int | float) and not isinstance(v, bool)]


def _check_values(index: int, name: str, args: Mapping[str, Any]) -> None:
    """Domain checks MONAI would only catch (or silently accept) at run time."""
    for key in ("pixdim", "min_pixdim", "max_pixdim"):
        if key in args and args[key] is not None and any(v <= 0 for v in _numbers(args[key])):
            raise _step_error(index, name, f"{key} must be positive millimetres, got {args[key]}")
    for key in ("spatial_size", "roi_size"):
        if key not in args:
            continue
        value = args[key]
        items = value if isinstance(value, list | tuple) else [value]
        counts = [v for v in items if isinstance(v, int) and not isinstance(v, bool)]
        if len(counts) != len(items):
            raise _step_error(index, name, f"{key} must be whole voxel counts, got {value}")
        if any(v == 0 or v < -1 for v in counts):
            raise _step_error(index, name, f"{key} must be positive (or -1 = keep), got {value}")
    if name == "ScaleIntensityRange" and _numbers(args.get("a_min")) == _numbers(args.get("a_max")):
        raise _step_error(index, name, "a_min equals a_max")


def _build_window(index: int, args: Mapping[str, Any]) -> Transform:
    """``Window(center, width)`` in HU is ``ScaleIntensityRange(center -+ width / 2)``."""
    allowed = {"center", "width", *WINDOW_DEFAULTS}
    for key in args:
        if key not in allowed:
            raise _step_error(index, "Window", f"unknown argument {key!r}; allowed: {allowed}")
    center, width = args.get("center"), args.get("width")
    if not _numbers(center) or not _numbers(width) or isinstance(center, list | tuple):
        raise _step_error(index, "Window", "needs numeric 'center' and 'width' (HU)")
    if isinstance(width, list | tuple) or float(width) <= 0:  # type: ignore[arg-type]
        raise _step_error(index, "Window", f"width must be positive HU, got {width}")
    opts = {**WINDOW_DEFAULTS, **{k: v for k, v in args.items() if k in WINDOW_DEFAULTS}}
    c, w = float(center), float(width)  # type: ignore[arg-type]
    return mt.ScaleIntensityRange(a_min=c - w / 2.0, a_max=c + w / 2.0, **opts)
