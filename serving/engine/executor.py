"""The executor around the scheduler: preprocessing workers, one inference loop per device,
postprocessing, bounded queues and a timestamp per stage.

Preprocessing of the next tasks overlaps inference of the current batch: preprocessing workers,
device loops and postprocessing run on their own threads (numpy, torch and ONNX Runtime release
the GIL in their kernels, and threads share volumes without copying them between processes).
The scheduler stays a pure state machine: the engine calls it under one lock and does all
waiting itself, with times read from the injected clock.

Bounded non-preemption: a model entry with ``chunking`` has each input split into
sliding-window patches (:mod:`models.chunking`); its task reaches the scheduler with
one chunk per patch and item shape ``(C, *roi_size)``. A batch is built from the patches its
work items name (items of several tasks of one model stack together); the outputs are merged
per task on the postprocessing thread, and the task is postprocessed once its last patch is
merged. A work item that stands for several chunks (a policy that does not chunk hands out a
whole task as one item) runs all its patches back to back within that one batch, in backend
calls of at most ``max_batch`` patches, so such a policy blocks for the whole volume, as it
would unchunked. A failed batch fails each of its tasks once.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from typing import Protocol

import numpy as np

from models.backends.base import Backend, RequestContext
from models.chunking import ChunkingError, PatchMerger, pad_volume, patch, plan_windows
from models.domain import DomainVerdict, OutOfDomainError
from router.vocabulary import PriorityClass
from serving.engine.jobs import (
    EngineBusy,
    EngineStopped,
    InferenceJob,
    JobResult,
    ModelEntry,
    StageTimes,
)
from serving.scheduler import BatchPlan, Scheduler, TaskRecord, Wait

log = logging.getLogger(__name__)

_STAT = PriorityClass.STAT


class Urgency(Protocol):
    """Stat priority across threads that share the interpreter and the cores."""

    def stat_stage(self) -> AbstractContextManager[None]:
        """Mark stat work under way for the duration of the ``with`` block."""
        ...

    def step_aside(self) -> float:
        """Wait (bounded) while stat work is under way; seconds waited."""
        ...


class _Job:
    """Mutable bookkeeping of one job inside the engine.

    ``padded`` and ``merger`` are set for a chunked job before it is ready; device threads only
    read ``padded`` and the merger's immutable plan, and only the postprocessing thread adds to
    the merger. ``finished`` turns true once, under the engine lock, when the future is
    answered.
    """

    def __init__(self, job: InferenceJob, deadline_s: float, received_s: float) -> None:
        self.job = job
        self.deadline_s = deadline_s
        self.times = StageTimes(received_s=received_s)
        self.future: Future[JobResult] = Future()
        self.input: np.ndarray | None = job.prepared
        self.affine: np.ndarray | None = job.affine_ras
        self.padded: np.ndarray | None = None
        self.merger: PatchMerger | None = None
        self.finished = False

    @property
    def chunks(self) -> int:
        """Patches the input is split into (1 when it runs whole)."""
        return 1 if self.merger is None else self.merger.plan.count

    def item(self, window: int | None) -> np.ndarray:
        """The backend input of one batch item: patch ``window``, or the whole input."""
        if window is None or self.merger is None or self.padded is None:
            assert self.input is not None
            return self.input
        return patch(self.padded, self.merger.plan, window)


class Engine:
    """Runs inference jobs through preprocessing, the scheduler, backends and postprocessing.

    Args:
        models: Loaded model entries by ``name@version``.
        backends: One backend per device; each runs one batch at a time.
        scheduler: The scheduler (its ``config.devices`` must equal ``len(backends)``).
        clock: Monotonic clock in seconds (injected).
        preprocess_workers: Preprocessing threads.
        max_pending: Jobs accepted but not finished before ``submit`` refuses (backpressure).
        urgency: Stat priority across the service's Python stages (the service's
            :class:`~serving.service.stat_gate.StatGate`): preprocessing and running a stat
            job are stat stages; background preprocessing steps aside for stat stages first.
        background_yields_device: Background batches step aside for stat stages too. For
            backends that compute on the CPU the service's stat stages run on: there a
            background batch takes the cores a stat study's routing, SR and delivery need.
    """

    def __init__(
        self,
        models: Mapping[str, ModelEntry],
        backends: Sequence[Backend],
        scheduler: Scheduler,
        *,
        clock: Callable[[], float],
        preprocess_workers: int = 2,
        max_pending: int = 256,
        urgency: Urgency | None = None,
        background_yields_device: bool = False,
    ) -> None:
        if scheduler.config.devices != len(backends):
            raise ValueError("scheduler.config.devices must equal the number of backends")
        self.models = dict(models)
        self.backends = list(backends)
        self.scheduler = scheduler
        self.clock = clock
        self.max_pending = max_pending
        self.urgency = urgency
        self.background_yields_device = background_yields_device
        self._lock = threading.Condition()
        self._jobs: dict[str, _Job] = {}
        self._preprocess_heap: list[tuple[float, int, str]] = []
        self._sequence = itertools.count()
        self._stopping = False
        self._post = ThreadPoolExecutor(max_workers=1, thread_name_prefix="postprocess")
        self._threads = [
            threading.Thread(target=self._preprocess_loop, name=f"preprocess-{i}", daemon=True)
            for i in range(preprocess_workers)
        ]
        if scheduler.config.stat_lanes:
            # With stat lanes, one more preprocessing worker takes stat jobs only: a stat does
            # not wait for the workers busy decoding routine volumes either.
            self._threads.append(
                threading.Thread(
                    target=self._preprocess_loop, args=(True,), name="preprocess-stat", daemon=True
                )
            )
        self._threads += [
            threading.Thread(target=self._device_loop, args=(d,), name=f"device-{d}", daemon=True)
            for d in range(len(backends))
        ]
        # Stat lanes run stat batches next to a busy device's batch, on its backend (one
        # backend accepts concurrent calls: ONNX Runtime sessions, TorchScript modules and
        # Triton clients are thread-safe), so a stat never waits for a routine batch to end.
        self._threads += [
            threading.Thread(
                target=self._device_loop,
                args=(lane % len(backends), True),
                name=f"stat-lane-{lane}",
                daemon=True,
            )
            for lane in range(scheduler.config.stat_lanes)
        ]
        for thread in self._threads:
            thread.start()

    # ---- public --------------------------------------------------------------------------------

    def submit(self, job: InferenceJob) -> Future[JobResult]:
        """Accept ``job``; its result arrives on the returned future.

        Raises:
            EngineBusy: ``max_pending`` jobs are in the engine already (nothing was accepted).
            EngineStopped: The engine is stopped.
            KeyError: Unknown model.
            ChunkingError: A prepared input cannot be split into the model's windows.
        """
        if job.model not in self.models:
            raise KeyError(f"unknown model {job.model}")
        if job.volume is None and job.prepared is None:
            raise ValueError(f"job {job.job_id}: give a volume or a prepared input")
        chunked = None
        if job.prepared is not None:
            chunked = self._split(self.models[job.model], job.prepared)
        with self._lock:
            if self._stopping:
                raise EngineStopped("engine stopped")
            if len(self._jobs) >= self.max_pending:
                raise EngineBusy(f"{len(self._jobs)} jobs pending; retry later")
            if job.job_id in self._jobs:
                raise ValueError(f"job {job.job_id} submitted twice")
            now = self.clock()
            default = self.scheduler.config.deadlines_s[job.priority]
            deadline = job.deadline_s if job.deadline_s is not None else now + default
            state = _Job(job, deadline, now)
            if chunked is not None:
                state.padded, state.merger = chunked
            self._jobs[job.job_id] = state
            if state.input is None:
                heapq.heappush(self._preprocess_heap, (deadline, next(self._sequence), job.job_id))
            else:
                self._make_ready(state, now)
            self._lock.notify_all()
        return state.future

    @property
    def pending(self) -> int:
        """Jobs accepted and not finished."""
        with self._lock:
            return len(self._jobs)

    @property
    def postprocessing(self) -> ThreadPoolExecutor:
        """The one thread that finishes jobs (merges windows, postprocesses, answers futures)."""
        return self._post

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop all threads; unfinished jobs fail with EngineStopped."""
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        for thread in self._threads:
            thread.join(timeout=timeout_s)
        self._post.shutdown(wait=True)
        with self._lock:
            for state in self._jobs.values():
                if not state.finished:
                    state.finished = True
                    state.future.set_exception(EngineStopped("engine stopped"))
            self._jobs.clear()

    # ---- preprocessing stage -------------------------------------------------------------------

    def _next_to_preprocess(self, stat_only: bool) -> str | None:
        """Take the most urgent job waiting for preprocessing (caller holds the lock); with
        ``stat_only`` the most urgent stat job. None: nothing to take."""
        heap = self._preprocess_heap
        if not stat_only:
            return heapq.heappop(heap)[2] if heap else None
        stats = [i for i, e in enumerate(heap) if self._jobs[e[2]].job.priority is _STAT]
        if not stats:
            return None
        index = min(stats, key=lambda i: heap[i])
        entry = heap[index]
        heap[index] = heap[-1]
        heap.pop()
        heapq.heapify(heap)
        return entry[2]

    def _preprocess_loop(self, stat_only: bool = False) -> None:
        while True:
            with self._lock:
                job_id = None
                while not self._stopping:
                    job_id = self._next_to_preprocess(stat_only)
                    if job_id is not None:
                        break
                    self._lock.wait()
                if self._stopping or job_id is None:
                    return
                state = self._jobs[job_id]
            stat = state.job.priority is _STAT
            if not stat:
                self._step_aside()
            entry = self.models[state.job.model]
            try:
                with self._stage(stat):
                    state.times.preprocess_started_s = self.clock()
                    state.input, state.affine = entry.prepare(state.job.volume)
            except OutOfDomainError as out:  # not the model's input: no inference, not a failure
                self._finish(state, None, None, 0, not_applicable=out.verdict)
                continue
            # The model's own preprocessing may raise any type: a bad volume fails its job only.
            except Exception as error:  # noqa: BLE001
                self._finish(state, None, f"preprocessing failed: {error}", 0)
                continue
            try:
                chunked = self._split(entry, state.input)
            except ChunkingError as error:
                self._finish(state, None, f"chunking failed: {error}", 0)
                continue
            if chunked is not None:
                state.padded, state.merger = chunked
            with self._lock:
                self._make_ready(state, self.clock())
                self._lock.notify_all()

    @staticmethod
    def _split(entry: ModelEntry, array: np.ndarray) -> tuple[np.ndarray, PatchMerger] | None:
        """The padded input and an empty merger of a chunked model's input (None: unchunked).

        Runs outside the lock (padding copies the volume when an axis is shorter than the roi).

        Raises:
            ChunkingError: ``array`` is not ``(C, *spatial)`` with the roi's spatial rank.
        """
        if entry.chunking is None:
            return None
        plan = plan_windows(np.shape(array)[1:], entry.chunking)
        return pad_volume(array, plan), PatchMerger(plan)

    def _make_ready(self, state: _Job, now: float) -> None:
        """Hand a preprocessed job to the scheduler (caller holds the lock)."""
        state.times.ready_s = now
        entry = self.models[state.job.model]
        admission = self.scheduler.submit(
            TaskRecord(
                state.job.job_id,
                state.job.model,
                entry.item_shape,
                state.job.priority,
                now,
                max(state.deadline_s, now),
                chunks=state.chunks,
            ),
            now,
        )
        if admission.at_risk:
            log.warning(
                "deadline at risk: job %s (%s) predicted to finish %.1f s after its deadline",
                state.job.job_id,
                state.job.priority.value,
                admission.predicted_finish_s - state.deadline_s,
            )

    # ---- inference stage -----------------------------------------------------------------------

    def _step_aside(self) -> None:
        """Let stat stages under way finish first (background work, between steps)."""
        if self.urgency is not None:
            self.urgency.step_aside()

    def _stat_queued(self) -> bool:
        """A stat task waits for a device (then nothing steps aside: it may be next)."""
        with self._lock:
            return self.scheduler.queued_by_class().get(_STAT.value, 0) > 0

    def _stage(self, stat: bool) -> AbstractContextManager[None]:
        """A stat stage for stat work; nothing for background work."""
        return self.urgency.stat_stage() if stat and self.urgency is not None else nullcontext()

    def _device_loop(self, device: int, stat_lane: bool = False) -> None:
        backend = self.backends[device]
        while True:
            if self.background_yields_device and not stat_lane and not self._stat_queued():
                self._step_aside()
            with self._lock:
                plan = self._next_plan(stat_lane)
                if plan is None:
                    return
                batch_states = [self._jobs[item.task_id] for item in plan.items]
                started = self.clock()
                for state in batch_states:
                    if state.times.batch_started_s is None:  # a chunked job's first batch
                        state.times.batch_started_s = started
            with self._stage(any(state.job.priority is _STAT for state in batch_states)):
                self._run_batch(backend, plan, batch_states)

    def _next_plan(self, stat_lane: bool = False) -> BatchPlan | None:
        """Wait (holding the condition) until the scheduler hands out a batch or we stop."""
        while not self._stopping:
            answer = self.scheduler.next_batch(self.clock(), stat_lane=stat_lane)
            if isinstance(answer, BatchPlan):
                return answer
            assert isinstance(answer, Wait)
            timeout = None if answer.until_s is None else max(answer.until_s - self.clock(), 0)
            self._lock.wait(timeout=timeout)
        return None

    def _run_batch(self, backend: Backend, plan: BatchPlan, states: list[_Job]) -> None:
        entry = self.models[plan.model]
        # One unit per backend batch item: (job, patch index) or (job, None) for a whole input.
        units: list[tuple[_Job, int | None]] = []
        for item, state in zip(plan.items, states, strict=True):
            if state.merger is None:
                units.append((state, None))
            else:
                units += [(state, w) for w in range(item.index, item.index + item.cost_chunks)]
        most_urgent = min(states, key=lambda s: s.deadline_s)
        priority = min((s.job.priority for s in states), key=lambda p: p.rank)
        step = max(entry.backend_model.max_batch, 1)
        error: str | None = None
        results: list[tuple[_Job, int | None, dict[str, np.ndarray]]] = []
        for first in range(0, len(units), step):
            part = units[first : first + step]
            batch = np.stack([state.item(window) for state, window in part])
            context = RequestContext(
                f"batch-{plan.batch_id}",
                priority,
                max(most_urgent.deadline_s - self.clock(), 0.0),
            )
            try:
                outputs = backend.infer(entry.backend_model, batch, context)
            # A backend may raise any type: the batch fails, its jobs report it, the engine goes on.
            except Exception as exc:  # noqa: BLE001
                error = f"inference failed: {exc}"
                break
            for k, (state, window) in enumerate(part):
                results.append((state, window, {name: out[k] for name, out in outputs.items()}))
        finished = self.clock()
        with self._lock:
            self.scheduler.complete(plan.batch_id, finished, failed=error is not None)
            self._lock.notify_all()
        if error is not None:
            # The scheduler dropped every task of a failed batch: each fails here, once.
            for state in dict.fromkeys(states):
                self._post.submit(self._finish, state, None, error, plan.size, finished)
            return
        for state, window, outputs in results:
            if window is None:
                self._post.submit(self._finish, state, outputs, None, plan.size, finished)
            else:
                self._post.submit(self._merge, state, window, outputs, plan.size, finished)

    # ---- postprocessing stage ------------------------------------------------------------------

    def _merge(
        self,
        state: _Job,
        window: int,
        outputs: dict[str, np.ndarray],
        size: int,
        finished: float,
    ) -> None:
        """Merge one patch's outputs; postprocess the job when its last patch is in."""
        merger = state.merger
        if state.finished or merger is None:
            return  # an earlier chunk's failure answered the job already
        try:
            merger.add(window, outputs)
            if not merger.complete:
                return
            merged = merger.result()
        except ChunkingError as exc:
            self._finish(state, None, f"merging chunks failed: {exc}", size, finished)
            return
        self._finish(state, merged, None, size, finished)

    def _finish(
        self,
        state: _Job,
        outputs: dict[str, np.ndarray] | None,
        error: str | None,
        size: int,
        inferred_s: float | None = None,
        *,
        not_applicable: DomainVerdict | None = None,
    ) -> None:
        """Postprocess and answer the job's future, once (later calls for it do nothing).

        ``inferred_s`` is when its (last) batch finished; None when it never reached one.
        ``not_applicable``: the input is outside the model's domain; nothing ran.
        """
        findings: list[object] = []
        entry = self.models[state.job.model]
        if outputs is not None and entry.postprocess is not None:
            try:
                findings = list(entry.postprocess(outputs, state.affine))
            # The model's own postprocessing may raise any type: its job fails, the engine goes on.
            except Exception as exc:  # noqa: BLE001
                error = f"postprocessing failed: {exc}"
        with self._lock:
            if state.finished:  # answered already (a failed chunk, or stop)
                return
            state.finished = True
            if inferred_s is not None:
                state.times.inferred_s = inferred_s
            done = self.clock()
            state.times.done_s = done
            self._jobs.pop(state.job.job_id, None)
            self._lock.notify_all()
        result = JobResult(
            job_id=state.job.job_id,
            model=state.job.model,
            outputs=outputs if error is None else None,
            findings=findings,
            error=error,
            deadline_missed=done > state.deadline_s,
            batch_size=size,
            times=state.times,
            chunks=state.chunks,
            not_applicable=not_applicable,
        )
        state.future.set_result(result)
