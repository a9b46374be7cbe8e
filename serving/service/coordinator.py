"""The coordinator: stored instances → complete studies → rules → tasks → runtime → results.

It owns no socket and no thread of its own besides the loop :class:`~serving.service.app.Service`
runs; every step writes its state to the job store before acting on it:

1. ``instance_stored``: the gateway's callback (before the instance is acknowledged): the
   instance is recorded in the job store and the assembler; its header is kept in memory for
   identity checks and rules.
2. ``tick``: studies the assembler declares complete are checked for identity (instances that
   disagree on PatientID, AccessionNumber, or an order for another patient → quarantine), marked
   complete, routed by the rules (decision recorded), and their tasks created (idempotent per
   generation) and submitted to the engine.
3. ``result_ready``: a finished job becomes an ``AIResult``; the task is finished exactly once
   (conditional on its attempt), the worklist updated, and — by mode — result objects and
   messages enqueued in the outbox.

The results side (step 3) lives in :mod:`serving.service.outcomes` and the restart recovery
(:meth:`Coordinator.recover`) in :mod:`serving.service.recovery`; both are functions of the
coordinator, called through its methods.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pydicom

from models.registry import Registry
from preprocessing.series import load_series
from preprocessing.volume import Volume
from router.result import AIResult, Mode
from router.rules import Decision, RuleSet, evaluate, facts_from_datasets
from router.vocabulary import OrderContext, OrderPriority, PriorityClass
from router.worklist import AIStatus, Worklist, WorklistEntry
from serving.delivery.outbox import Outbox
from serving.engine import EngineBusy, InferenceJob, JobResult
from serving.gateway.element_text import element_count, element_text
from serving.gateway.spool import StoredInstance
from serving.jobstore import InstanceArrival, JobStore, StudyState, TaskRow, TaskState
from serving.metrics import Metrics
from serving.service import outcomes, recovery
from serving.service.assembly import Arrival, CompleteStudy, StudyAssembler
from serving.service.assembly import StudyState as Tracked
from serving.service.records import decision_json, identity_problem, order_problem
from serving.service.runtime import Runtime, SeriesSource
from serving.service.stat_gate import StatGate
from serving.service.streaming import StreamingVolumes

log = logging.getLogger(__name__)


@dataclass
class _Launched:
    """A task handed to the engine: what is needed to turn its result into an AIResult."""

    task: TaskRow
    attempt: int
    source: SeriesSource
    started_mono: float
    #: SOP Instance UID → (header, path) of the series as read at ingest; None after a restart
    #: (the results thread then reads the headers from the spool).
    headers: Mapping[str, tuple[pydicom.Dataset, str]] | None = None


class Coordinator:
    """Glue between gateway, assembler, rules, job store, runtime, worklist and outbox.

    Args:
        store: The job store.
        outbox: The delivery outbox.
        rules: Routing rules; ``rules_hash`` identifies them in routing decisions.
        registry: Resolves model references to ``name@version``.
        runtime: The inference runtime, or None when AI is unavailable (backend missing).
        worklist: The worklist to update.
        metrics: Service metrics.
        deliver: ``(task, ai_result, order, add_mask) -> None``: enqueues results by mode and
            destinations; ``add_mask`` returns the result with its mask (for the SEG).
        quiet_period_s: Quiet period per priority class, seconds.
        mono: Monotonic clock, seconds (assembly and deadlines on the engine's clock).
        utc: Wall clock, timezone-aware UTC (job store timestamps).
        late_instances: ``rerun`` (route again as the next generation) or ``ignore`` (audit).
        idle_timeout_s: Completion without an association release after this much silence.
        streaming: Decodes stat-eligible series while they arrive; None without a runtime.
        gate: Stat priority across the Python stages: routing a stat study is a stat stage,
            routing any other study steps aside for stat stages first (and so do results;
            see :class:`~serving.service.stat_gate.StatGate`). None: no waiting.
    """

    def __init__(
        self,
        *,
        store: JobStore,
        outbox: Outbox,
        rules: RuleSet,
        rules_hash: str,
        registry: Registry,
        runtime: Runtime | None,
        worklist: Worklist,
        metrics: Metrics,
        deliver: Callable[
            [TaskRow, AIResult, OrderContext | None, Callable[[AIResult], AIResult]], None
        ],
        quiet_period_s: Mapping[PriorityClass, float],
        mono: Callable[[], float],
        utc: Callable[[], datetime],
        late_instances: str = "rerun",
        idle_timeout_s: float = 120.0,
        streaming: StreamingVolumes | None = None,
        gate: StatGate | None = None,
    ) -> None:
        self.store = store
        self.gate = gate if gate is not None else StatGate(max_wait_s=0.0)
        self.outbox = outbox
        self.rules = rules
        self.rules_hash = rules_hash
        self.registry = registry
        self.runtime = runtime
        self.worklist = worklist
        self.metrics = metrics
        self.deliver = deliver
        self.quiet_period = dict(quiet_period_s)
        self.mono = mono
        self.utc = utc
        self.late_instances = late_instances
        self.streaming = streaming
        self.assembler = StudyAssembler(self._quiet_for, idle_timeout_s=idle_timeout_s)
        self.lock = threading.Condition()
        self._headers: dict[str, dict[str, pydicom.Dataset]] = defaultdict(dict)
        self._calling_ae: dict[str, str] = {}
        self._quiet_cache: dict[str, tuple[int, float]] = {}
        self._facts_cache: dict[str, tuple[int, OrderContext | None, Any]] = {}
        self._stat_cache: dict[str, bool] = {}
        # started, refused by a busy engine: (task, attempt, ingest headers by SOP UID)
        self._waiting: list[tuple[TaskRow, int, Mapping[str, pydicom.Dataset] | None]] = []
        # finished jobs, most urgent first: (class rank, deadline, sequence, job)
        self._results: list[tuple[int, float, int, _Launched, Future[JobResult]]] = []
        self._result_sequence = itertools.count()
        self._results_ready = self.lock  # one condition: every waiter re-checks its own state
        self._last_instance_mono: dict[str, float] = {}
        self._ingest: queue.Queue[tuple[str, Any, float]] = queue.Queue()

    # ---- ingest ------------------------------------------------------------------------------

    def instance_stored(self, instance: StoredInstance) -> None:
        """Queue a durably stored instance for recording (the gateway's callback: cheap).

        The spool made the instance durable before this call, so it may be acknowledged at
        once: the ingest thread records it in the job store (batched: one commit for what
        arrived meanwhile) and the assembler; a crash in between is healed by the spool rescan
        at start-up (:meth:`recover`).
        """
        self._ingest.put(("stored", instance, self.mono()))

    def association_ended(self, study_uids: Sequence[str]) -> None:
        """The association (or STOW request) that carried these studies ended.

        Queued behind the association's instances, so the release is applied after them.
        """
        self._ingest.put(("released", tuple(study_uids), self.mono()))

    def run_ingest(
        self, stopping: threading.Event, batch: int = 64, linger_s: float = 0.05
    ) -> None:
        """The ingest thread: record queued instances in batches, apply releases in order.

        After the first instance it waits up to ``linger_s`` (seconds) for more, so a stream of
        C-STOREs is recorded a few instances per transaction instead of one (a transaction
        costs about a millisecond of Python whatever its size, under the GIL the receiving
        association needs). An association release ends the wait at once. Quiet periods count
        from the acknowledgement times carried in the items, so the wait delays no study.
        """
        while not stopping.is_set():
            try:
                first = self._ingest.get(timeout=0.2)
            except queue.Empty:
                continue
            items = [first]
            until = self.mono() + linger_s
            while len(items) < batch and items[-1][0] == "stored":
                remaining = until - self.mono()
                try:
                    if remaining > 0:
                        items.append(self._ingest.get(timeout=remaining))
                    else:
                        items.append(self._ingest.get_nowait())
                except queue.Empty:
                    break
            try:
                self.ingest(items)
            except Exception:  # e.g. the job store is briefly unavailable: one by one, then on
                log.exception("recording a batch failed; retrying its items one by one")
                for item in items:
                    try:
                        self.ingest([item])
                    except Exception:  # durable in the spool: the restart rescan records it
                        log.exception("an instance could not be recorded; healed on restart")

    def ingest(self, items: Sequence[tuple[str, Any, float]]) -> None:
        """Record stored instances and apply association releases, in arrival order.

        Times are when the gateway acknowledged (monotonic), so a busy ingest thread never
        lengthens a study's quiet period.
        """
        pending: list[tuple[str, pydicom.Dataset, str, str, float]] = []
        for kind, value, at in items:
            if kind == "stored":
                header = value.header
                if header is None:
                    try:
                        header = pydicom.dcmread(value.path, stop_before_pixels=True)
                    except Exception:  # the spool validated it; a vanished file heals on restart
                        log.exception("a spooled instance could not be read back")
                        continue
                calling_ae = value.source.calling_ae or ""
                pending.append((value.study_instance_uid, header, str(value.path), calling_ae, at))
            else:
                self._record_batch(pending)
                pending = []
                with self.lock:
                    for uid in dict.fromkeys(value):
                        self.assembler.released(uid, at)
                    self.lock.notify_all()
        self._record_batch(pending)

    def ingest_idle(self) -> bool:
        """Nothing waits to be recorded (tests and the demo poll this)."""
        return self._ingest.empty()

    def _record_batch(self, batch: Sequence[tuple[str, pydicom.Dataset, str, str, float]]) -> None:
        if not batch:
            return
        arrivals = [
            InstanceArrival(
                study_uid,
                element_text(header, "SeriesInstanceUID"),
                element_text(header, "SOPInstanceUID"),
                path,
                accession=element_text(header, "AccessionNumber"),
                patient_id=element_text(header, "PatientID"),
                calling_ae=calling_ae,
                modality=element_text(header, "Modality"),
            )
            for study_uid, header, path, calling_ae, _ in batch
        ]
        results = self.store.record_instances(arrivals)
        for (study_uid, header, path, calling_ae, now), arrival_row, result in zip(
            batch, arrivals, results, strict=True
        ):
            expected = element_count(header, "ImagesInAcquisition")
            with self.lock:
                self._headers[study_uid][arrival_row.sop_uid] = header
                self._calling_ae.setdefault(study_uid, calling_ae)
                self._last_instance_mono[study_uid] = now
                arrival = self.assembler.add(
                    study_uid=study_uid,
                    series_uid=arrival_row.series_uid,
                    sop_uid=arrival_row.sop_uid,
                    path=path,
                    modality=arrival_row.modality,
                    now=now,
                    expected=expected,
                )
                if arrival is Arrival.LATE:
                    self._late_instance(study_uid)
            stat = result.new and self._stat_eligible(study_uid)  # judged once per study
            if self.streaming is not None and stat:
                self.streaming.offer(arrival_row.series_uid, arrival_row.modality, path)
            modality = arrival_row.modality or "unknown"
            self.metrics.inc("statlane_instances_received_total", modality=modality)
            if not result.new:
                self.metrics.inc("statlane_instances_duplicate_total")
        with self.lock:
            self.lock.notify_all()

    def _late_instance(self, study_uid: str) -> None:
        """An instance for a study already handed out (caller holds the lock)."""
        if self.late_instances == "rerun":
            generation = self.assembler.reopen(study_uid)
            self.store.set_study_state(study_uid, StudyState.RECEIVING, {"reason": "late instance"})
            self.store.audit(
                "late-instance-rerun", study_uid=study_uid, detail={"generation": generation}
            )
        else:
            self.store.audit("late-instance-ignored", study_uid=study_uid)

    def order_received(self, order: OrderContext) -> None:
        """An HL7 order: kept in the job store, joined to its study by accession."""
        self.store.record_order(order)
        self.store.audit(
            "order-received",
            accession=order.accession_number,
            detail={"priority": order.priority.value, "control": order.order_control},
        )
        self.metrics.inc("statlane_orders_received_total", priority=order.priority.value)
        with self.lock:
            self.lock.notify_all()

    # ---- quiet period ------------------------------------------------------------------------

    def _quiet_for(self, study: Tracked) -> float:
        """The study's quiet period: that of the most urgent task the rules would give it."""
        cached = self._quiet_cache.get(study.study_uid)
        if cached is not None and cached[0] == study.instance_count:
            return cached[1]
        quiet = self.quiet_period[PriorityClass.ROUTINE]
        headers = list(self._headers.get(study.study_uid, {}).values())
        if headers:
            try:
                order = self._order_for(headers)
                facts = self._facts(study.study_uid, headers, order)
                decision = evaluate(self.rules, facts, order)
                if decision.tasks:
                    urgent = min((t.priority for t in decision.tasks), key=lambda p: p.rank)
                    quiet = self.quiet_period.get(urgent, quiet)
            except Exception:  # a study the rules cannot read waits the routine period
                log.debug("quiet period: rules could not evaluate study", exc_info=True)
        self._quiet_cache[study.study_uid] = (study.instance_count, quiet)
        return quiet

    def _facts(
        self, uid: str, headers: Sequence[pydicom.Dataset], order: OrderContext | None
    ) -> Any:
        """Rule facts of the study; reused while neither the instances nor the order changed
        (the quiet-period check at the release computes what routing needs moments later)."""
        cached = self._facts_cache.get(uid)
        if cached is not None and cached[0] == len(headers) and cached[1] == order:
            return cached[2]
        facts = facts_from_datasets(headers, self._calling_ae.get(uid, ""), order)
        self._facts_cache[uid] = (len(headers), order, facts)
        return facts

    def _stat_eligible(self, uid: str) -> bool:
        """Whether the rules would make this study stat, judged once from its first instances:
        only those are decoded while they arrive (streaming costs CPU that ingest needs)."""
        known = self._stat_cache.get(uid)
        if known is not None:
            return known
        headers = list(self._headers.get(uid, {}).values())
        try:
            order = self._order_for(headers)
            facts = facts_from_datasets(headers, self._calling_ae.get(uid, ""), order)
            decision = evaluate(self.rules, facts, order)
            matched = {e.rule for e in decision.explanations if e.matched}
            # a matching rule whose task is stat (series size is not known yet: ignore it)
            stat = any(
                str(spec.priority) == PriorityClass.STAT.value
                or (order is not None and order.priority is OrderPriority.STAT)
                for rule in self.rules.rules
                if rule.name in matched
                for spec in rule.produce
            )
        except Exception:
            stat = False
        self._stat_cache[uid] = stat
        return stat

    def _order_for(self, headers: Sequence[pydicom.Dataset]) -> OrderContext | None:
        accession = str(headers[0].get("AccessionNumber", "")) if headers else ""
        if not accession:
            return None
        row = self.store.order(accession)
        return row.context() if row is not None else None

    # ---- the loop ----------------------------------------------------------------------------

    def has_work(self) -> bool:
        """Finished jobs or refused submissions wait for the loop (caller holds the lock)."""
        return bool(self._waiting)

    def next_wakeup_s(self, *, stat_only: bool = False) -> float | None:
        """Monotonic time of the next assembly deadline (None: nothing waits); of stat studies
        only with ``stat_only``."""
        with self.lock:
            only = self._is_stat if stat_only else None
            return self.assembler.next_check_s(self.mono(), only=only)

    def _is_stat(self, study_uid: str) -> bool:
        """Whether the rules make the study stat (as judged from its first instances)."""
        return self._stat_cache.get(study_uid, False)

    def tick(self, *, stat_only: bool = False) -> None:
        """Route complete studies and submit waiting tasks.

        With ``stat_only`` only studies the rules make stat are routed (the service runs a
        thread for those next to the general one, so a stat CT head never waits while a large
        routine study is being routed).
        """
        with self.lock:
            due = self.assembler.due(self.mono(), only=self._is_stat if stat_only else None)
        # Studies the rules make stat are routed first when several complete together.
        due.sort(key=lambda study: not self._stat_cache.get(study.study_uid, False))
        for study in due:
            stat = self._stat_cache.get(study.study_uid, False)
            if not stat:  # a stat study being routed, built or delivered goes first
                self.gate.step_aside()
            try:
                with self.gate.stat_stage() if stat else nullcontext():
                    self.route(study)
            except Exception:
                log.exception("routing failed for a study; it stays complete and is retried")
                self.store.audit("routing-failed", study_uid=study.study_uid)
        if not stat_only:
            self._submit_waiting()

    # ---- routing -----------------------------------------------------------------------------

    def route(self, complete: CompleteStudy) -> Decision | None:
        """Identity checks, completion, routing decision and tasks for one complete study."""
        uid = complete.study_uid
        with self.lock:
            headers = list(self._headers.get(uid, {}).values())
        # After a restart or a re-run only the newest headers are in memory; the rules must see
        # every instance of the study (a series of 1 late slice has too few images to route).
        if len(headers) < sum(len(paths) for paths in complete.series.values()):
            headers = [
                pydicom.dcmread(p, stop_before_pixels=True)
                for paths in complete.series.values()
                for p in paths
            ]
        problem = identity_problem(headers)
        order = self._order_for(headers)
        if problem is None and order is not None:
            problem = order_problem(headers[0], self.store.order(order.accession_number))
        if problem is not None:
            self.store.quarantine_study(uid, problem)
            self.store.audit("study-quarantined", study_uid=uid, detail={"reason": problem})
            self.metrics.inc("statlane_studies_quarantined_total")
            log.warning("study quarantined: %s", problem)
            return None
        current = self.store.study(uid)
        if current is not None and current.state is StudyState.RECEIVING:
            self.store.mark_study_complete(uid, {s: len(p) for s, p in complete.series.items()})
        self.metrics.observe("statlane_assembly_wait_seconds", complete.waited_s)
        facts = self._facts(uid, headers, order)
        decision = evaluate(self.rules, facts, order, resolve_model=self._resolve)
        self.store.record_routing(
            uid, decision_json(decision, complete), rules_hash=self.rules_hash
        )
        accession = str(headers[0].get("AccessionNumber", ""))
        self._add_to_worklist(uid, accession, headers[0], order, decision)
        by_sop = {str(h.SOPInstanceUID): h for h in headers}
        for planned in decision.tasks:
            name, version = planned.model.split("@", 1)
            task = self.store.create_task(
                uid,
                planned.series_instance_uid,
                rule_name=planned.rule,
                model_name=name,
                model_version=version,
                priority=planned.priority,
                deadline_at=self.utc() + timedelta(seconds=planned.deadline_s),
                mode=planned.mode.value,
                destinations=planned.destinations,
                generation=complete.generation,
            )
            self.metrics.inc(
                "statlane_tasks_created_total", priority=task.priority.value, model=task.model
            )
            if task.state is TaskState.QUEUED:
                self.launch(task, by_sop)
        if not decision.tasks:
            self.store.set_study_state(uid, StudyState.DONE)
        with self.lock:
            self._headers.pop(uid, None)
            self._facts_cache.pop(uid, None)
            self._quiet_cache.pop(uid, None)
            self._stat_cache.pop(uid, None)
            self._last_instance_mono.pop(uid, None)
        return decision

    def _resolve(self, ref: str) -> str:
        return self.registry.get(ref).ident

    def _add_to_worklist(
        self,
        uid: str,
        accession: str,
        header: pydicom.Dataset,
        order: OrderContext | None,
        decision: Decision,
    ) -> None:
        stat = (order is not None and order.priority is OrderPriority.STAT) or str(
            header.get("RequestedProcedurePriority", "")
        ).upper() in ("STAT", "HIGH")
        if decision.tasks:
            modes = {t.mode for t in decision.tasks}
            mode = (
                Mode.ASSISTANT
                if Mode.ASSISTANT in modes
                else (Mode.TRIAGE if Mode.TRIAGE in modes else Mode.SHADOW)
            )
            status = AIStatus.PENDING if self.runtime is not None else AIStatus.UNAVAILABLE
        else:
            mode, status = Mode.TRIAGE, AIStatus.NOT_APPLICABLE
        study = self.store.study(uid)
        arrived = study.first_seen_at if study is not None else self.utc()
        if uid not in {e.study_uid for e in self.worklist.entries}:
            self.worklist.add(
                WorklistEntry(uid, accession, arrived, order_stat=stat, ai_status=status, mode=mode)
            )

    # ---- running tasks -----------------------------------------------------------------------

    def launch(self, task: TaskRow, headers: Mapping[str, pydicom.Dataset] | None = None) -> None:
        """Start ``task`` on the runtime (or mark AI unavailable when there is none).

        ``headers`` (SOP Instance UID → header, as read at ingest) spare the results thread a
        second read of every source header.
        """
        attempt = self.store.start_task(task.task_id)
        if self.runtime is None:
            self.store.fail_task(task.task_id, attempt, "AI unavailable: no inference backend")
            self._ai_status(task.study_instance_uid, AIStatus.UNAVAILABLE)
            self.store.finish_study(task.study_instance_uid)  # its last task ended (failed)
            return
        self._submit(task, attempt, headers)

    def _submit(
        self, task: TaskRow, attempt: int, headers: Mapping[str, pydicom.Dataset] | None = None
    ) -> None:
        assert self.runtime is not None
        rows = self.store.instances_of(task.series_instance_uid)
        paths = [row.path for row in rows]
        known: dict[str, tuple[pydicom.Dataset, str]] | None = None
        if headers is not None and all(r.sop_instance_uid in headers for r in rows):
            known = {r.sop_instance_uid: (headers[r.sop_instance_uid], r.path) for r in rows}
        stat = task.priority is PriorityClass.STAT
        source = SeriesSource(paths, loader=self._loader(task.series_instance_uid, stat=stat))
        deadline_mono = self.mono() + (task.deadline_at - self.utc()).total_seconds()
        job = InferenceJob(
            task.task_id, task.model, task.priority, deadline_s=deadline_mono, volume=source
        )
        try:
            future = self.runtime.engine.submit(job)
        except EngineBusy:  # backpressure: the task stays running in the store and waits here
            with self.lock:
                self._waiting.append((task, attempt, headers))
            return
        launched = _Launched(task, attempt, source, self.mono(), known)

        rank = task.priority.rank

        def done(f: Future[JobResult], launched: _Launched = launched) -> None:
            with self.lock:
                entry = (rank, deadline_mono, next(self._result_sequence), launched, f)
                heapq.heappush(self._results, entry)
                self._results_ready.notify_all()

        future.add_done_callback(done)

    def _loader(self, series_uid: str, *, stat: bool = False) -> Callable[[Sequence[str]], Volume]:
        """Take the volume decoded while the series arrived, else read it from the spool.

        Reading a background series steps aside for stat stages before each file: reading a
        chest CT is hundreds of milliseconds of interpreter time a stat study's routing or SR
        would otherwise share.
        """
        streaming = self.streaming
        gate = self.gate

        def stepping(paths: Sequence[str]) -> Iterator[str]:
            for path in paths:
                gate.step_aside()
                yield path

        def load(paths: Sequence[str]) -> Volume:
            volume = streaming.take(series_uid, paths) if streaming is not None else None
            origin = "stream" if volume is not None else "disk"
            self.metrics.inc("statlane_volumes_loaded_total", origin=origin)
            if volume is not None:
                return volume
            return load_series(paths if stat else stepping(paths))

        return load

    def _submit_waiting(self) -> None:
        with self.lock:
            waiting, self._waiting = self._waiting, []
        for task, attempt, headers in waiting:
            self._submit(task, attempt, headers)

    # ---- results (serving.service.outcomes) ---------------------------------------------------

    def run_results(self, stopping: threading.Event, *, stat_only: bool = False) -> None:
        """The results thread: finished jobs become results, most urgent class first.

        With ``stat_only`` it takes stat results only (the service runs one such thread next
        to the general one). See :func:`serving.service.outcomes.run_results`.
        """
        outcomes.run_results(self, stopping, stat_only=stat_only)

    def drain_results(self) -> None:
        """Handle every finished job now (tests, shutdown)."""
        outcomes.drain_results(self)

    def result_ready(self, launched: _Launched, job: JobResult) -> None:
        """Finish a task exactly once and hand its result to delivery.

        See :func:`serving.service.outcomes.result_ready`.
        """
        outcomes.result_ready(self, launched, job)

    def _ai_status(self, study_uid: str, status: AIStatus) -> None:
        try:
            self.worklist.update_ai(study_uid, status)
        except Exception:  # not on the worklist (e.g. after a restart): nothing to show
            log.debug("worklist has no entry for a study", exc_info=True)

    # ---- restart (serving.service.recovery) --------------------------------------------------

    def recover(self, spooled: Sequence[StoredInstance]) -> dict[str, int]:
        """Resume after a restart: every spooled instance recorded, receiving studies tracked
        again (their quiet period restarts now), complete studies re-routed, interrupted tasks
        re-run. Returns counts of what was resumed (``rerouted``, ``requeued``, ``relaunched``).

        See :mod:`serving.service.recovery` for the steps.
        """
        return recovery.recover_after_restart(self, spooled)
