"""Finished inference jobs waiting for the results threads, most urgent first.

The engine finishes jobs on its own threads; its done-callback (set by the coordinator when it
submits a task) pushes each one here with :meth:`FinishedJobs.push`. The results threads
(:class:`~serving.service.outcomes.ResultHandler`) take them with :meth:`FinishedJobs.take`:
by priority class rank, then deadline, then arrival. This queue and its condition belong to the
results side; the coordinator only pushes.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field

import pydicom

from serving.engine import JobResult
from serving.jobstore import TaskRow
from serving.service.runtime import SeriesSource


@dataclass
class Launched:
    """A task handed to the engine: what is needed to turn its result into an ``AIResult``.

    Attributes:
        task: The task row as started.
        attempt: The attempt the store gave this start (a result finishes only that attempt).
        source: The series the job reads (its paths, the loaded volume and its affine).
        started_mono: When it was submitted, monotonic seconds.
        headers: SOP Instance UID → (header, path) of the series as read at ingest; None after
            a restart (the results thread then reads the headers from the spool).
    """

    task: TaskRow
    attempt: int
    source: SeriesSource
    started_mono: float
    headers: Mapping[str, tuple[pydicom.Dataset, str]] | None = None


@dataclass(order=True)
class _Entry:
    rank: int
    deadline_mono: float
    sequence: int
    launched: Launched = field(compare=False)
    future: Future[JobResult] = field(compare=False)


class FinishedJobs:
    """A heap of finished jobs with its own condition.

    Thread-safe: the engine's threads push, the results threads take.
    """

    def __init__(self) -> None:
        self._heap: list[_Entry] = []
        self._sequence = itertools.count()
        self._ready = threading.Condition()

    def push(self, launched: Launched, future: Future[JobResult], deadline_mono: float) -> None:
        """Add a finished job; ``deadline_mono`` is its deadline, monotonic seconds."""
        entry = _Entry(launched.task.priority.rank, deadline_mono, 0, launched, future)
        with self._ready:
            entry.sequence = next(self._sequence)
            heapq.heappush(self._heap, entry)
            self._ready.notify_all()

    def __len__(self) -> int:
        with self._ready:
            return len(self._heap)

    def take(
        self, stopping: threading.Event, *, stat_only: bool = False, poll_s: float = 0.2
    ) -> tuple[Launched, Future[JobResult]] | None:
        """The most urgent finished job, waiting for one; None once ``stopping`` is set and
        none it may take is waiting.

        ``stat_only``: take stat jobs only (rank 0). ``poll_s``: how often ``stopping`` is
        checked while waiting, seconds.
        """
        with self._ready:
            while not self._has(stat_only) and not stopping.is_set():
                self._ready.wait(timeout=poll_s)
            if not self._has(stat_only):
                return None
            entry = heapq.heappop(self._heap)
        return entry.launched, entry.future

    def take_nowait(self) -> tuple[Launched, Future[JobResult]] | None:
        """The most urgent finished job, or None when none waits."""
        with self._ready:
            if not self._heap:
                return None
            entry = heapq.heappop(self._heap)
        return entry.launched, entry.future

    def wake(self) -> None:
        """Wake every waiting taker (so that it sees ``stopping`` at once)."""
        with self._ready:
            self._ready.notify_all()

    def _has(self, stat_only: bool) -> bool:
        return bool(self._heap) and (not stat_only or self._heap[0].rank == 0)
