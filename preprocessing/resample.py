"""One resampling from a voxel grid to another, the arithmetic behind the fast pipeline path.

The pipeline's fast path composes the voxel maps of consecutive spatial steps (Orientation, then
Spacing) into one 4x4 matrix ``xform`` that maps an *output* voxel index ``(i, j, k, 1)`` to a
fractional *input* voxel index, exactly the matrix MONAI's ``SpatialResample`` hands to
``grid_sample``. :func:`resample` applies it once:

* **axis-aligned** ``xform`` (every output axis reads one input axis: flips, permutations,
  scalings, translations): three separable 1-D passes, each one ``index_select`` + weighted sum
  along one axis. Linear interpolation on a regular grid is separable, so this equals trilinear
  ``grid_sample`` up to float32 rounding, with far less memory traffic; flips and permutations
  cost nothing but an index order;
* anything else (a gantry-tilted series whose shear Spacing removes, oblique grids, reflection
  padding): MONAI's own ``AffineTransform`` (``grid_sample`` over the full affine), the same call
  ``SpatialResample`` makes, so the shear is never dropped.

Coordinates follow ``grid_sample``'s voxel-centre convention, which MONAI keeps for both values of
``align_corners`` once it has normalised the matrix; ``border`` padding clamps the sample position
into ``[0, n - 1]``, ``zeros`` padding gives taps outside the grid a weight of zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from monai.networks.layers import AffineTransform
from monai.transforms.utils import resolves_modes

_ALIGN_TOL = 1e-6  # off-axis matrix entries below this (voxel units) count as zero
_SEPARABLE_MODES = frozenset({"bilinear", "nearest"})
_SEPARABLE_PADDING = frozenset({"border", "zeros"})


def is_axis_aligned(xform: np.ndarray) -> bool:
    """True when each output axis samples exactly one input axis (no rotation, no shear)."""
    m = np.abs(np.asarray(xform, dtype=np.float64)[:3, :3]) > _ALIGN_TOL
    return bool((m.sum(axis=0) == 1).all() and (m.sum(axis=1) == 1).all())


def is_separable(xform: np.ndarray, mode: str, padding_mode: str) -> bool:
    """True when :func:`resample` runs ``xform`` as separable 1-D passes (see the module doc)."""
    return (
        mode in _SEPARABLE_MODES and padding_mode in _SEPARABLE_PADDING and is_axis_aligned(xform)
    )


@dataclass(frozen=True)
class AxisPass:
    """One 1-D pass of an axis-aligned resampling.

    Attributes:
        out_axis: Output axis the pass produces (0, 1 or 2).
        src_axis: Input axis it reads.
        positions: Fractional input voxel index of each output voxel along that axis (float64).
        n_in: Input voxel count along ``src_axis``.
    """

    out_axis: int
    src_axis: int
    positions: np.ndarray
    n_in: int

    @property
    def is_identity(self) -> bool:
        """True when the pass would copy the axis unchanged."""
        return len(self.positions) == self.n_in and bool(
            np.allclose(self.positions, np.arange(self.n_in), atol=1e-9, rtol=0.0)
        )


def axis_passes(
    xform: np.ndarray, in_shape: Sequence[int], out_shape: Sequence[int]
) -> list[AxisPass]:
    """The three 1-D passes of an axis-aligned ``xform``, in output-axis order.

    Args:
        xform: 4x4 map from output voxel index to input voxel index; must be axis-aligned.
        in_shape: Input spatial size ``(X, Y, Z)`` in voxels.
        out_shape: Output spatial size ``(X', Y', Z')`` in voxels.
    """
    xform = np.asarray(xform, dtype=np.float64)
    nonzero = np.abs(xform[:3, :3]) > _ALIGN_TOL
    passes = []
    for c in range(3):
        r = int(np.argmax(nonzero[:, c]))  # output axis c reads input axis r
        positions = float(xform[r, c]) * np.arange(int(out_shape[c]), dtype=np.float64)
        passes.append(AxisPass(c, r, positions + float(xform[r, 3]), int(in_shape[r])))
    return passes


def resample(
    img: torch.Tensor,
    xform: np.ndarray,
    out_shape: Sequence[int],
    *,
    mode: str = "bilinear",
    padding_mode: str = "border",
    align_corners: bool = False,
) -> torch.Tensor:
    """Resample a channel-first ``(C, X, Y, Z)`` tensor onto a new grid in one pass.

    Args:
        img: Input voxels, float32, on any device; never modified.
        xform: 4x4 map from output voxel index to input voxel index (voxel units, not mm).
        out_shape: Output spatial size ``(X', Y', Z')`` in voxels.
        mode: ``"bilinear"`` (trilinear in 3-D) or ``"nearest"``; others go to ``grid_sample``.
        padding_mode: ``"border"``, ``"zeros"`` or ``"reflection"`` (the last via ``grid_sample``).
        align_corners: Passed to ``grid_sample`` on the general path; the voxel-centre
            coordinates make it irrelevant to the separable path (as in MONAI).

    Returns:
        A new float32 tensor ``(C, X', Y', Z')`` on ``img``'s device.
    """
    xform = np.asarray(xform, dtype=np.float64)
    shape = tuple(int(s) for s in out_shape)
    if img.ndim == 4 and is_separable(xform, mode, padding_mode):
        return _resample_separable(img, xform, shape, mode, padding_mode)
    return _resample_grid(img, xform, shape, mode, padding_mode, align_corners)


def _resample_grid(
    img: torch.Tensor,
    xform: np.ndarray,
    shape: tuple[int, ...],
    mode: str,
    padding_mode: str,
    align_corners: bool,
) -> torch.Tensor:
    """The general path: exactly MONAI ``spatial_resample``'s ``AffineTransform`` call."""
    _, m, p, _ = resolves_modes(mode, padding_mode)
    layer = AffineTransform(
        normalized=False, mode=m, padding_mode=p, align_corners=align_corners, reverse_indexing=True
    )
    # float64 like MONAI's Spacing: float32 sample positions ~500 voxels out are off by ~3e-5 voxel,
    # visible at a bone edge after a narrow window.
    theta = torch.as_tensor(xform, dtype=torch.float64, device=img.device)
    out: torch.Tensor = layer(img.unsqueeze(0).to(torch.float64), theta=theta, spatial_size=shape)
    return out.squeeze(0).to(torch.float32)


def _resample_separable(
    img: torch.Tensor, xform: np.ndarray, shape: tuple[int, ...], mode: str, padding_mode: str
) -> torch.Tensor:
    """Axis-aligned resampling as one 1-D pass per axis that actually changes."""
    axes = axis_passes(xform, img.shape[1:], shape)
    v = img.permute(0, *(p.src_axis + 1 for p in axes))
    # Work in the buffer's memory order: gathers along outer axes then copy whole rows or planes.
    order = [0, *sorted(range(1, 4), key=lambda d: -v.stride()[d])]
    vm = v.permute(*order)
    passes = []
    for p in axes:
        if p.is_identity:
            continue
        dim = order.index(p.out_axis + 1)
        gather_only = bool(np.all(p.positions == np.round(p.positions)))
        key = (dim == 3, not gather_only, -p.n_in / shape[p.out_axis])
        passes.append((key, dim, p.positions, p.n_in))
    # Outer axes before the unit-stride one, pure gathers (no weights) first, then largest shrink:
    # each pass then runs over as few voxels as possible.
    for _, dim, positions, n_in in sorted(passes, key=lambda p: p[0]):
        vm = resample_axis(vm, dim, positions, n_in, mode, padding_mode)
    v = vm.permute(*np.argsort(order).tolist())
    if v.data_ptr() == img.data_ptr():
        v = v.clone()  # always hand back a tensor the caller owns
    return v.contiguous()


def resample_axis(
    v: torch.Tensor,
    dim: int,
    x: np.ndarray,
    n: int,
    mode: str,
    padding_mode: str,
    *,
    index_map: np.ndarray | None = None,
) -> torch.Tensor:
    """Sample ``v`` along ``dim`` at fractional voxel positions ``x`` (linear or nearest).

    Args:
        v: Any tensor; never modified.
        dim: The axis to resample.
        x: Fractional voxel index (of the logical axis) of each output sample.
        n: Length of the logical axis, in voxels.
        mode: ``"bilinear"`` or ``"nearest"``.
        padding_mode: ``"border"`` (clamp into ``[0, n - 1]``) or ``"zeros"``.
        index_map: Where logical voxel ``i`` is stored along ``dim`` (``v.shape[dim]`` may then
            exceed ``n``); ``None`` when storage order is the logical order. Lets slices kept in
            arrival order be resampled in sorted order without stacking them first.

    Returns:
        A new tensor, ``v``'s shape with ``len(x)`` along ``dim``.
    """
    bshape = [1] * v.ndim
    bshape[dim] = len(x)

    def stored(i: np.ndarray) -> np.ndarray:
        return i if index_map is None else np.asarray(index_map, dtype=np.int64)[i]

    if padding_mode == "border":
        x = np.clip(x, 0.0, n - 1.0)
    if mode == "nearest":
        idx = np.rint(x).astype(np.int64)
        valid = (idx >= 0) & (idx <= n - 1)
        out = _take(v, dim, torch.as_tensor(stored(np.clip(idx, 0, n - 1)), device=v.device))
        if not valid.all():
            out.mul_(torch.as_tensor(valid, dtype=v.dtype, device=v.device).reshape(bshape))
        return out
    i0 = np.floor(x).astype(np.int64)
    w1 = x - i0
    i1 = i0 + 1
    w0 = (1.0 - w1) * ((i0 >= 0) & (i0 <= n - 1))
    w1 = w1 * ((i1 >= 0) & (i1 <= n - 1))
    i0c = torch.as_tensor(stored(np.clip(i0, 0, n - 1)), device=v.device)
    out = _take(v, dim, i0c)
    if not np.allclose(w0, 1.0, rtol=0.0, atol=0.0):
        out.mul_(torch.as_tensor(w0, dtype=v.dtype, device=v.device).reshape(bshape))
    if np.any(w1 != 0.0):
        i1c = torch.as_tensor(stored(np.clip(i1, 0, n - 1)), device=v.device)
        far = _take(v, dim, i1c)
        far.mul_(torch.as_tensor(w1, dtype=v.dtype, device=v.device).reshape(bshape))
        out.add_(far)
    return out


def area_resize(img: torch.Tensor, out_shape: Sequence[int]) -> torch.Tensor:
    """``interpolate(mode="area")`` (adaptive average pooling) as one 1-D pass per axis.

    Each output voxel is the mean over a box of input voxels, the box along every axis being
    ``[floor(i * n / m), ceil((i + 1) * n / m))`` as in PyTorch's adaptive pooling; the mean over
    a box is the product of the 1-D means, so the passes are separable and each touches ~3 input
    voxels per output voxel instead of the 3-D window (several times faster on CPU).

    Args:
        img: Channel-first ``(C, X, Y, Z)`` tensor; never modified.
        out_shape: Output spatial size ``(X', Y', Z')`` in voxels.

    Returns:
        A new tensor ``(C, X', Y', Z')``, equal to the pooled one up to float rounding.
    """
    v = img
    axes = [(d, int(m)) for d, m in zip(range(1, v.ndim), out_shape, strict=True)]
    # Largest shrink first, outer (strided) axes before the unit-stride one at equal shrink.
    axes.sort(key=lambda a: (a[1] / v.shape[a[0]], v.stride(a[0]) == 1))
    for dim, m in axes:
        n = int(v.shape[dim])
        if m == n:
            continue
        i = np.arange(m, dtype=np.int64)
        start, end = (i * n) // m, ((i + 1) * n + m - 1) // m
        bshape = [1] * v.ndim
        bshape[dim] = m
        out: torch.Tensor | None = None
        for t in range(int((end - start).max())):
            weight = ((start + t) < end) / (end - start)
            idx = torch.as_tensor(np.minimum(start + t, n - 1), device=v.device)
            term = _take(v, dim, idx)
            term.mul_(torch.as_tensor(weight, dtype=v.dtype, device=v.device).reshape(bshape))
            out = term if out is None else out.add_(term)
        assert out is not None
        v = out
    return v.clone() if v is img else v


def _take(v: torch.Tensor, dim: int, idx: torch.Tensor) -> torch.Tensor:
    """``index_select`` along ``dim``; on the unit-stride axis advanced indexing is ~3x faster."""
    if v.stride(dim) == 1:
        return v[(slice(None),) * dim + (idx,)]
    return v.index_select(dim, idx)
