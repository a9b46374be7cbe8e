"""Streaming preprocessing: resample each slice in-plane as it arrives, finish in a short tail.

A :class:`StreamingPreprocessor` wraps a :class:`~preprocessing.streaming.SeriesAssembler` and a
:class:`~preprocessing.pipeline.Pipeline`. The fast path turns the pipeline's leading
Orientation/Spacing steps into one voxel map; when that map is axis-aligned and separable
(:mod:`preprocessing.resample`), its two in-plane 1-D passes touch one slice at a time, so they
can run the moment a slice is decoded. The map depends on the whole series' geometry, which is
only known at the end, so the per-slice work is *speculative*: it uses the map of a volume
built from the first slice's plane (its orientation, pixel spacing and Rows x Columns) stacked
along the slice normal.

When the series is complete, :meth:`StreamingPreprocessor.tensor` plans the real geometry (the
same checks and affine as :func:`~preprocessing.series.load_series`, without stacking the full
volume), computes the real map with the very code the batch path uses, and verifies that its
in-plane part equals the speculative one and that it is separable. Then only the through-plane
pass (over the already reduced slices, in sorted order) and the remaining steps (window,
resize, ...) are left. Otherwise - a gantry-tilted series (sheared map), a slice whose plane
differs, a pipeline that does not start with Orientation/Spacing, a non-separable mode - it
falls back to ``pipeline(assembler.volume())``. Both give the batch result within
``FAST_PATH_ATOL`` with identical shape and affine (``tests/test_streaming_pipeline.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import torch
from monai.data import MetaTensor

from preprocessing.geometry import StackPlan, plan_stack
from preprocessing.instance import Frame
from preprocessing.pipeline import FusedMap, Pipeline
from preprocessing.resample import AxisPass, axis_passes, is_separable, resample_axis
from preprocessing.streaming import SeriesAssembler
from preprocessing.volume import LPS_TO_RAS, Volume

_MAP_TOLERANCE = 1e-9
"""Largest difference (voxel units) between speculative and real in-plane map entries."""

_DEFAULT_STEP_MM = 1.0
"""Speculative slice step when the header gives neither SpacingBetweenSlices nor SliceThickness."""


@dataclass(frozen=True)
class _Speculation:
    """The in-plane part of the fused map, guessed from the first slice.

    Attributes:
        plane: Rows, Columns, PixelSpacing and ImageOrientationPatient every slice must share.
        fused: The map of the speculative volume.
        in_plane: Its non-identity passes over input axes 0 (columns) and 1 (rows).
        reduced_shape: Slice size after the in-plane passes, ``(rows', columns')`` voxels.
    """

    plane: tuple[Any, ...]
    fused: FusedMap
    in_plane: tuple[AxisPass, ...]
    reduced_shape: tuple[int, int]


def _plane_of(frame: Frame) -> tuple[Any, ...]:
    return (frame.rows, frame.columns, frame.pixel_spacing, frame.orientation)


class _SliceReducer:
    """Per-slice state: the speculative map, and the in-plane resampled slices in arrival order.

    Args:
        pipeline: The pipeline whose leading map is speculated.
        device: Where the reduced slices live.
        expected_count: Instances expected (sizes the buffer), if known.
        tolerance_mm: Slice position tolerance of the series, millimetres.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        device: torch.device,
        expected_count: int | None,
        tolerance_mm: float,
    ) -> None:
        self.pipeline = pipeline
        self.device = device
        self.expected_count = expected_count
        self.tolerance_mm = tolerance_mm
        self.speculation: _Speculation | None = None
        self.stopped: str | None = None
        """Why per-slice work stopped, if it did."""
        self.buffer: torch.Tensor | None = None
        """``(capacity, rows', columns')`` float32, in arrival order."""
        self.slots: dict[tuple[str, int], int] = {}
        """(SOP Instance UID, frame number) → index into ``buffer``."""

    def __call__(self, frames: Sequence[Frame]) -> None:
        """SeriesAssembler hook: resample each new slice in-plane (never raises)."""
        if self.stopped is not None:
            return
        try:
            for frame in frames:
                self._reduce(frame)
        # Speculative work must never lose a series, whatever fails in it: fall back instead.
        except Exception as exc:  # noqa: BLE001
            self.stop(f"per-slice work failed ({type(exc).__name__}: {exc})")

    def _reduce(self, frame: Frame) -> None:
        """Run the speculative in-plane passes on one decoded frame and store the result."""
        if self.speculation is None:
            self.speculation = self._speculate(frame)
            if self.speculation is None:
                return
        spec = self.speculation
        if _plane_of(frame) != spec.plane or frame.hu is None:
            self.stop(f"instance {frame.label} lies in another plane than the first")
            return
        t = torch.from_numpy(frame.hu).to(self.device)
        for p in spec.in_plane:  # input axis 1 (rows) is tensor dim 0, axis 0 (columns) dim 1
            t = resample_axis(t, 1 - p.src_axis, p.positions, p.n_in, *_modes(spec.fused))
        slot = self._next_slot(spec.reduced_shape)
        assert self.buffer is not None
        self.buffer[slot].copy_(t)
        self.slots[(frame.sop_uid, frame.frame_index)] = slot

    def _speculate(self, frame: Frame) -> _Speculation | None:
        """The fused map of a volume of ``frame``'s plane stacked along its normal."""
        if frame.position is None or frame.orientation is None or frame.pixel_spacing is None:
            self.stop("slices without patient geometry")
            return None
        step = frame.metadata.get("SpacingBetweenSlices") or frame.metadata.get("SliceThickness")
        step_mm = float(step) if isinstance(step, int | float) and step > 0 else _DEFAULT_STEP_MM
        start = np.asarray(frame.position, dtype=np.float64)
        normal = np.cross(frame.orientation[:3], frame.orientation[3:6])
        normal /= np.linalg.norm(normal)
        n = max(self.expected_count or 2, 2)
        positions = start + np.arange(n)[:, None] * step_mm * normal
        guess = plan_stack(
            positions,
            [frame.label] * n,
            frame.orientation,
            frame.pixel_spacing,
            series_uid=frame.series_uid,
            tolerance_mm=self.tolerance_mm,
        )
        fused = self.pipeline.leading_map((frame.columns, frame.rows, n), LPS_TO_RAS @ guess.affine)
        mode = fused.kwargs["mode"]
        xform = np.eye(4) if fused.xform is None else fused.xform
        if not is_separable(xform, mode, fused.kwargs["padding_mode"]):
            self.stop("the fused map is not separable")
            return None
        passes = axis_passes(xform, (frame.columns, frame.rows, n), fused.shape)
        size = {p.src_axis: len(p.positions) for p in passes}
        in_plane = tuple(
            sorted(
                (p for p in passes if p.src_axis < 2 and not p.is_identity),
                key=lambda p: -p.src_axis,  # rows (outer) first, as the batch path orders them
            )
        )
        return _Speculation(_plane_of(frame), fused, in_plane, (size[1], size[0]))

    def _next_slot(self, reduced_shape: tuple[int, int]) -> int:
        """Index of a free slice in ``buffer``, growing it (doubling) when full."""
        used = len(self.slots)
        if self.buffer is None or used == self.buffer.shape[0]:
            capacity = max(self.expected_count or 0, 2 * used, 8)
            grown = torch.empty((capacity, *reduced_shape), dtype=torch.float32, device=self.device)
            if self.buffer is not None:
                grown[:used] = self.buffer[:used]
            self.buffer = grown
        return used

    def stop(self, reason: str) -> None:
        """Give up per-slice work for this series (``tensor()`` then runs the whole pipeline)."""
        self.stopped = reason
        self.buffer, self.slots = None, {}


