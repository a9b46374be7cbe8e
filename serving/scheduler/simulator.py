"""Discrete-event simulation: the real scheduler driven by a virtual clock.

Arrivals are :class:`TaskRecord` s; a batch takes ``service_time(plan)`` seconds (by default the
latency profile's prediction). The same :class:`Scheduler` code runs here as in the executor,
so capacity planning ("how many GPUs for this stat mix") uses the production policy.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from serving.scheduler.records import Admission, BatchPlan, Completion, TaskRecord, Wait
from serving.scheduler.scheduler import Scheduler


@dataclass
class SimulationResult:
    """What happened: every batch handed out, every completion, every admission.

    Attributes:
        batches: Batch plans in dispatch order.
        completions: Task completions in time order.
        admissions: Submit answers (deadline at risk flags).
        busy_s: Total device busy time, seconds.
        end_s: Time of the last event, seconds.
    """

    batches: list[BatchPlan] = field(default_factory=list)
    completions: list[Completion] = field(default_factory=list)
    admissions: list[Admission] = field(default_factory=list)
    busy_s: float = 0.0
    end_s: float = 0.0


def simulate(
    scheduler: Scheduler,
    arrivals: Iterable[TaskRecord],
    service_time: Callable[[BatchPlan], float] | None = None,
    *,
    max_events: int = 10_000_000,
) -> SimulationResult:
    """Run every arrival through ``scheduler`` until all tasks complete.

    Args:
        scheduler: A fresh scheduler.
        arrivals: Tasks; each is submitted at its ``arrival_s``.
        service_time: Seconds a batch takes; default its ``predicted_s``.
        max_events: Safety bound on loop iterations.
    """
    duration = service_time or (lambda plan: plan.predicted_s)
    pending = sorted(arrivals, key=lambda t: (t.arrival_s, t.task_id))
    result = SimulationResult()
    running: list[tuple[float, int]] = []  # (finish time, batch id)
    wake_at: float | None = None
    now = 0.0
    next_arrival = 0
    for _ in range(max_events):
        candidates = [t for t in (wake_at,) if t is not None]
        if next_arrival < len(pending):
            candidates.append(pending[next_arrival].arrival_s)
        if running:
            candidates.append(running[0][0])
        if not candidates:
            result.end_s = now
            return result
        now = max(now, min(candidates))
        while running and running[0][0] <= now:
            _, batch_id = heapq.heappop(running)
            result.completions.extend(scheduler.complete(batch_id, now))
        while next_arrival < len(pending) and pending[next_arrival].arrival_s <= now:
            result.admissions.append(scheduler.submit(pending[next_arrival], now))
            next_arrival += 1
        wake_at = None
        while True:
            answer = scheduler.next_batch(now)
            if isinstance(answer, Wait):
                wake_at = answer.until_s if answer.until_s is not None else None
                if wake_at is not None and wake_at <= now:
                    wake_at = None
                break
            seconds = duration(answer)
            result.batches.append(answer)
            result.busy_s += seconds
            heapq.heappush(running, (now + seconds, answer.batch_id))
    raise RuntimeError("simulation did not finish within max_events")
