"""Restart recovery: the coordinator's state rebuilt from the job store and the spool.

The process may die at any step of the pipeline; every step writes its state to the job store
before acting on it, and every instance is durable in the spool before it is acknowledged.
:func:`recover_after_restart` (behind :meth:`Coordinator.recover
<serving.service.coordinator.Coordinator.recover>`) runs once when the service starts, before
the coordinator's loop, ingest and results threads, and resumes in this order:

1. **Interrupted tasks are requeued**: every task still *running* in the job store goes back to
   *queued* (its worker died with the process), so from then on every running task is one this
   process started.
2. **Spooled instances are recorded again**: each instance the spool holds is read back (header
   only) and recorded as if it had just arrived: instances the job store already had count as
   duplicates, instances lost between the acknowledgement and the ingest commit are recorded
   now; either way the assembler tracks every instance again (calling AE unknown: empty).
3. **Receiving studies wait again**: studies still *receiving* are marked released now (no
   association survives a restart), so their quiet period restarts from their re-recording;
   a study already routed before (reopened by late instances) resumes at the generation after
   its latest routing decision.
4. **Complete studies are routed**: a study *complete* but not routed (the process died before
   the routing decision) is routed as the generation after its latest routing decision (0 if
   it was never routed).
5. **Routed studies are resumed** at the generation of their latest routing decision (0 if
   none), and marked handed out in the assembler (later instances are late):

   - without tasks for that generation (died between the decision and its tasks): routed
     again at that generation (task creation is idempotent per generation);
   - with every task finished, failed or cancelled (died after the last result, before the
     study was closed): the study is marked *done*;
   - otherwise each *queued* task (including those requeued in step 1) is put back on the
     worklist if missing (triage mode) and launched.
6. **Done studies** are marked handed out at their latest generation, so an instance arriving
   for them is handled as late (re-run or ignored, by the service's setting).
7. **Older generations finish**: a task still *queued* after these steps belongs to an older
   generation of a study reopened by late instances (or routed again in step 4); it would have
   run to the end without the restart, so it is launched (studies done or quarantined aside).

Studies re-routed here carry the completion reason ``restart`` and an assembly wait of 0 s.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Protocol

import pydicom

from router.result import Mode
from router.rules import Decision
from router.worklist import Worklist, WorklistEntry
from serving.gateway.spool import StoredInstance
from serving.jobstore import JobStore, StudyState, TaskRow, TaskState
from serving.service.assembly import CompleteStudy


class Resumable(Protocol):
    """What recovery needs from the coordinator, and nothing more."""

    store: JobStore
    worklist: Worklist
    mono: Callable[[], float]
    utc: Callable[[], datetime]

    def record_batch(self, batch: Sequence[tuple[str, pydicom.Dataset, str, str, float]]) -> None:
        """Record instances and track them, as ingest does."""

    def resume_receiving(self, study_uid: str, generation: int | None) -> None:
        """Release a study still receiving now, at ``generation`` if given."""

    def mark_handed_out(self, study_uid: str, generation: int) -> None:
        """Mark a study routed at ``generation`` (later instances are late)."""

    def route(self, complete: CompleteStudy) -> Decision | None:
        """Route a complete study."""

    def launch(self, task: TaskRow) -> None:
        """Start a queued task."""

    def forget(self, study_uid: str) -> None:
        """Drop the study's in-memory state (it will not be routed again)."""


