"""Latency profiles: predicted batch service time from measured points.

Profiles come from ``statlane models profile`` (median seconds per batch size). Between measured
sizes the time is interpolated linearly; beyond the largest it is extrapolated from the last two.

The unit of a batch is the scheduler's item: one chunk. For a chunked model (manifest
``runtime.chunking``) that is one sliding-window patch ``(C, *roi_size)``, so its profile must be
measured per patch batch: ``seconds(b)`` is the time of b patches in one backend call, and a
whole task of N chunks costs ``seconds(N)`` when it runs as one unit (extrapolated past
``max_batch``, where the engine runs its patches back to back). For an unchunked model an item
is a whole input.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelLatency:
    """Measured service time of one model per batch size (items: patches when chunked).

    Attributes:
        points: ``(batch_size, seconds)`` sorted by batch size, sizes >= 1.
        max_batch: Largest batch the model accepts.
    """

    points: tuple[tuple[int, float], ...]
    max_batch: int

    @classmethod
    def from_mapping(cls, seconds_by_batch: Mapping[int, float], max_batch: int) -> ModelLatency:
        """Build from ``{batch_size: seconds}``; needs at least one point."""
        points = tuple(sorted((int(b), float(s)) for b, s in seconds_by_batch.items()))
        if not points or points[0][0] < 1 or any(s <= 0 for _, s in points):
            raise ValueError("latency profile needs positive times for batch sizes >= 1")
        return cls(points=points, max_batch=max_batch)

    def seconds(self, batch_size: int) -> float:
        """Predicted service time of a batch of ``batch_size`` items, seconds."""
        sizes = [b for b, _ in self.points]
        times = [s for _, s in self.points]
        if len(sizes) == 1:
            return times[0] * batch_size / sizes[0] if batch_size > sizes[0] else times[0]
        i = bisect_left(sizes, batch_size)
        if i < len(sizes) and sizes[i] == batch_size:
            return times[i]
        if i == 0:
            return times[0]
        if i == len(sizes):
            i = len(sizes) - 1
        b0, b1, t0, t1 = sizes[i - 1], sizes[i], times[i - 1], times[i]
        return max(t0 + (t1 - t0) * (batch_size - b0) / (b1 - b0), 1e-9)


class LatencyTable:
    """Latency of every model the scheduler may batch, keyed by ``name@version``."""

    def __init__(self, models: Mapping[str, ModelLatency]) -> None:
        self._models = dict(models)

    def __contains__(self, model: str) -> bool:
        return model in self._models

    def model(self, model: str) -> ModelLatency:
        """The profile of ``model``; KeyError names it when missing."""
        try:
            return self._models[model]
        except KeyError:
            raise KeyError(f"no latency profile for model {model}") from None

    def seconds(self, model: str, batch_size: int) -> float:
        """Predicted batch service time, seconds."""
        return self.model(model).seconds(batch_size)
