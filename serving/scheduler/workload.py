"""Workloads for the simulator and the scheduling benchmark: open-loop Poisson arrivals.

A mix says which share of studies goes to which model at which priority; the offered load is
expressed as a fraction of the capacity the latency profiles allow (full batches, every device).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from router.vocabulary import PriorityClass
from serving.scheduler.latency import LatencyTable
from serving.scheduler.records import Completion, SchedulerConfig, TaskRecord


@dataclass(frozen=True)
class MixEntry:
    """One kind of task in the workload.

    Attributes:
        model: ``name@version``.
        priority: Class of these tasks.
        share: Fraction of arrivals (the shares of a mix sum to 1).
        shape: Item input shape (tasks of equal shape batch together).
        chunks: Sliding-window chunks per task.
    """

    model: str
    priority: PriorityClass
    share: float
    shape: tuple[int, ...]
    chunks: int = 1


def mean_service_s(mix: Sequence[MixEntry], latency: LatencyTable) -> float:
    """Average device time per task at full batches, seconds (the capacity-defining cost)."""
    total = 0.0
    for entry in mix:
        model = latency.model(entry.model)
        per_chunk = model.seconds(model.max_batch) / model.max_batch
        total += entry.share * per_chunk * entry.chunks
    return total


def rate_for_load(
    load: float, mix: Sequence[MixEntry], latency: LatencyTable, devices: int
) -> float:
    """Arrival rate (tasks per second) that offers ``load`` x the capacity of ``devices``."""
    return load * devices / mean_service_s(mix, latency)


def poisson_arrivals(
    mix: Sequence[MixEntry],
    rate_per_s: float,
    duration_s: float,
    config: SchedulerConfig,
    seed: int = 0,
) -> list[TaskRecord]:
    """Open-loop Poisson arrivals over ``duration_s`` seconds, each task drawn from ``mix``."""
    if not mix or not math.isclose(sum(e.share for e in mix), 1.0, abs_tol=1e-6):
        raise ValueError("mix shares must sum to 1")
    rng = np.random.default_rng(seed)
    shares = np.array([e.share for e in mix])
    tasks: list[TaskRecord] = []
    now = 0.0
    while True:
        now += float(rng.exponential(1.0 / rate_per_s))
        if now > duration_s:
            return tasks
        entry = mix[int(rng.choice(len(mix), p=shares))]
        deadline = now + config.deadlines_s[entry.priority]
        tasks.append(
            TaskRecord(
                f"task-{len(tasks):06d}",
                entry.model,
                entry.shape,
                entry.priority,
                now,
                deadline,
                entry.chunks,
            )
        )


def class_metrics(
    tasks: Sequence[TaskRecord], completions: Sequence[Completion]
) -> dict[str, dict[str, float]]:
    """Per class: latency percentiles (ready → result, seconds), count, deadline misses."""
    by_id = {t.task_id: t for t in tasks}
    latencies: dict[str, list[float]] = {}
    misses: dict[str, int] = {}
    for done in completions:
        task = by_id[done.task_id]
        name = task.priority.value
        latencies.setdefault(name, []).append(done.finished_s - task.arrival_s)
        misses[name] = misses.get(name, 0) + int(done.deadline_missed)
    metrics: dict[str, dict[str, float]] = {}
    for name, values in latencies.items():
        array = np.array(values)
        metrics[name] = {
            "p50_s": float(np.percentile(array, 50)),
            "p95_s": float(np.percentile(array, 95)),
            "p99_s": float(np.percentile(array, 99)),
            "max_s": float(array.max()),
            "count": float(len(values)),
            "deadline_misses": float(misses[name]),
            "miss_rate": misses[name] / len(values),
        }
    return metrics
