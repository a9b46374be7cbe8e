"""Plain records that cross the scheduler's boundary: tasks in, batch plans and waits out.

Times are seconds on the caller's clock (monotonic, injected); the scheduler never reads a clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from router.vocabulary import PriorityClass


@dataclass(frozen=True)
class TaskRecord:
    """One inference task as the scheduler sees it: no tensors, no patient data.

    Attributes:
        task_id: Opaque unique id.
        model: ``name@version`` of the model to run.
        shape: Input shape of one item without the batch axis; only equal shapes batch together.
        priority: Priority class.
        arrival_s: When the task became ready (its volume preprocessed), seconds.
        deadline_s: Absolute deadline, seconds.
        chunks: Number of sliding-window chunks (patch batches) the task needs; 1 if unchunked.
    """

    task_id: str
    model: str
    shape: tuple[int, ...]
    priority: PriorityClass
    arrival_s: float
    deadline_s: float
    chunks: int = 1

    def __post_init__(self) -> None:
        if self.chunks < 1:
            raise ValueError(f"task {self.task_id}: chunks must be >= 1")
        if self.deadline_s < self.arrival_s:
            raise ValueError(f"task {self.task_id}: deadline before arrival")


@dataclass(frozen=True)
class WorkItem:
    """The unit a batch is made of: chunk ``index`` of task ``task_id``.

    Without chunking a whole task is one item of ``cost_chunks`` chunks' latency.
    """

    task_id: str
    index: int
    cost_chunks: int = 1


@dataclass(frozen=True)
class BatchPlan:
    """What the executor should run next on one device.

    Attributes:
        batch_id: Unique per scheduler; pass it back to ``complete``.
        model: ``name@version``.
        shape: Item input shape.
        items: Chunks (or whole tasks) in the batch, most urgent first.
        started_s: When it was handed out.
        predicted_s: Predicted service time from the latency profile, seconds.
        stat_lane: Runs on a stat lane, next to a batch already on the device.
    """

    batch_id: int
    model: str
    shape: tuple[int, ...]
    items: tuple[WorkItem, ...]
    started_s: float
    predicted_s: float
    stat_lane: bool = False

    @property
    def size(self) -> int:
        """Batch size as sent to the backend (items, each a chunk or a whole task)."""
        return len(self.items)


@dataclass(frozen=True)
class Wait:
    """Nothing to run now: ask again at ``until_s`` (or on the next submit when ``None``)."""

    until_s: float | None


@dataclass(frozen=True)
class Admission:
    """The scheduler's answer to a submit.

    Attributes:
        task_id: The task.
        predicted_finish_s: Predicted completion with the work queued ahead of it, seconds.
        at_risk: The prediction is past the deadline: raise "deadline at risk".
    """

    task_id: str
    predicted_finish_s: float
    at_risk: bool


@dataclass(frozen=True)
class Completion:
    """A task whose every chunk has run."""

    task_id: str
    finished_s: float
    deadline_missed: bool
    failed: bool = False


@dataclass(frozen=True)
class SchedulerConfig:
    """Tunables, all in seconds unless named otherwise.

    Attributes:
        deadlines_s: Default relative deadline per class (stat 60 s, urgent 5 min, routine 60 min).
        max_wait_s: Aging cap per class: a task's effective deadline is never later than
            arrival + max wait, so routine work cannot starve under overload.
        devices: Batches that may run at the same time (one per device).
        max_queue_delay_s: Longest a partial batch is held back waiting to fill.
        chunking: Split chunked tasks into chunk items (bounded non-preemption).
        stat_lanes: Stat batches that may start while every device is busy, each running next
            to the batch in progress (a second model instance / execution stream, as Triton's
            instance groups): a stat then waits for no batch at all, at the price of sharing
            the device with it for a moment. 0 keeps strictly one batch per device.
    """

    deadlines_s: dict[PriorityClass, float] = field(
        default_factory=lambda: {
            PriorityClass.STAT: 60.0,
            PriorityClass.URGENT: 300.0,
            PriorityClass.ROUTINE: 3600.0,
        }
    )
    max_wait_s: dict[PriorityClass, float] = field(
        default_factory=lambda: {
            PriorityClass.STAT: 60.0,
            PriorityClass.URGENT: 300.0,
            PriorityClass.ROUTINE: 1800.0,
        }
    )
    devices: int = 1
    max_queue_delay_s: float = 0.05
    chunking: bool = True
    stat_lanes: int = 0
