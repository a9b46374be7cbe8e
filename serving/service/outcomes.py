"""The results side of the coordinator: finished jobs → ``AIResult`` → deliveries → task done.

The engine's done-callback (set by the coordinator when it submits a task) pushes every
finished job onto the coordinator's results heap, most urgent first (priority class rank, then
deadline, then arrival). The results threads (:func:`run_results`, behind
:meth:`Coordinator.run_results <serving.service.coordinator.Coordinator.run_results>`) pop them
and, for each one (:func:`result_ready`):

- a failed job fails its task (conditional on its attempt), is audited and counted, and the
  study's AI status becomes *unavailable*;
- a successful one becomes an ``AIResult`` placed on the source instances (the mask is added
  later, by delivery, for the SEG only); its deliveries are enqueued *before* the task is
  finished, so a crash in between re-runs the task and enqueues the same items again
  (deterministic objects, deduplicated keys) instead of losing them;
- the task is finished exactly once: a second completion of the same attempt is audited and
  ignored; latency and deadline misses are measured, the worklist updated, and the study closed
  (*done*) when no task of it is queued or running.

Any error while turning a result into deliveries fails the task (the study's AI status becomes
*unavailable*) rather than killing the results thread.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import threading
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING

import pydicom

from models.manifest import Manifest, Task
from router.result import AIResult, Mode
from router.vocabulary import PriorityClass
from router.worklist import AIStatus
from serving.jobstore import TaskRow
from serving.service.records import result_json, summary_of
from serving.service.results import build_result, mask_on_source, source_instance, study_identity

if TYPE_CHECKING:
    from concurrent.futures import Future

    from serving.engine import JobResult
    from serving.service.coordinator import Coordinator, _Launched

log = logging.getLogger(__name__)


def run_results(
    coordinator: Coordinator, stopping: threading.Event, *, stat_only: bool = False
) -> None:
    """The results thread: finished jobs become results, most urgent class first.

    Object building and delivery enqueueing take tenths of a second per result on a small
    CPU; doing them here keeps the coordinator loop (assembly, routing) responsive, and a
    stat result never waits behind a queue of routine ones. With ``stat_only`` the thread
    takes stat results only: the service runs one such thread next to the general one, so
    a stat result does not even wait for the routine result in hand. Returns once
    ``stopping`` is set and no result it may take is waiting (checked every 0.2 s).
    """

    def ready() -> bool:
        results = coordinator._results
        return bool(results) and (not stat_only or results[0][0] == 0)

    while True:
        with coordinator._results_ready:
            while not ready() and not stopping.is_set():
                coordinator._results_ready.wait(timeout=0.2)
            if not ready():
                return
            _, _, _, launched, future = heapq.heappop(coordinator._results)
        _handle_result(coordinator, launched, future)


def drain_results(coordinator: Coordinator) -> None:
    """Handle every finished job now (tests, shutdown)."""
    while True:
        with coordinator.lock:
            if not coordinator._results:
                return
            _, _, _, launched, future = heapq.heappop(coordinator._results)
        _handle_result(coordinator, launched, future)


def _handle_result(
    coordinator: Coordinator, launched: _Launched, future: Future[JobResult]
) -> None:
    """Turn one finished job into a result; any error fails its task instead.

    A stat result is a stat stage up to its SR and messages (see
    :class:`~serving.service.stat_gate.StatGate`); any other result first steps aside for
    the stat stages under way.
    """
    if launched.task.priority is not PriorityClass.STAT:
        coordinator.gate.step_aside()
    try:
        coordinator.result_ready(launched, future.result())
    except Exception as error:
        log.exception("turning a result into deliveries failed")
        coordinator.store.fail_task(
            launched.task.task_id,
            launched.attempt,
            f"result handling failed: {type(error).__name__}",
        )
        coordinator._ai_status(launched.task.study_instance_uid, AIStatus.UNAVAILABLE)
        coordinator.store.finish_study(launched.task.study_instance_uid)


def result_ready(coordinator: Coordinator, launched: _Launched, job: JobResult) -> None:
    """Finish a task exactly once and hand its result to delivery."""
    store, metrics = coordinator.store, coordinator.metrics
    task = launched.task
    if job.error is not None:
        store.fail_task(task.task_id, launched.attempt, job.error)
        store.audit(
            "task-failed",
            study_uid=task.study_instance_uid,
            task_id=task.task_id,
            detail={"error": job.error},
        )
        metrics.inc("statlane_tasks_failed_total", model=task.model)
        coordinator._ai_status(task.study_instance_uid, AIStatus.UNAVAILABLE)
        store.finish_study(task.study_instance_uid)  # a failed task ends too
        return
    assert coordinator.runtime is not None
    manifest = coordinator.runtime.manifests[task.model]
    stage: AbstractContextManager[None] = (
        coordinator.gate.stat_stage() if task.priority is PriorityClass.STAT else nullcontext()
    )
    with stage:
        ai, with_mask = _ai_result(coordinator, task, manifest, launched, job)
    document = result_json(ai, job)
    # Deliveries are enqueued before the task is finished: a crash in between re-runs the
    # task and enqueues the same items again (deterministic objects, deduplicated keys),
    # while a crash after finishing can no longer lose them.
    order = coordinator.store.order_context(ai.study.accession_number)
    coordinator.deliver(task, ai, order, with_mask)
    if not store.finish_task(task.task_id, launched.attempt, document):
        store.audit(
            "duplicate-completion-ignored",
            task_id=task.task_id,
            study_uid=task.study_instance_uid,
        )
        return
    times = job.times
    priority = task.priority.value
    if times.done_s is not None:
        metrics.observe(
            "statlane_task_latency_seconds",
            times.done_s - times.received_s,
            priority=priority,
            model=task.model,
        )
    if job.deadline_missed:
        metrics.inc("statlane_deadline_misses_total", priority=priority)
    store.audit(
        "task-done",
        study_uid=task.study_instance_uid,
        task_id=task.task_id,
        detail={
            "model": task.model,
            "mode": task.mode,
            "critical_positive": ai.critical_positive,
            "deadline_missed": job.deadline_missed,
        },
    )
    coordinator.worklist.update_ai(
        task.study_instance_uid, AIStatus.DONE, ai.critical_positive, summary_of(ai)
    )
    if not store.finish_study(task.study_instance_uid):
        log.debug("study not done yet: other tasks run, or a late instance re-runs it")


def _ai_result(
    coordinator: Coordinator,
    task: TaskRow,
    manifest: Manifest,
    launched: _Launched,
    job: JobResult,
) -> tuple[AIResult, Callable[[AIResult], AIResult]]:
    """The result without its mask, and how to add the mask on the source grid.

    The mask is the model's label map (value ``v > 0`` is ``findings[v - 1]``) resampled onto
    the source grid; it only feeds the SEG, and resampling takes tenths of a second on a
    small CPU, so delivery adds it after the SR is queued. A map without any label gives no
    mask (and no SEG).
    """
    source = launched.source
    volume = source.load()
    by_uid: Mapping[str, tuple[pydicom.Dataset, str]] | None = launched.headers
    if by_uid is None:  # launched after a restart: read the headers back from the spool
        read: dict[str, tuple[pydicom.Dataset, str]] = {}
        for path in source.paths:
            header = pydicom.dcmread(path, stop_before_pixels=True)
            read[str(header.SOPInstanceUID)] = (header, path)
        by_uid = read
    ordered = [by_uid[uid] for uid in volume.sop_instance_uids if uid in by_uid]
    instances = [source_instance(h, str(p)) for h, p in ordered]
    ai = build_result(
        task_id=task.task_id,
        study=study_identity(ordered[0][0]),
        instances=instances,
        manifest=manifest,
        findings=job.findings,
        completed_at=coordinator.utc(),
        mode=Mode(task.mode),
    )

    def with_mask(result: AIResult) -> AIResult:
        if manifest.task is Task.CLASSIFICATION or job.outputs is None:
            return result
        assert source.affine_ras is not None
        mask = mask_on_source(job.outputs, manifest, source.affine_ras, volume.affine, volume.shape)
        if mask is None or mask.shape[0] != len(instances):
            return result  # multi-frame source: SEG from frames is not supported yet
        if not mask.any():
            return result  # no label anywhere: nothing to segment
        return dataclasses.replace(result, mask=mask)

    return ai, with_mask
