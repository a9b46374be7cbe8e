"""Sliding-window chunking: split a prepared volume into patches and merge their outputs back.

The math follows MONAI's ``sliding_window_inference`` exactly (``monai.inferers.utils`` and
``monai.data.utils.dense_patch_slices`` / ``compute_importance_map``), in plain numpy so the
engine can run each patch batch as its own scheduler chunk:

* the scan interval per axis is ``int(roi * (1 - overlap))`` (at least 1; the roi itself when it
  spans the whole axis); windows start at ``0, interval, 2 * interval, ...`` and the last one is
  shifted back to end at the volume's edge; the order is C-order over the window starts (the
  first spatial axis varies slowest);
* an axis shorter than the roi is zero-padded symmetrically (the extra voxel after) and the
  merged output is cropped back;
* every patch output is multiplied by an importance map and summed; the sum is divided by the
  summed importance maps. ``gaussian`` (MONAI's recommendation for segmentation, and the
  default here) weighs a window's centre over its edges, where zero padding inside the network
  makes predictions least reliable: ``exp(-d**2 / (2 * (sigma_scale * roi)**2))`` per axis,
  floored at 1e-3 as MONAI does; ``constant`` weighs every voxel of every window equally.

Outputs must be dense: every output has the same spatial size as the patch that produced it.
All sizes are voxels; ``overlap`` is a fraction of the roi.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

BlendMode = Literal["gaussian", "constant"]
FloatArray = npt.NDArray[np.float32]
Window = tuple[slice, ...]
_MIN_WEIGHT = 1e-3  # MONAI's floor for importance weights


class ChunkingError(ValueError):
    """A volume or a patch output does not fit the chunk spec (rank, channels or size)."""


@dataclass(frozen=True)
class ChunkSpec:
    """How a model's input is split into sliding-window patches.

    Attributes:
        roi_size: Patch size per spatial axis, voxels.
        overlap: Overlap of neighbouring windows, fraction of the roi in [0, 1).
        mode: ``gaussian`` or ``constant`` blending of overlapping windows.
        sigma_scale: Gaussian sigma as a fraction of the roi (MONAI's default 0.125).
    """

    roi_size: tuple[int, ...]
    overlap: float = 0.25
    mode: BlendMode = "gaussian"
    sigma_scale: float = 0.125

    def __post_init__(self) -> None:
        if not self.roi_size or any(int(n) < 1 for n in self.roi_size):
            raise ValueError(f"roi_size must be positive voxels per axis, got {self.roi_size}")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.mode not in ("gaussian", "constant"):
            raise ValueError(f"mode must be gaussian or constant, got {self.mode!r}")
        if self.sigma_scale <= 0.0:
            raise ValueError(f"sigma_scale must be > 0, got {self.sigma_scale}")

    @classmethod
    def from_manifest(cls, manifest: Any) -> ChunkSpec | None:
        """The spec in a manifest's ``runtime.chunking`` (None when it is not chunked)."""
        chunking = manifest.runtime.chunking
        if chunking is None:
            return None
        return cls(
            tuple(int(n) for n in chunking.roi_size),
            float(chunking.overlap),
            chunking.mode,
            float(chunking.sigma_scale),
        )

    def item_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        """One patch's shape ``(C, *roi_size)`` for a model input ``(C, *spatial)``."""
        if len(input_shape) != len(self.roi_size) + 1:
            raise ChunkingError(
                f"input shape {tuple(input_shape)} needs {len(self.roi_size)} spatial axes "
                f"after the channel axis for roi {self.roi_size}"
            )
        return (int(input_shape[0]), *self.roi_size)


@dataclass(frozen=True)
class WindowPlan:
    """The windows of one volume.

    Attributes:
        spec: The chunk spec.
        spatial_shape: The volume's spatial size, voxels.
        pad: ``(before, after)`` zero padding per spatial axis, voxels.
        windows: Patch slices on the padded volume, in scan order.
    """

    spec: ChunkSpec
    spatial_shape: tuple[int, ...]
    pad: tuple[tuple[int, int], ...]
    windows: tuple[Window, ...]

    @property
    def padded_shape(self) -> tuple[int, ...]:
        """Spatial size after padding, voxels."""
        return tuple(n + a + b for n, (a, b) in zip(self.spatial_shape, self.pad, strict=True))

    @property
    def count(self) -> int:
        """Number of windows (the task's chunks)."""
        return len(self.windows)


def scan_interval(
    image_size: Sequence[int], roi_size: Sequence[int], overlap: float
) -> tuple[int, ...]:
    """Step between window starts per axis, voxels (MONAI ``_get_scan_interval``)."""
    steps = []
    for size, roi in zip(image_size, roi_size, strict=True):
        if roi == size:
            steps.append(int(roi))
        else:
            steps.append(max(int(roi * (1 - overlap)), 1))
    return tuple(steps)


def patch_slices(
    image_size: Sequence[int], roi_size: Sequence[int], interval: Sequence[int]
) -> list[Window]:
    """Every window of ``roi_size`` on ``image_size`` (MONAI ``dense_patch_slices``)."""
    patch = [min(s, r) for s, r in zip(image_size, roi_size, strict=True)]
    starts_per_axis = []
    for size, roi, step in zip(image_size, patch, interval, strict=True):
        count = 1
        if step:
            limit = math.ceil(size / step)
            count = next((d + 1 for d in range(limit) if d * step + roi >= size), 1)
        starts_per_axis.append([i * step - max(i * step + roi - size, 0) for i in range(count)])
    return [
        tuple(slice(s, s + roi) for s, roi in zip(starts, patch, strict=True))
        for starts in itertools.product(*starts_per_axis)
    ]


def plan_windows(spatial_shape: Sequence[int], spec: ChunkSpec) -> WindowPlan:
    """The windows covering a volume of ``spatial_shape`` voxels.

    Raises:
        ChunkingError: The volume's rank differs from the roi's.
    """
    shape = tuple(int(n) for n in spatial_shape)
    if len(shape) != len(spec.roi_size):
        raise ChunkingError(
            f"volume of spatial shape {shape} cannot be split into {len(spec.roi_size)}D "
            f"windows {spec.roi_size}"
        )
    pad = []
    for size, roi in zip(shape, spec.roi_size, strict=True):
        missing = max(roi - size, 0)
        pad.append((missing // 2, missing - missing // 2))
    padded = tuple(n + a + b for n, (a, b) in zip(shape, pad, strict=True))
    interval = scan_interval(padded, spec.roi_size, spec.overlap)
    windows = patch_slices(padded, spec.roi_size, interval)
    return WindowPlan(spec, shape, tuple(pad), tuple(windows))


@functools.lru_cache(maxsize=32)
def importance_map(roi_size: tuple[int, ...], mode: BlendMode, sigma_scale: float) -> FloatArray:
    """Per-voxel weight of a window's prediction (MONAI ``compute_importance_map``), read-only."""
    if mode == "constant":
        weights = np.ones(roi_size, dtype=np.float32)
    else:
        weights = np.ones((), dtype=np.float64)
        for n in roi_size:
            x = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
            sigma = n * sigma_scale
            weights = np.multiply.outer(weights, np.exp(-(x**2) / (2.0 * sigma**2)))
        weights = np.maximum(weights, _MIN_WEIGHT).astype(np.float32)
    weights.flags.writeable = False
    return weights


@functools.lru_cache(maxsize=32)
def _weight_sum(plan_key: tuple[tuple[int, ...], ChunkSpec]) -> FloatArray:
    """Summed importance maps of every window of a plan, on the padded grid (read-only)."""
    shape, spec = plan_key
    plan = plan_windows(shape, spec)
    weights = importance_map(spec.roi_size, spec.mode, spec.sigma_scale)
    total = np.zeros(plan.padded_shape, dtype=np.float32)
    for window in plan.windows:
        total[window] += weights
    total.flags.writeable = False
    return total


def pad_volume(volume: np.ndarray, plan: WindowPlan) -> FloatArray:
    """``volume`` ``(C, *spatial)`` as float32, zero-padded to the plan's padded grid.

    Raises:
        ChunkingError: ``volume``'s spatial shape is not the plan's.
    """
    array = np.asarray(volume, dtype=np.float32)
    if array.ndim != len(plan.spatial_shape) + 1 or array.shape[1:] != plan.spatial_shape:
        raise ChunkingError(
            f"volume of shape {array.shape} does not match the plan's (C, *{plan.spatial_shape})"
        )
    if any(a or b for a, b in plan.pad):
        array = np.pad(array, ((0, 0), *plan.pad), mode="constant", constant_values=0.0)
    return array


def patch(padded: np.ndarray, plan: WindowPlan, index: int) -> FloatArray:
    """Window ``index`` of a padded volume: ``(C, *roi_size)`` (a view, not a copy)."""
    return padded[(slice(None), *plan.windows[index])]


class PatchMerger:
    """Accumulates weighted patch outputs into whole-volume outputs.

    Not thread-safe: one thread owns a merger (the engine's postprocessing thread).
    """

    def __init__(self, plan: WindowPlan) -> None:
        self.plan = plan
        self._weights = importance_map(plan.spec.roi_size, plan.spec.mode, plan.spec.sigma_scale)
        self._sums: dict[str, FloatArray] = {}
        self._merged: set[int] = set()

    @property
    def merged(self) -> int:
        """Windows merged so far."""
        return len(self._merged)

    @property
    def complete(self) -> bool:
        """Every window has been merged."""
        return len(self._merged) == self.plan.count

    def add(self, index: int, outputs: Mapping[str, np.ndarray]) -> None:
        """Merge the outputs ``{name: (C_out, *roi_size)}`` of window ``index``.

        Raises:
            ChunkingError: Unknown or repeated window, or an output that is not dense.
        """
        if not 0 <= index < self.plan.count or index in self._merged:
            raise ChunkingError(f"window {index} is unknown or merged twice")
        roi = self.plan.spec.roi_size
        for name, value in outputs.items():
            out = np.asarray(value, dtype=np.float32)
            if out.ndim != len(roi) + 1 or out.shape[1:] != roi:
                raise ChunkingError(
                    f"output {name!r} of shape {out.shape} is not dense over the patch {roi}; "
                    "sliding-window merging needs (C_out, *roi_size)"
                )
            total = self._sums.get(name)
            if total is None:
                total = np.zeros((out.shape[0], *self.plan.padded_shape), dtype=np.float32)
                self._sums[name] = total
            total[(slice(None), *self.plan.windows[index])] += out * self._weights
        self._merged.add(index)

    def result(self) -> dict[str, FloatArray]:
        """The merged outputs ``{name: (C_out, *spatial_shape)}``, normalised and cropped.

        Raises:
            ChunkingError: Some windows are still missing.
        """
        if not self.complete:
            missing = self.plan.count - self.merged
            raise ChunkingError(f"{missing} of {self.plan.count} windows missing")
        plan = self.plan
        weight_sum = _weight_sum((plan.spatial_shape, plan.spec))
        starts = [before for before, _ in plan.pad]
        crop = tuple(slice(a, a + n) for a, n in zip(starts, plan.spatial_shape, strict=True))
        return {
            name: np.ascontiguousarray((total / weight_sum)[(slice(None), *crop)])
            for name, total in self._sums.items()
        }


def sliding_window(
    volume: np.ndarray,
    spec: ChunkSpec,
    predict: Callable[[FloatArray], Mapping[str, np.ndarray]],
    batch_size: int = 1,
) -> dict[str, FloatArray]:
    """Run ``predict`` over every window of ``volume`` ``(C, *spatial)`` and merge the outputs.

    The whole-volume reference of what the engine does chunk by chunk.

    Args:
        volume: Model input without the batch axis.
        spec: Windows and blending.
        predict: ``(N, C, *roi_size)`` → ``{name: (N, C_out, *roi_size)}``.
        batch_size: Windows per ``predict`` call.

    Returns:
        ``{name: (C_out, *spatial)}`` float32.
    """
    plan = plan_windows(np.shape(volume)[1:], spec)
    padded = pad_volume(volume, plan)
    merger = PatchMerger(plan)
    for first in range(0, plan.count, batch_size):
        indices = range(first, min(first + batch_size, plan.count))
        outputs = predict(np.stack([patch(padded, plan, i) for i in indices]))
        for k, index in enumerate(indices):
            merger.add(index, {name: value[k] for name, value in outputs.items()})
    return merger.result()