def recover_after_restart(
    coordinator: Resumable, spooled: Sequence[StoredInstance]
) -> dict[str, int]:
    """Resume ``coordinator`` after a restart (see the module docstring for the steps).

    Args:
        coordinator: The freshly built coordinator (its threads not started yet).
        spooled: Every instance the spool holds.

    Returns:
        Counts of what was resumed: ``rerouted`` (studies routed again), ``requeued`` (tasks
        interrupted while running) and ``relaunched`` (queued tasks launched again).
    """
    store = coordinator.store
    # first: tasks that were running when the process died go back to the queue (after
    # this point every running task is one this process started)
    requeued = store.requeue_interrupted()
    for instance in spooled:
        header = pydicom.dcmread(instance.path, stop_before_pixels=True)
        batch = [(instance.study_instance_uid, header, str(instance.path), "", coordinator.mono())]
        coordinator.record_batch(batch)  # calling AE unknown after a restart
    for study in store.studies(StudyState.RECEIVING):
        last = _last_generation(store, study.study_instance_uid)  # reopened by late ones
        coordinator.resume_receiving(study.study_instance_uid, None if last is None else last + 1)
    rerouted = 0
    # Complete but not routed (killed before the decision): route as the next generation.
    for study in store.studies(StudyState.COMPLETE):
        last = _last_generation(store, study.study_instance_uid)
        _resume_route(coordinator, study.study_instance_uid, 0 if last is None else last + 1)
        rerouted += 1
    relaunched = 0
    for study in store.studies(StudyState.ROUTED):
        uid = study.study_instance_uid
        generation = _last_generation(store, uid) or 0
        tasks = [t for t in store.tasks(study_uid=uid) if t.generation == generation]
        if not tasks or not store.planned_tasks_exist(uid):
            # killed between the routing decision and (some of) its tasks: route again; the
            # tasks already created are found, not duplicated
            _resume_route(coordinator, uid, generation)
            rerouted += 1
            continue
        coordinator.mark_handed_out(uid, generation)
        coordinator.forget(uid)  # routed already: its re-recorded headers are not needed
        if store.finish_study(uid):  # killed after the last result, before closing the study
            continue
        for task in tasks:
            if task.state is TaskState.QUEUED:
                _ensure_on_worklist(coordinator, uid, study.accession_number)
                coordinator.launch(task)
                relaunched += 1
    for study in store.studies(StudyState.DONE):
        uid = study.study_instance_uid
        coordinator.mark_handed_out(uid, _last_generation(store, uid) or 0)
        coordinator.forget(uid)
    # Queued tasks of an older generation (a study reopened by late instances, or routed
    # again above): without the restart they would have run to the end; so they do now.
    for task in store.tasks(TaskState.QUEUED):
        owner = store.study(task.study_instance_uid)
        if owner is None or owner.state in (StudyState.DONE, StudyState.QUARANTINED):
            continue
        _ensure_on_worklist(coordinator, owner.study_instance_uid, owner.accession_number)
        coordinator.launch(task)
        relaunched += 1
    return {"rerouted": rerouted, "requeued": len(requeued), "relaunched": relaunched}


def _last_generation(store: JobStore, study_uid: str) -> int | None:
    """Generation of the study's latest routing decision (None: never routed)."""
    decisions = store.routing_decisions(study_uid)
    if not decisions:
        return None
    return int(decisions[-1].decision.get("generation", 0))


def _resume_route(coordinator: Resumable, study_uid: str, generation: int) -> None:
    """Route a study again as ``generation``, from the instances the job store lists."""
    store = coordinator.store
    series = {
        s.series_instance_uid: [i.path for i in store.instances_of(s.series_instance_uid)]
        for s in store.series_of(study_uid)
    }
    coordinator.mark_handed_out(study_uid, generation)
    coordinator.route(CompleteStudy(study_uid, generation, series, "restart", 0.0))


def _ensure_on_worklist(coordinator: Resumable, uid: str, accession: str) -> None:
    """Put a study with tasks to relaunch back on the worklist (triage mode) if missing."""
    if uid in {e.study_uid for e in coordinator.worklist.entries}:
        return
    study = coordinator.store.study(uid)
    arrived = study.first_seen_at if study is not None else coordinator.utc()
    coordinator.worklist.add(WorklistEntry(uid, accession, arrived, mode=Mode.TRIAGE))
