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
  with the full affine. Windowing and thresholding run in place; ``Resize`` in ``area`` mode
  (adaptive average pooling, MONAI's default) is one separable 1-D pass per axis; every other step
  is the MONAI transform itself on the working tensor, on the requested device.
  :meth:`Pipeline.leading_map` and :meth:`Pipeline.run_from` split a run in two, so
  :mod:`preprocessing.streaming_pipeline` can resample slices while they arrive.

Guaranteed tolerance (``tests/test_pipeline.py``): on a [0, 1]-windowed output the fast path is
within ``FAST_PATH_ATOL`` (max absolute difference) of the reference, with identical shape and
affine; the difference is float32-versus-float64 interpolation rounding (MONAI's Spacing
resamples in float64).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import yaml
from monai import transforms as mt
from monai.data import MetaTensor

from preprocessing.errors import PipelineSpecError
from preprocessing.pipeline_spec import (
    ALLOWED_TRANSFORMS,
    WINDOW_DEFAULTS,
    Step,
    parse_step,
    step_error,
)
from preprocessing.resample import area_resize, resample
from preprocessing.volume import Volume

FAST_PATH_ATOL = 1e-4
"""Max absolute difference, fast path vs reference, on a [0, 1]-windowed output."""

_FUSABLE = frozenset({"Orientation", "Spacing"})

__all__ = [
    "ALLOWED_TRANSFORMS",
    "FAST_PATH_ATOL",
    "WINDOW_DEFAULTS",
    "FusedMap",
    "Pipeline",
    "Step",
]


@dataclass(frozen=True)
class FusedMap:
    """The leading Orientation/Spacing steps of a pipeline as one voxel map (geometry only).

    Attributes:
        xform: 4x4 map from output voxel index to input voxel index, or ``None`` when the steps
            change nothing.
        shape: Output voxel counts ``(X', Y', Z')``.
        affine: Output 4x4 voxel index → RAS millimetres (float64).
        kwargs: ``mode``, ``padding_mode`` (and ``align_corners``) for :func:`resample`.
        next_step: Index of the first step the map does not cover.
    """

    xform: np.ndarray | None
    shape: tuple[int, ...]
    affine: torch.Tensor
    kwargs: dict[str, Any]
    next_step: int


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
        pipeline = cls([parse_step(i, raw) for i, raw in enumerate(spec)])
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
        return _FastRun.of_volume(volume, torch.device(device)).run(self.steps)

    def leading_map(self, shape: Sequence[int], affine_ras: np.ndarray) -> FusedMap:
        """The voxel map the fast path would apply first, for a volume of this geometry.

        The leading Orientation/Spacing steps composed exactly as :meth:`__call__` composes them
        (the same code, so the same matrix), without touching any voxel. Streaming uses it to
        resample slices as they arrive (:mod:`preprocessing.streaming_pipeline`).

        Args:
            shape: Input voxel counts ``(X, Y, Z)``.
            affine_ras: Input 4x4 voxel index → RAS millimetres (``Volume.affine_ras``).
        """
        affine = torch.as_tensor(np.asarray(affine_ras), dtype=torch.float64)
        run = _FastRun(None, affine, tuple(int(s) for s in shape), owned=True)
        index = 0
        while index < len(self.steps) and self.steps[index].name in _FUSABLE:
            if not run.fuse(self.steps[index], geometry_only=True):
                break  # a second interpolation: the fast path materialises before it
            index += 1
        kwargs = run.pending_kwargs or dict(_NO_INTERPOLATION)
        return FusedMap(run.pending, run.shape, run.affine, kwargs, index)

    def run_from(
        self,
        tensor: torch.Tensor,
        affine_ras: torch.Tensor,
        start: int,
        device: str | torch.device = "cpu",
    ) -> MetaTensor:
        """Run ``steps[start:]`` on the fast path from an already resampled working tensor.

        Args:
            tensor: ``(1, X, Y, Z)`` float32 voxels, owned by the pipeline from now on (intensity
                steps modify it in place).
            affine_ras: Its 4x4 voxel index → RAS millimetres.
            start: Index of the first step still to apply (``FusedMap.next_step``).
            device: Where to compute.
        """
        dev = torch.device(device)
        shape = tuple(int(s) for s in tensor.shape[1:])
        run = _FastRun(tensor.to(dev), torch.as_tensor(affine_ras, dtype=torch.float64), shape)
        return run.run(self.steps[start:])

    def _dry_run(self) -> None:
        """Run every step on a tiny LPS volume so values MONAI rejects fail now, by step."""
        affine = np.diag([0.5, 0.5, 2.0, 1.0])
        img: Any = MetaTensor(torch.zeros(1, 6, 6, 4), affine=torch.as_tensor(_LPS_TO_RAS @ affine))
        for step in self.steps:
            try:
                img = step.transform(img)
            except Exception as exc:  # noqa: BLE001 - MONAI rejects a value with any type
                raise step_error(step.index, step.name, f"rejected by MONAI: {exc}") from None


_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_NO_INTERPOLATION: dict[str, Any] = {"mode": "nearest", "padding_mode": "zeros"}


class _FastRun:
    """State of one fast-path run: the working tensor, its affine and a not-yet-applied voxel map.

    ``pending`` maps voxel indices of the current (virtual) grid to voxel indices of ``tensor``;
    it holds at most one interpolating step so the fused result equals stepwise MONAI.
    """

    def __init__(
        self,
        tensor: torch.Tensor | None,
        affine: torch.Tensor,
        shape: tuple[int, ...],
        *,
        owned: bool = True,
    ) -> None:
        self.tensor: torch.Tensor = tensor if tensor is not None else torch.empty(0)
        self.owned = owned
        self.affine = affine
        self.shape = shape
        self.pending: np.ndarray | None = None
        self.pending_kwargs: dict[str, Any] = {}

    @classmethod
    def of_volume(cls, volume: Volume, device: torch.device) -> _FastRun:
        """A run starting from ``volume``'s voxels (shared, not copied, when already float32)."""
        array = np.asarray(volume.array)
        if array.dtype != np.float32:
            array = array.astype(np.float32)
        tensor = torch.from_numpy(array)[None].to(device)
        owned = tensor.device.type != "cpu" or array is not volume.array
        affine = torch.as_tensor(volume.affine_ras, dtype=torch.float64)
        return cls(tensor, affine, tuple(int(s) for s in array.shape), owned=owned)

    def run(self, steps: Sequence[Step]) -> MetaTensor:
        for step in steps:
            if step.name in _FUSABLE:
                self.fuse(step)
                continue
            self._materialize()
            if step.name in ("Window", "ScaleIntensityRange", "ThresholdIntensity"):
                self._intensity_in_place(step)
            elif _is_area_resize(step):
                self._area_resize(step)
            else:
                self._delegate(step)
        self._materialize()
        return MetaTensor(self.tensor.to(torch.float32), affine=self.affine)

    def fuse(self, step: Step, *, geometry_only: bool = False) -> bool:
        """Compose the step's voxel map (from MONAI's lazy geometry) into ``pending``.

        Returns False, changing nothing, when ``geometry_only`` and the step would have to
        materialise ``pending`` first (two interpolations in a row).
        """
        probe = MetaTensor(torch.zeros(1).expand(1, *self.shape), affine=self.affine)
        out = step.transform(probe, lazy=True)  # type: ignore[call-arg]
        if not out.pending_operations:
            return True  # MONAI found nothing to do (already RAS, already at pixdim)
        op = out.pending_operations[-1]
        xform = np.asarray(op["lazy_affine"], dtype=np.float64)
        interpolates = step.name == "Spacing"
        if interpolates and self.pending_kwargs:
            if geometry_only:
                return False
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
        return True

    def _materialize(self) -> None:
        if self.pending is None:
            return
        kwargs = self.pending_kwargs or _NO_INTERPOLATION
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

    def _area_resize(self, step: Step) -> None:
        """``Resize(mode="area")`` as separable passes; shape and affine from MONAI's lazy call."""
        probe = MetaTensor(torch.zeros(1).expand(1, *self.shape), affine=self.affine)
        out = step.transform(probe, lazy=True)  # type: ignore[call-arg]
        shape = tuple(int(s) for s in out.peek_pending_shape())
        self.affine = torch.as_tensor(out.peek_pending_affine(), dtype=torch.float64)
        if shape != self.shape:
            self.tensor, self.owned, self.shape = area_resize(self.tensor, shape), True, shape

    def _delegate(self, step: Step) -> None:
        """Any other step: the MONAI transform itself, on the working tensor's device."""
        out = step.transform(MetaTensor(self.tensor, affine=self.affine))
        self.affine = torch.as_tensor(out.affine, dtype=torch.float64)
        self.tensor = out.as_tensor() if isinstance(out, MetaTensor) else torch.as_tensor(out)
        # A crop may be a view of the caller's volume: ownership does not change here.
        self.shape = tuple(int(s) for s in self.tensor.shape[1:])


def _is_area_resize(step: Step) -> bool:
    tr = step.transform
    return isinstance(tr, mt.Resize) and tr.mode == "area" and not tr.anti_aliasing


def _as_output(img: Any) -> MetaTensor:
    meta = img if isinstance(img, MetaTensor) else MetaTensor(torch.as_tensor(img))
    if meta.dtype == torch.float32:
        return meta
    # torch types Tensor.to as returning Tensor; MetaTensor's __torch_function__ keeps the class.
    return cast(MetaTensor, meta.to(torch.float32))
