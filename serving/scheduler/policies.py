"""Queue policies: how pending work is ordered and how big the next batch is.

Each policy is a small object picked by name (``fifo``, ``strict-priority``, ``edf``), in the
manner of vLLM's request-queue policies. A policy sees plain records and a latency profile and
answers either a batch size or a time to wait until; it keeps no state of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from router.vocabulary import PriorityClass
from serving.scheduler.latency import ModelLatency
from serving.scheduler.records import SchedulerConfig, TaskRecord


@dataclass(frozen=True)
class Decision:
    """A policy's answer: run ``size`` items now, or wait until ``wait_until_s``."""

    size: int = 0
    wait_until_s: float | None = None


@dataclass(frozen=True)
class Candidate:
    """A pending item offered to a policy.

    Attributes:
        task: Its task.
        cost_chunks: Chunks of work it stands for (1, or all of an unchunked task).
        ready_s: When it became schedulable, seconds.
        service_s: Predicted time to run it alone, seconds.
    """

    task: TaskRecord
    cost_chunks: int
    ready_s: float
    service_s: float


class QueuePolicy(Protocol):
    """Orders tasks and sizes batches."""

    name: str
    chunking: bool

    def key(self, task: TaskRecord, config: SchedulerConfig) -> tuple[float | int | str, ...]:
        """Sort key: smaller runs first."""
        ...

    def decide(
        self,
        group: Sequence[Candidate],
        others: Sequence[Candidate],
        latency: ModelLatency,
        now: float,
        config: SchedulerConfig,
    ) -> Decision:
        """Batch size for ``group`` (same model and shape, most urgent first), or a wait.

        ``others`` are the most urgent pending items of other groups (one per group).
        """
        ...


def batch_seconds(latency: ModelLatency, group: Sequence[Candidate], size: int) -> float:
    """Predicted service time of the first ``size`` items of ``group``, seconds."""
    return latency.seconds(sum(c.cost_chunks for c in group[:size]))


class _TritonLikeBatching:
    """Dynamic batching as Triton's batcher does it: fill to max_batch, hold at most a delay."""

    chunking = False

    def decide(
        self,
        group: Sequence[Candidate],
        others: Sequence[Candidate],
        latency: ModelLatency,
        now: float,
        config: SchedulerConfig,
    ) -> Decision:
        size = min(len(group), latency.max_batch)
        oldest = min(c.ready_s for c in group)
        # Hold a partial batch only while the device has nothing else to do.
        if size < latency.max_batch and not others and now < oldest + config.max_queue_delay_s:
            return Decision(wait_until_s=oldest + config.max_queue_delay_s)
        return Decision(size=size)


class Fifo(_TritonLikeBatching):
    """First come, first served across all classes; batches like Triton without priorities."""

    name = "fifo"

    def key(self, task: TaskRecord, config: SchedulerConfig) -> tuple[float | int | str, ...]:
        return (task.arrival_s, task.task_id)


class StrictPriority(_TritonLikeBatching):
    """Triton's dynamic batcher with priority levels: non-preemptive, no aging, no chunking."""

    name = "strict-priority"

    def key(self, task: TaskRecord, config: SchedulerConfig) -> tuple[float | int | str, ...]:
        return (task.priority.rank, task.arrival_s, task.task_id)


def effective_deadline(task: TaskRecord, config: SchedulerConfig) -> float:
    """The deadline used for ordering: never later than arrival + the class's maximum wait."""
    cap = config.max_wait_s.get(task.priority)
    return task.deadline_s if cap is None else min(task.deadline_s, task.arrival_s + cap)


class EarliestDeadlineFirst:
    """EDF across classes with aging, deadline-aware batch sizes and chunking.

    The batch is the largest that (1) still lets the most urgent item finish by its deadline,
    (2) leaves the most urgent item of every other model enough time to run right after, and
    (3) for non-stat heads, stays within ``max_blocking_s`` so a stat arrival waits at most one
    short batch. A partial batch waits to fill only while its head is not stat, no other model
    has work, and the slack allows, and never longer than ``max_queue_delay_s``.
    """

    name = "edf"
    chunking = True

    def __init__(self, max_blocking_s: float | None = None) -> None:
        self.max_blocking_s = max_blocking_s

    def key(self, task: TaskRecord, config: SchedulerConfig) -> tuple[float | int | str, ...]:
        return (effective_deadline(task, config), task.priority.rank, task.arrival_s, task.task_id)

    def decide(
        self,
        group: Sequence[Candidate],
        others: Sequence[Candidate],
        latency: ModelLatency,
        now: float,
        config: SchedulerConfig,
    ) -> Decision:
        head = group[0].task
        limit = min(len(group), latency.max_batch)
        size = self._largest_safe(group, others, latency, now, limit, head)
        if (
            size == limit
            and limit < latency.max_batch
            and head.priority is not PriorityClass.STAT
            and not others
        ):
            oldest = min(c.ready_s for c in group)
            full_s = latency.seconds(latency.max_batch)
            hold_until = min(oldest + config.max_queue_delay_s, head.deadline_s - full_s)
            if now < hold_until:
                return Decision(wait_until_s=hold_until)
        return Decision(size=size)

    def _largest_safe(
        self,
        group: Sequence[Candidate],
        others: Sequence[Candidate],
        latency: ModelLatency,
        now: float,
        limit: int,
        head: TaskRecord,
    ) -> int:
        for size in range(limit, 0, -1):
            finish = now + batch_seconds(latency, group, size)
            if finish > head.deadline_s:
                continue
            if (
                self.max_blocking_s is not None
                and head.priority is not PriorityClass.STAT
                and size > 1
                and finish - now > self.max_blocking_s
            ):
                continue
            if all(self._still_feasible(o, finish, now) for o in others):
                return size
        # Nothing meets every constraint: the head is late already or others are tight. A late
        # stat head runs alone (least lateness); anything else runs as small as blocking allows.
        return 1

    @staticmethod
    def _still_feasible(other: Candidate, finish: float, now: float) -> bool:
        own = other.service_s
        if now + own > other.task.deadline_s:
            return True  # cannot be saved by a smaller batch either
        return finish + own <= other.task.deadline_s


def make_policy(name: str, *, max_blocking_s: float | None = None) -> QueuePolicy:
    """The policy called ``name``: ``fifo``, ``strict-priority`` or ``edf``."""
    if name == "fifo":
        return Fifo()
    if name == "strict-priority":
        return StrictPriority()
    if name == "edf":
        return EarliestDeadlineFirst(max_blocking_s=max_blocking_s)
    raise ValueError(f"unknown scheduling policy {name!r}; choose fifo, strict-priority or edf")
