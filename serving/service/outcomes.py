"""The results side: finished jobs → ``AIResult`` → deliveries → task done.

The engine's done-callback (set by the coordinator when it submits a task) pushes every
finished job onto :class:`~serving.service.finished.FinishedJobs`, most urgent first (priority
class rank, then deadline, then arrival). The results threads (:meth:`ResultHandler.run`) take
them and, for each one (:meth:`ResultHandler.result_ready`):

- a job whose series is outside the model's domain (no inference ran) ends *not applicable*
  (:mod:`serving.service.applicability`);
- a failed job fails its task (conditional on its attempt), is audited and counted, and the
  study's AI status becomes *unavailable*;
- a successful one becomes an ``AIResult`` placed on the source instances (the mask is added
  later, by delivery, for the SEG only); its deliveries are enqueued *before* the task is
  finished, so a crash in between re-runs the task and enqueues the same items again
  (deterministic objects, deduplicated keys) instead of losing them;
- a result is a *version* (:mod:`serving.service.versions`): it names the sent version of an
  earlier generation it replaces (``AIResult.replaces``), and an older generation's result
  that finishes after a newer one is kept and audited (``result-superseded``) but neither
  delivered nor shown on the worklist, so the newest generation's result always wins;
- the task is finished exactly once: a second completion of the same attempt is audited and
  ignored; latency and deadline misses are measured, the worklist updated, and the study closed
  (*done*) when no task of it is queued or running.

Any error while turning a result into deliveries fails the task (the study's AI status becomes
*unavailable*) rather than killing the results thread.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from typing import Protocol

import pydicom

from models.manifest import Manifest, Task
from router.result import AIResult, Mode, SourceInstance
from router.vocabulary import OrderContext, PriorityClass
from router.worklist import AIStatus, UnknownStudyError, Worklist
from serving.engine import JobResult
from serving.jobstore import JobStore, TaskRow
from serving.metrics import Metrics
from serving.service.applicability import (
    finish_not_applicable,
    record_unreliable,
    with_output_sanity,
)
from serving.service.finished import FinishedJobs, Launched
from serving.service.records import result_json, summary_of
from serving.service.results import build_result, mask_on_source, source_frames, study_identity
from serving.service.stat_gate import StatGate
from serving.service.versions import newer_result, prior_version, version_record, was_sent

log = logging.getLogger(__name__)


class ResultSink(Protocol):
    """Where a finished task's result goes: result objects and messages, by mode and
    destinations (:class:`~serving.delivery.payloads.ResultDelivery` in the service)."""

    def enqueue_results(
        self,
        task: TaskRow,
        ai: AIResult,
        order: OrderContext | None,
        add_mask: Callable[[AIResult], AIResult] | None = None,
        /,
    ) -> None:
        """Enqueue every delivery of ``ai``; ``add_mask`` returns it with its mask (SEG)."""


def set_ai_status(worklist: Worklist, study_uid: str, status: AIStatus) -> None:
    """Show ``status`` for the study on the worklist, if the study is on it."""
    try:
        worklist.update_ai(study_uid, status)
    except UnknownStudyError:  # not on the worklist (e.g. after a restart): nothing to show
        log.debug("worklist has no entry for a study", exc_info=True)


class ResultHandler:
    """Turns finished jobs into results, deliveries and finished tasks.

    Args:
        finished: The finished jobs, pushed by the engine's done-callbacks.
        store: The job store.
        worklist: The worklist to update.
        metrics: Service metrics.
        sink: Enqueues a result's deliveries.
        manifests: Model ``name@version`` → manifest (the runtime's).
        gate: Stat priority across the Python stages.
        utc: Wall clock, timezone-aware UTC.
    """

    def __init__(
        self,
        *,
        finished: FinishedJobs,
        store: JobStore,
        worklist: Worklist,
        metrics: Metrics,
        sink: ResultSink,
        manifests: Mapping[str, Manifest],
        gate: StatGate,
        utc: Callable[[], datetime],
    ) -> None:
        self.finished = finished
        self.store = store
        self.worklist = worklist
        self.metrics = metrics
        self.sink = sink
        self.manifests = manifests
        self.gate = gate
        self.utc = utc

    def run(self, stopping: threading.Event, *, stat_only: bool = False) -> None:
        """The results thread: finished jobs become results, most urgent class first.

        Object building and delivery enqueueing take tenths of a second per result on a small
        CPU; doing them here keeps the coordinator loop (assembly, routing) responsive, and a
        stat result never waits behind a queue of routine ones. With ``stat_only`` the thread
        takes stat results only: the service runs one such thread next to the general one, so
        a stat result does not even wait for the routine result in hand. Returns once
        ``stopping`` is set and no result it may take is waiting (checked every 0.2 s).
        """
        while True:
            taken = self.finished.take(stopping, stat_only=stat_only)
            if taken is None:
                return
            self._handle(*taken)

    def drain(self) -> None:
        """Handle every finished job now (tests, shutdown)."""
        while (taken := self.finished.take_nowait()) is not None:
            self._handle(*taken)

    def _handle(self, launched: Launched, future: Future[JobResult]) -> None:
        """Turn one finished job into a result; any error fails its task instead.

        A stat result is a stat stage up to its SR and messages (see
        :class:`~serving.service.stat_gate.StatGate`); any other result first steps aside for
        the stat stages under way.
        """
        if launched.task.priority is not PriorityClass.STAT:
            self.gate.step_aside()
        try:
            self.result_ready(launched, future.result())
            # the result is handled: its volume (the source grid) is needed no more
            launched.source.release()
        # Any failure (a model output the objects cannot take, a broken file, a bug) must fail
        # this one task, never the results thread that serves every other study.
        except Exception as error:
            log.exception("turning a result into deliveries failed")
            self.store.fail_task(
                launched.task.task_id,
                launched.attempt,
                f"result handling failed: {type(error).__name__}",
            )
            set_ai_status(self.worklist, launched.task.study_instance_uid, AIStatus.UNAVAILABLE)
            self.store.finish_study(launched.task.study_instance_uid)
            launched.source.release()

    def result_ready(self, launched: Launched, job: JobResult) -> None:
        """Finish a task exactly once and hand its result to delivery."""
        store, metrics = self.store, self.metrics
        task = launched.task
        if job.not_applicable is not None:  # outside the model's domain: nothing ran
            finish_not_applicable(store, self.worklist, metrics, launched, job.not_applicable)
            return
        if job.error is not None:
            store.fail_task(task.task_id, launched.attempt, job.error)
            store.audit(
                "task-failed",
                study_uid=task.study_instance_uid,
                task_id=task.task_id,
                detail={"error": job.error},
            )
            metrics.inc("statlane_tasks_failed_total", model=task.model)
            set_ai_status(self.worklist, task.study_instance_uid, AIStatus.UNAVAILABLE)
            store.finish_study(task.study_instance_uid)  # a failed task ends too
            return
        manifest = self.manifests[task.model]
        stage: AbstractContextManager[None] = (
            self.gate.stat_stage() if task.priority is PriorityClass.STAT else nullcontext()
        )
        with stage:
            ai, with_mask = self._ai_result(task, manifest, launched, job)
        ai = with_output_sanity(ai, job, manifest, launched.source.domain)
        lineage = store.tasks(study_uid=task.study_instance_uid)
        newer = newer_result(task, lineage)
        if newer is None:  # a new version names the sent version it replaces
            ai = dataclasses.replace(ai, replaces=prior_version(task, ai, lineage))
        sent = newer is None and was_sent(task, ai)
        document = result_json(ai, job)
        document["version"] = version_record(ai, sent=sent)
        if newer is not None:
            document["superseded_by"] = newer.task_id
        # Deliveries are enqueued before the task is finished: a crash in between re-runs the
        # task and enqueues the same items again (deterministic objects, deduplicated keys),
        # while a crash after finishing can no longer lose them.
        order = store.order_context(ai.study.accession_number)
        # An unreliable result reaches no destination; nor does an older generation's result
        # that finished after a newer one (it would bring back what the newer one corrected).
        if ai.unreliable is None and newer is None:
            self.sink.enqueue_results(task, ai, order, with_mask)
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
            metrics.inc("statlane_deadline_misses_total", priority=priority, model=task.model)
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
        if newer is not None:
            store.audit(
                "result-superseded",
                study_uid=task.study_instance_uid,
                task_id=task.task_id,
                detail={"generation": task.generation, "superseded_by": newer.task_id},
            )
        elif ai.unreliable is not None:
            record_unreliable(store, self.worklist, metrics, launched, ai)
        else:
            self.worklist.update_ai(
                task.study_instance_uid, AIStatus.DONE, ai.critical_positive, summary_of(ai)
            )
        if not store.finish_study(task.study_instance_uid):
            log.debug("study not done yet: other tasks run, or a late instance re-runs it")

    def _ai_result(
        self, task: TaskRow, manifest: Manifest, launched: Launched, job: JobResult
    ) -> tuple[AIResult, Callable[[AIResult], AIResult]]:
        """The result without its mask, and how to add the mask on the source grid.

        The mask is the model's label map (value ``v > 0`` is ``findings[v - 1]``) resampled
        onto the source grid; it only feeds the SEG, and resampling takes tenths of a second on
        a small CPU, so delivery adds it after the SR is queued. A map without any label gives
        no mask (and no SEG).
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
        # One plane per volume slice: an instance, or one frame of a multi-frame instance.
        frames = volume.frame_numbers or (1,) * len(volume.sop_instance_uids)
        planes: dict[str, list[SourceInstance]] = {}
        instances = []
        for uid, frame in zip(volume.sop_instance_uids, frames, strict=True):
            if uid not in by_uid:
                continue
            if uid not in planes:
                plane_header, plane_path = by_uid[uid]
                planes[uid] = source_frames(plane_header, str(plane_path))
            found = planes[uid]
            instances.append(found[frame - 1] if frame <= len(found) else found[0])
        ai = build_result(
            task_id=task.task_id,
            study=study_identity(ordered[0][0]),
            instances=instances,
            manifest=manifest,
            findings=job.findings,
            completed_at=self.utc(),
            mode=Mode(task.mode),
        )

        # The mask needs the source grid, not its voxels: the closure (which delivery may keep
        # until the SEG is built) holds no reference to the volume.
        grid_affine, grid_shape, model_affine = volume.affine, volume.shape, source.affine_ras
        del volume

        def with_mask(result: AIResult) -> AIResult:
            if manifest.task is Task.CLASSIFICATION or job.outputs is None:
                return result
            assert model_affine is not None
            mask = mask_on_source(job.outputs, manifest, model_affine, grid_affine, grid_shape)
            if mask is None or mask.shape[0] != len(instances):
                return result  # a slice whose header is missing: the planes are not the grid
            if not mask.any():
                return result  # no label anywhere: nothing to segment
            return dataclasses.replace(result, mask=mask)

        return ai, with_mask
