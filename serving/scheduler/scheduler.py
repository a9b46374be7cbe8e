"""The scheduler: a pure state machine with an injected clock.

It receives plain :class:`TaskRecord` s (``submit``), answers ``next_batch(now)`` with a
:class:`BatchPlan` or a :class:`Wait`, and is told ``complete(batch_id, now)``. It never touches
a tensor, a file or a thread, so every policy is tested deterministically with a fake clock and
the same code drives the discrete-event simulator.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import Counter
from dataclasses import dataclass, field
from itertools import count

from router.vocabulary import PriorityClass
from serving.scheduler.latency import LatencyTable
from serving.scheduler.policies import Candidate, QueuePolicy, batch_seconds, make_policy
from serving.scheduler.records import (
    Admission,
    BatchPlan,
    Completion,
    SchedulerConfig,
    TaskRecord,
    Wait,
    WorkItem,
)


class SchedulerError(ValueError):
    """A caller broke the protocol: unknown model, duplicate task id, unknown batch."""


@dataclass
class _TaskState:
    record: TaskRecord
    key: tuple[float | int | str, ...]
    pending: list[WorkItem]
    ready_s: float
    in_flight: int = 0
    failed: bool = False
    done_items: set[int] = field(default_factory=set)


class Scheduler:
    """Deadline-aware batching scheduler for several models sharing ``config.devices`` devices.

    Args:
        latency: Latency profile of every model tasks may name.
        policy: A policy object or its name (``fifo``, ``strict-priority``, ``edf``).
        config: Deadlines, aging caps, devices, batching delay.
    """

    def __init__(
        self,
        latency: LatencyTable,
        policy: QueuePolicy | str = "edf",
        config: SchedulerConfig | None = None,
    ) -> None:
        self.latency = latency
        self.policy = make_policy(policy) if isinstance(policy, str) else policy
        self.config = config or SchedulerConfig()
        self._tasks: dict[str, _TaskState] = {}
        # Tasks with pending items, sorted by the policy's key (keys end in the task id, so
        # they are unique); kept incrementally so no call sorts the whole queue.
        self._order: list[tuple[tuple[float | int | str, ...], str]] = []
        self._groups: Counter[tuple[str, tuple[int, ...]]] = Counter()
        self._pending_work_s = 0.0
        self._in_flight: dict[int, BatchPlan] = {}
        self._batch_ids = count(1)
        self.at_risk_count = 0

    # ---- inputs --------------------------------------------------------------------------------

    def submit(self, task: TaskRecord, now: float) -> Admission:
        """Queue ``task``; the answer predicts its finish and flags a deadline at risk."""
        if task.task_id in self._tasks:
            raise SchedulerError(f"task {task.task_id} submitted twice")
        if task.model not in self.latency:
            raise SchedulerError(f"task {task.task_id}: no latency profile for {task.model}")
        chunked = self.policy.chunking and self.config.chunking
        items = (
            [WorkItem(task.task_id, i) for i in range(task.chunks)]
            if chunked
            else [WorkItem(task.task_id, 0, cost_chunks=task.chunks)]
        )
        state = _TaskState(task, self.policy.key(task, self.config), items, ready_s=now)
        finish = self._predict_finish(state, now)
        self._tasks[task.task_id] = state
        insort(self._order, (state.key, task.task_id))
        self._groups[self._group(state)] += 1
        self._pending_work_s += self._work_s(state)
        at_risk = finish > task.deadline_s
        self.at_risk_count += at_risk
        return Admission(task.task_id, finish, at_risk)

    def next_batch(self, now: float, *, stat_lane: bool = False) -> BatchPlan | Wait:
        """The batch a free device should run now, or how long to wait before asking again.

        With ``stat_lane`` the caller is a stat lane (see ``SchedulerConfig.stat_lanes``): it
        gets a batch only while every device is busy and a lane is free, and then only stat
        items: the first stat task in the queue's order and the stat items batched with it,
        unless a task ahead of it has an earlier deadline (that one runs on the device next).
        Routine work that aging moved ahead of a stat keeps its place on the device; the lane
        still serves the stat next to it.
        """
        lanes = sum(1 for p in self._in_flight.values() if p.stat_lane)
        on_devices = len(self._in_flight) - lanes
        if not self._order:
            return Wait(None)
        if stat_lane:
            if lanes >= self.config.stat_lanes or on_devices < self.config.devices:
                return Wait(None)
        elif on_devices >= self.config.devices:
            return Wait(None)
        head = self._tasks[self._order[0][1]]
        if stat_lane:
            lane_head = self._lane_head()
            if lane_head is None:
                return Wait(None)
            head = lane_head
        group_key = self._group(head)
        model_latency = self.latency.model(head.record.model)
        group, others = self._scan(group_key, model_latency.max_batch)
        if stat_lane:
            group = [c for c in group if c.task.priority is PriorityClass.STAT]
        decision = self.policy.decide(group, others, model_latency, now, self.config)
        if decision.size == 0:
            return Wait(decision.wait_until_s)
        chosen = group[: decision.size]
        items = tuple(self._take(c) for c in chosen)
        plan = BatchPlan(
            batch_id=next(self._batch_ids),
            model=head.record.model,
            shape=head.record.shape,
            items=items,
            started_s=now,
            predicted_s=batch_seconds(model_latency, chosen, len(chosen)),
            stat_lane=stat_lane,
        )
        self._in_flight[plan.batch_id] = plan
        return plan

    def complete(self, batch_id: int, now: float, *, failed: bool = False) -> list[Completion]:
        """Record that batch ``batch_id`` finished (or failed) at ``now``; finished tasks out."""
        plan = self._in_flight.pop(batch_id, None)
        if plan is None:
            raise SchedulerError(f"batch {batch_id} is not in flight")
        finished: list[Completion] = []
        for item in plan.items:
            state = self._tasks[item.task_id]
            state.in_flight -= 1
            state.done_items.add(item.index)
            if failed and not state.failed:
                state.failed = True
                if state.pending:
                    self._pending_work_s -= self._work_s(state)
                    self._dequeue(state)
                    state.pending.clear()
            if not state.pending and state.in_flight == 0:
                record = state.record
                finished.append(
                    Completion(record.task_id, now, now > record.deadline_s, failed=state.failed)
                )
                del self._tasks[item.task_id]
        return finished

    # ---- observation ---------------------------------------------------------------------------

    @property
    def queued_tasks(self) -> int:
        """Tasks with at least one item not yet handed out."""
        return len(self._order)

    @property
    def queue_order(self) -> tuple[str, ...]:
        """Task ids with items not yet handed out, in the policy's order (most urgent first)."""
        return tuple(task_id for _, task_id in self._order)

    @property
    def in_flight(self) -> tuple[BatchPlan, ...]:
        """Batches handed out and not yet completed."""
        return tuple(self._in_flight.values())

    def queued_by_class(self) -> dict[str, int]:
        """Queue depth per priority class (tasks), for metrics."""
        depth: dict[str, int] = {}
        for state in self._tasks.values():
            if state.pending:
                name = state.record.priority.value
                depth[name] = depth.get(name, 0) + 1
        return depth

    # ---- internals -----------------------------------------------------------------------------

    def _lane_head(self) -> _TaskState | None:
        """The first stat task in queue order, unless a task ahead has an earlier deadline."""
        earliest_ahead = float("inf")
        for _, task_id in self._order:
            state = self._tasks[task_id]
            if state.record.priority is PriorityClass.STAT:
                return state if state.record.deadline_s <= earliest_ahead else None
            earliest_ahead = min(earliest_ahead, state.record.deadline_s)
        return None

    @staticmethod
    def _group(state: _TaskState) -> tuple[str, tuple[int, ...]]:
        return (state.record.model, state.record.shape)

    def _scan(
        self, group_key: tuple[str, tuple[int, ...]], max_items: int
    ) -> tuple[list[Candidate], list[Candidate]]:
        """Walk the queue in order: the head group's first ``max_items`` items, and the most
        urgent item of every other group; stop as soon as both are known."""
        group: list[Candidate] = []
        others: dict[tuple[str, tuple[int, ...]], Candidate] = {}
        other_groups = sum(1 for key, n in self._groups.items() if n and key != group_key)
        for _, task_id in self._order:
            state = self._tasks[task_id]
            key = self._group(state)
            if key == group_key:
                for item in state.pending:
                    if len(group) < max_items:
                        group.append(self._candidate(state, item))
            elif key not in others:
                others[key] = self._candidate(state, state.pending[0])
            if len(group) >= max_items and len(others) >= other_groups:
                break
        return group, list(others.values())

    def _candidate(self, state: _TaskState, item: WorkItem) -> Candidate:
        service = self.latency.seconds(state.record.model, item.cost_chunks)
        return Candidate(state.record, item.cost_chunks, state.ready_s, service)

    def _per_chunk_s(self, model: str) -> float:
        """Amortized seconds per chunk at full batches."""
        profile = self.latency.model(model)
        return profile.seconds(profile.max_batch) / profile.max_batch

    def _work_s(self, state: _TaskState) -> float:
        """Amortized seconds of the task's pending items."""
        chunks = sum(item.cost_chunks for item in state.pending)
        return self._per_chunk_s(state.record.model) * chunks

    def _dequeue(self, state: _TaskState) -> None:
        """Drop a task whose items are all handed out from the ordered queue."""
        index = bisect_left(self._order, (state.key, state.record.task_id))
        del self._order[index]
        self._groups[self._group(state)] -= 1

    def _take(self, candidate: Candidate) -> WorkItem:
        state = self._tasks[candidate.task.task_id]
        item = state.pending.pop(0)
        state.in_flight += 1
        self._pending_work_s -= self._per_chunk_s(state.record.model) * item.cost_chunks
        if not state.pending:
            self._dequeue(state)
        return item

    def _predict_finish(self, state: _TaskState, now: float) -> float:
        """Finish estimate: work queued ahead (amortized at full batches) spread over devices,
        plus the earliest in-flight completion, plus the task's own chunks at batch size 1."""
        # Sum the shorter side of the ordered queue: urgent newcomers sit near the front,
        # routine ones near the back.
        position = bisect_left(self._order, (state.key, state.record.task_id))
        if position <= len(self._order) - position:
            ahead_s = sum(self._work_s(self._tasks[t]) for _, t in self._order[:position])
        else:
            behind_s = sum(self._work_s(self._tasks[t]) for _, t in self._order[position:])
            ahead_s = self._pending_work_s - behind_s
        busy_until = [
            p.started_s + p.predicted_s for p in self._in_flight.values() if not p.stat_lane
        ]
        free_at = max(now, min(busy_until)) if len(busy_until) >= self.config.devices else now
        own_s = sum(
            self.latency.seconds(state.record.model, item.cost_chunks) for item in state.pending
        )
        return free_at + ahead_s / self.config.devices + own_s
