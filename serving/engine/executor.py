"""The executor around the scheduler: preprocessing workers, one inference loop per device,
postprocessing, bounded queues and a timestamp per stage.

Preprocessing of the next tasks overlaps inference of the current batch: preprocessing workers,
device loops and postprocessing run on their own threads (numpy, torch and ONNX Runtime release
the GIL in their kernels, and threads share volumes without copying them between processes).
The scheduler stays a pure state machine: the engine calls it under one lock and does all
waiting itself, with times read from the injected clock.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from serving.backends.base import Backend, RequestContext
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


class _Job:
    """Mutable bookkeeping of one job inside the engine."""

    def __init__(self, job: InferenceJob, deadline_s: float, received_s: float) -> None:
        self.job = job
        self.deadline_s = deadline_s
        self.times = StageTimes(received_s=received_s)
        self.future: Future[JobResult] = Future()
        self.input: np.ndarray | None = job.prepared
        self.affine: np.ndarray | None = job.affine_ras


class Engine:
    """Runs inference jobs through preprocessing, the scheduler, backends and postprocessing.

    Args:
        models: Loaded model entries by ``name@version``.
        backends: One backend per device; each runs one batch at a time.
        scheduler: The scheduler (its ``config.devices`` must equal ``len(backends)``).
        clock: Monotonic clock in seconds (injected).
        preprocess_workers: Preprocessing threads.
        max_pending: Jobs accepted but not finished before ``submit`` refuses (backpressure).
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
    ) -> None:
        if scheduler.config.devices != len(backends):
            raise ValueError("scheduler.config.devices must equal the number of backends")
        self.models = dict(models)
        self.backends = list(backends)
        self.scheduler = scheduler
        self.clock = clock
        self.max_pending = max_pending
        self._lock = threading.Condition()
        self._jobs: dict[str, _Job] = {}
        self._preprocess_heap: list[tuple[float, int, str]] = []
        self._sequence = itertools.count()
        self._stopping = False
        self._post = ThreadPoolExecutor(max_workers=1, thread_name_prefix="postprocess")
        self._threads = [
            threading.Thread(target=self._preprocess_loop, name=f"preprocess-{i}", daemon=True)
            for i in range(preprocess_workers)
        ] + [
            threading.Thread(target=self._device_loop, args=(d,), name=f"device-{d}", daemon=True)
            for d in range(len(backends))
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
        """
        if job.model not in self.models:
            raise KeyError(f"unknown model {job.model}")
        if job.volume is None and job.prepared is None:
            raise ValueError(f"job {job.job_id}: give a volume or a prepared input")
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
                if not state.future.done():
                    state.future.set_exception(EngineStopped("engine stopped"))
            self._jobs.clear()

    # ---- preprocessing stage -------------------------------------------------------------------

    def _preprocess_loop(self) -> None:
        while True:
            with self._lock:
                while not self._preprocess_heap and not self._stopping:
                    self._lock.wait()
                if self._stopping:
                    return
                _, _, job_id = heapq.heappop(self._preprocess_heap)
                state = self._jobs[job_id]
                state.times.preprocess_started_s = self.clock()
            entry = self.models[state.job.model]
            try:
                state.input, state.affine = entry.prepare(state.job.volume)
            except Exception as error:  # a bad volume fails its own job only
                self._finish(state, None, f"preprocessing failed: {error}", 0)
                continue
            with self._lock:
                self._make_ready(state, self.clock())
                self._lock.notify_all()

    def _make_ready(self, state: _Job, now: float) -> None:
        """Hand a preprocessed job to the scheduler (caller holds the lock)."""
        state.times.ready_s = now
        entry = self.models[state.job.model]
        admission = self.scheduler.submit(
            TaskRecord(
                state.job.job_id,
                state.job.model,
                entry.input_shape,
                state.job.priority,
                now,
                max(state.deadline_s, now),
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

    def _device_loop(self, device: int) -> None:
        backend = self.backends[device]
        while True:
            with self._lock:
                plan = self._next_plan()
                if plan is None:
                    return
                batch_states = [self._jobs[item.task_id] for item in plan.items]
                started = self.clock()
                for state in batch_states:
                    state.times.batch_started_s = started
            self._run_batch(backend, plan, batch_states)

    def _next_plan(self) -> BatchPlan | None:
        """Wait (holding the condition) until the scheduler hands out a batch or we stop."""
        while not self._stopping:
            answer = self.scheduler.next_batch(self.clock())
            if isinstance(answer, BatchPlan):
                return answer
            assert isinstance(answer, Wait)
            timeout = None if answer.until_s is None else max(answer.until_s - self.clock(), 0)
            self._lock.wait(timeout=timeout)
        return None

    def _run_batch(self, backend: Backend, plan: BatchPlan, states: list[_Job]) -> None:
        entry = self.models[plan.model]
        batch = np.stack([s.input for s in states if s.input is not None])
        most_urgent = min(states, key=lambda s: s.deadline_s)
        context = RequestContext(
            f"batch-{plan.batch_id}",
            min((s.job.priority for s in states), key=lambda p: p.rank),
            max(most_urgent.deadline_s - self.clock(), 0.0),
        )
        error: str | None = None
        outputs: Mapping[str, np.ndarray] = {}
        try:
            outputs = backend.infer(entry.backend_model, batch, context)
        except Exception as exc:  # the batch fails; its jobs report it, the engine goes on
            error = f"inference failed: {exc}"
        finished = self.clock()
        with self._lock:
            self.scheduler.complete(plan.batch_id, finished, failed=error is not None)
            self._lock.notify_all()
        for index, state in enumerate(states):
            state.times.inferred_s = finished
            item = None if error else {name: out[index] for name, out in outputs.items()}
            self._post.submit(self._finish, state, item, error, plan.size)

    # ---- postprocessing stage ------------------------------------------------------------------

    def _finish(
        self, state: _Job, outputs: dict[str, np.ndarray] | None, error: str | None, size: int
    ) -> None:
        findings: list[object] = []
        entry = self.models[state.job.model]
        if outputs is not None and entry.postprocess is not None:
            try:
                findings = list(entry.postprocess(outputs, state.affine))
            except Exception as exc:
                error = f"postprocessing failed: {exc}"
        done = self.clock()
        state.times.done_s = done
        result = JobResult(
            job_id=state.job.job_id,
            model=state.job.model,
            outputs=outputs if error is None else None,
            findings=findings,
            error=error,
            deadline_missed=done > state.deadline_s,
            batch_size=size,
            times=state.times,
        )
        with self._lock:
            self._jobs.pop(state.job.job_id, None)
            self._lock.notify_all()
        state.future.set_result(result)