class StreamingPreprocessor:
    """Collects one series slice by slice and preprocesses it while it arrives.

    Args:
        pipeline: The pipeline to apply; its result is what :meth:`tensor` returns.
        expected_count: Number of instances that make the series complete, if known.
        series_uid: The series to accept; ``None`` adopts the series of the first instance.
        tolerance_mm: Allowed deviation of slice positions from a regular grid, millimetres.
        device: Where the per-slice and final work runs (``"cpu"``, ``"cuda"``...).
    """

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        expected_count: int | None = None,
        series_uid: str | None = None,
        tolerance_mm: float = 0.05,
        device: str | torch.device = "cpu",
    ) -> None:
        self.pipeline = pipeline
        self.device = torch.device(device)
        # The reducer holds no reference back to self or the assembler: no cycle keeps the
        # decoded slices alive after the caller drops this object.
        self._reducer = _SliceReducer(pipeline, self.device, expected_count, tolerance_mm)
        self.assembler = SeriesAssembler(
            series_uid,
            expected_count=expected_count,
            tolerance_mm=tolerance_mm,
            on_frames=self._reducer,
        )
        self.fallback_reason: str | None = None
        """Why the last :meth:`tensor` ran the whole pipeline; ``None``: it took the short tail."""

    @property
    def count(self) -> int:
        """Distinct instances (SOP Instance UIDs) received so far."""
        return self.assembler.count

    @property
    def is_complete(self) -> bool:
        """True when ``expected_count`` is known and reached."""
        return self.assembler.is_complete

    def add(self, source: Path | str | bytes | pydicom.Dataset) -> None:
        """Read and decode one instance and resample its slices in-plane now.

        A repeated SOP Instance UID is ignored. Raises what
        :meth:`SeriesAssembler.add <preprocessing.streaming.SeriesAssembler.add>` raises.
        """
        self.assembler.add(source)

    def volume(self) -> Volume:
        """The assembled volume, exactly :meth:`SeriesAssembler.volume`."""
        return self.assembler.volume()

    def tensor(self) -> MetaTensor:
        """The pipeline's output for the series, as ``pipeline(load_series(...))`` gives it.

        Returns:
            Channel-first float32 ``MetaTensor`` ``(1, X, Y, Z)`` on ``device``, RAS affine in mm;
            within ``FAST_PATH_ATOL`` of the batch path, identical shape and affine.

        Raises:
            IncompleteSeriesError: ``expected_count`` is known and not yet reached.
            PreprocessingError: Geometric defects, as in :func:`load_series`.
        """
        frames, plan = self.assembler.plan()
        first = frames[plan.order[0]]
        shape = (first.columns, first.rows, len(frames))
        real = self.pipeline.leading_map(shape, LPS_TO_RAS @ plan.affine)
        self.fallback_reason = self._check(frames, real)
        if self.fallback_reason is not None:
            return self.pipeline(self.assembler.volume(), self.device)
        return self._finish(frames, plan, real, shape)

    # ---- at completion --------------------------------------------------------------------------

    def _check(self, frames: Sequence[Frame], real: FusedMap) -> str | None:
        """Why the per-slice results cannot be used for the real map, or ``None`` if they can."""
        reducer = self._reducer
        if reducer.stopped is not None:
            return reducer.stopped
        spec = reducer.speculation
        if spec is None or reducer.buffer is None:
            return "no slice was resampled"
        if any((f.sop_uid, f.frame_index) not in reducer.slots for f in frames):
            return "a slice was not resampled"
        if real.kwargs != spec.fused.kwargs or real.next_step != spec.fused.next_step:
            return "the real map interpolates differently"
        if (real.xform is None) != (spec.fused.xform is None):
            return "the real map differs from the speculative one"
        if real.xform is None or spec.fused.xform is None:
            return None  # nothing to resample either way: only the sorting is left
        if not is_separable(real.xform, real.kwargs["mode"], real.kwargs["padding_mode"]):
            return "the real map is not separable (sheared or oblique grid)"
        if not np.allclose(real.xform[:2], spec.fused.xform[:2], rtol=0.0, atol=_MAP_TOLERANCE):
            return "the real in-plane map differs from the speculative one"
        spec_passes = axis_passes(spec.fused.xform, (1, 1, 1), spec.fused.shape)
        real_passes = axis_passes(real.xform, (1, 1, 1), real.shape)
        if any(
            s.src_axis != r.src_axis or (s.src_axis < 2 and len(s.positions) != len(r.positions))
            for s, r in zip(spec_passes, real_passes, strict=True)
        ):
            return "the real in-plane grid differs from the speculative one"
        return None

    def _finish(
        self, frames: Sequence[Frame], plan: StackPlan, real: FusedMap, shape: tuple[int, ...]
    ) -> MetaTensor:
        """Through-plane pass over the reduced slices in sorted order, then the other steps."""
        buffer, slots = self._reducer.buffer, self._reducer.slots
        assert buffer is not None
        xform = np.eye(4) if real.xform is None else real.xform
        through = next(p for p in axis_passes(xform, shape, real.shape) if p.src_axis == 2)
        keys = [(frames[i].sop_uid, frames[i].frame_index) for i in plan.order]
        stored = np.array([slots[k] for k in keys], dtype=np.int64)
        z = resample_axis(
            buffer, 0, through.positions, len(frames), *_modes(real), index_map=stored
        )
        # z is (slice', rows', columns') = input axes (2, 1, 0); order them as the output axes.
        src = [p.src_axis for p in axis_passes(xform, shape, real.shape)]
        volume = z.permute(*(2 - r for r in src))[None]
        return self.pipeline.run_from(volume, real.affine, real.next_step, self.device)


def _modes(fused: FusedMap) -> tuple[str, str]:
    """``(mode, padding_mode)`` of the map, for :func:`resample_axis`."""
    return str(fused.kwargs["mode"]), str(fused.kwargs["padding_mode"])
