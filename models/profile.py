"""Latency profiles: how long one batch takes per batch size, on one backend and device.

The scheduler picks batch sizes from these profiles, so they are measured the same way every
time: ``warmup`` untimed runs, then ``runs`` timed runs per batch size on random input of the
manifest's input shape; median and p95 in seconds. The clock is injected so the statistics are
tested deterministically.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from models.manifest import (
    BackendKind,
    LatencyPoint,
    LatencyProfile,
    Manifest,
    dump_manifest,
)
from models.registry import ModelVersion

BatchRunner = Callable[[np.ndarray], Any]
Clock = Callable[[], float]


class ProfileError(RuntimeError):
    """The profile cannot be measured (bad batch sizes, runner unavailable, ...)."""


def default_batch_sizes(max_batch: int) -> list[int]:
    """Powers of two up to ``max_batch``, plus ``max_batch`` itself: 6 -> [1, 2, 4, 6]."""
    sizes = [2**i for i in range(max_batch.bit_length()) if 2**i <= max_batch]
    return sizes if sizes[-1] == max_batch else [*sizes, max_batch]


def percentile_nearest_rank(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (an observed value, no interpolation): p95 of 20 runs is the
    19th smallest."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def machine_description() -> str:
    """CPU model and logical core count, e.g. ``Intel(R) Xeon(R) Processor, 2 cores``."""
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.lower().startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    model = model or platform.processor() or platform.machine() or "unknown CPU"
    return f"{model}, {os.cpu_count() or 1} cores"


def measure(
    runner: BatchRunner,
    input_shape: Sequence[int],
    batch_sizes: Sequence[int],
    *,
    warmup: int = 3,
    runs: int = 20,
    clock: Clock = time.perf_counter,
    dtype: str = "float32",
    seed: int = 0,
) -> list[LatencyPoint]:
    """Time ``runner`` on random batches of each size.

    Args:
        runner: Called with one ``(batch, *input_shape[1:])`` array per run.
        input_shape: The manifest's input shape, leading ``-1`` batch axis.
        batch_sizes: Batch sizes to measure, each >= 1.
        warmup: Untimed runs per batch size before timing.
        runs: Timed runs per batch size.
        clock: Seconds, monotonic; read once before and once after each timed run.
        dtype: Input dtype.
        seed: Seed of the random input.

    Returns:
        One point per batch size: median and nearest-rank p95 latency, seconds.
    """
    if runs < 1 or warmup < 0 or not batch_sizes or min(batch_sizes) < 1:
        raise ProfileError("need runs >= 1, warmup >= 0 and batch sizes >= 1")
    rng = np.random.default_rng(seed)
    points = []
    for size in batch_sizes:
        batch = rng.random((size, *input_shape[1:]), dtype=np.float32).astype(dtype)
        for _ in range(warmup):
            runner(batch)
        seconds = []
        for _ in range(runs):
            start = clock()
            runner(batch)
            # a zero interval (coarse clocks) would be an invalid profile point
            seconds.append(max(clock() - start, 1e-9))
        points.append(
            LatencyPoint(
                batch_size=size,
                median_s=statistics.median(seconds),
                p95_s=percentile_nearest_rank(seconds, 0.95),
                runs=runs,
            )
        )
    return points


def model_runner(version: ModelVersion, backend: str, device: str) -> BatchRunner:
    """``ModelRunner(...).run`` for ``version`` (weights verified before loading)."""
    try:
        from models.runner import ModelRunner
    except ImportError as error:
        raise ProfileError(f"models.runner is not available: {error}") from error
    return ModelRunner(version.manifest, version.folder, backend=backend, device=device).run


def profile_version(
    version: ModelVersion,
    *,
    backend: str = "onnxruntime",
    device: str = "cpu",
    batch_sizes: Sequence[int] | None = None,
    warmup: int = 3,
    runs: int = 20,
    runner: BatchRunner | None = None,
    clock: Clock = time.perf_counter,
    machine: str | None = None,
) -> LatencyProfile:
    """Measure a package version's latency profile (per patch batch for a chunked model).

    Args:
        version: The package version.
        backend: ``onnxruntime`` or ``torchscript``.
        device: ``cpu`` or ``cuda``.
        batch_sizes: Default :func:`default_batch_sizes` of ``runtime.max_batch``.
        warmup: Untimed runs per batch size.
        runs: Timed runs per batch size.
        runner: Batch runner; default builds ``models.runner.ModelRunner``.
        clock: Seconds clock (injected in tests).
        machine: Machine string; default :func:`machine_description`.

    Raises:
        ProfileError: A batch size is above ``runtime.max_batch`` or the runner is unavailable.
        WeightsMismatchError: The weights were altered (the default runner checks first).
    """
    manifest = version.manifest
    sizes = list(batch_sizes or default_batch_sizes(manifest.runtime.max_batch))
    if max(sizes) > manifest.runtime.max_batch:
        raise ProfileError(
            f"{manifest.ident}: batch size {max(sizes)} is above runtime.max_batch "
            f"{manifest.runtime.max_batch}"
        )
    kind = BackendKind(backend)
    run = runner or model_runner(version, kind.value, device)
    shape = list(manifest.input.shape)
    if manifest.runtime.chunking is not None:  # the scheduler's item is one patch
        shape = [shape[0], shape[1], *manifest.runtime.chunking.roi_size]
    points = measure(
        run,
        shape,
        sizes,
        warmup=warmup,
        runs=runs,
        clock=clock,
        dtype=manifest.input.dtype,
    )
    return LatencyProfile(
        backend=kind,
        device=device,
        machine=machine or machine_description(),
        measured_at=datetime.now(UTC).isoformat(timespec="seconds"),
        warmup=warmup,
        points=points,
    )


def with_profile(manifest: Manifest, profile: LatencyProfile) -> Manifest:
    """``manifest`` with ``profile`` replacing any profile of the same backend, device and
    machine."""
    kept = [
        p
        for p in manifest.latency
        if (p.backend, p.device, p.machine) != (profile.backend, profile.device, profile.machine)
    ]
    return Manifest.model_validate({**manifest.model_dump(), "latency": [*kept, profile]})


def write_profile(version: ModelVersion, profile: LatencyProfile) -> Manifest:
    """Store ``profile`` in the version's ``manifest.yaml`` (atomic write); returns it."""
    updated = with_profile(version.manifest, profile)
    dump_manifest(updated, Path(version.folder))
    return updated
