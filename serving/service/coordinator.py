"""The coordinator: stored instances → complete studies → rules → tasks → runtime → results.

It owns no socket and no thread of its own besides the loops :class:`~serving.service.app.Service`
runs; every step writes its state to the job store before acting on it:

1. **Ingest** (:meth:`Coordinator.instance_stored`, :meth:`Coordinator.association_ended`): the
   gateways' callbacks put typed messages (:mod:`serving.service.ingest_queue`) on a queue; the
   ingest thread records instances in the job store in batches, feeds the assembler, and keeps
   each study's headers and rule facts in its :class:`~serving.service.in_flight.StudyInFlight`.
2. **Routing** (:meth:`Coordinator.tick`): studies the assembler declares complete are checked
   for identity (instances that disagree on PatientID, AccessionNumber, or an order for another
   patient → quarantine), marked complete, routed by the rules (decision recorded), and their
   tasks created (idempotent per generation) and submitted to the engine. The study then leaves
   memory (:meth:`Coordinator.forget`), whichever way routing ended.
3. **Results** (:class:`~serving.service.outcomes.ResultHandler`): the engine pushes finished
   jobs onto :class:`~serving.service.finished.FinishedJobs`; the results threads turn each into
   an ``AIResult``, enqueue its deliveries and finish the task exactly once.

Restart recovery (:meth:`Coordinator.recover`) lives in :mod:`serving.service.recovery`, which
reaches the coordinator only through the narrow :class:`~serving.service.recovery.Resumable`
interface.

The rules are evaluated once per decision point, on facts built incrementally (each header is
folded in once, at the first decision point after it arrived; never on the ingest thread, which
shares the interpreter with the receiving association): once when a study's first instances
are recorded (is it stat? then it is decoded while it arrives and
routed by the stat loop), and once for the instances and order known when its quiet period is
checked; routing reuses that decision when nothing changed since.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import nullcontext
from datetime import datetime, timedelta

import pydicom

from models.registry import Registry
from preprocessing.series import load_series
from preprocessing.volume import Volume
from router.result import Mode
from router.rules import Decision, RuleSet, StudyFacts, evaluate
from router.vocabulary import OrderContext, OrderPriority, PriorityClass
from router.worklist import AIStatus, Worklist, WorklistEntry
from serving.engine import EngineBusy, InferenceJob, JobResult
from serving.gateway.element_text import element_count, element_text
from serving.gateway.spool import StoredInstance
from serving.jobstore import (
    InstanceArrival,
    InstanceRow,
    JobStore,
    StudyState,
    TaskRow,
    TaskState,
)
from serving.metrics import Metrics
from serving.service import recovery
from serving.service.assembly import Arrival, CompleteStudy, StudyAssembler
from serving.service.assembly import StudyState as Tracked
from serving.service.finished import FinishedJobs, Launched
from serving.service.in_flight import StudiesInFlight, StudyInFlight
from serving.service.ingest_queue import IngestMessage, IngestQueue, Stored
from serving.service.outcomes import ResultHandler, ResultSink, set_ai_status
from serving.service.records import decision_json, identity_problem, order_problem
from serving.service.runtime import Runtime, SeriesSource
from serving.service.stat_gate import StatGate
from serving.service.streaming import StreamingVolumes

log = logging.getLogger(__name__)


class Coordinator:
    """Glue between gateway, assembler, rules, job store, runtime, worklist and results.

    Args:
        store: The job store.
        rules: Routing rules; ``rules_hash`` identifies them in routing decisions.
        registry: Resolves model references to ``name@version``.
        runtime: The inference runtime, or None when AI is unavailable (backend missing).
        worklist: The worklist to update.
        metrics: Service metrics.
        sink: Enqueues a finished task's result objects and messages by mode and destinations.
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
        rules: RuleSet,
        rules_hash: str,
        registry: Registry,
        runtime: Runtime | None,
        worklist: Worklist,
        metrics: Metrics,
        sink: ResultSink,
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
        self.rules = rules
        self.rules_hash = rules_hash
        self.registry = registry
        self.runtime = runtime
        self.worklist = worklist
        self.metrics = metrics
        self.quiet_period = dict(quiet_period_s)
        self.mono = mono
        self.utc = utc
        self.late_instances = late_instances
        self.streaming = streaming
        self.assembler = StudyAssembler(self._quiet_for, idle_timeout_s=idle_timeout_s)
        self.lock = threading.Condition()
        self.in_flight = StudiesInFlight()
        self.finished = FinishedJobs()
        self.results = ResultHandler(
            finished=self.finished,
            store=store,
            worklist=worklist,
            metrics=metrics,
            sink=sink,
            manifests=runtime.manifests if runtime is not None else {},
            gate=self.gate,
            utc=utc,
        )
        # started, refused by a busy engine: (task, attempt, ingest headers by SOP UID)
        self._waiting: list[tuple[TaskRow, int, Mapping[str, pydicom.Dataset] | None]] = []
        self.ingest_queue = IngestQueue(mono)

    # ---- ingest ------------------------------------------------------------------------------

    def instance_stored(self, instance: StoredInstance) -> None:
        """Queue a durably stored instance for recording (the gateway's callback: cheap).

        The spool made the instance durable before this call, so it may be acknowledged at
        once: the ingest thread records it in the job store (batched: one commit for what
        arrived meanwhile) and the assembler; a crash in between is healed by the spool rescan
        at start-up (:meth:`recover`).
        """
        self.ingest_queue.stored(instance)

    def association_ended(self, study_uids: Sequence[str]) -> None:
        """The association (or STOW request) that carried these studies ended.

        Queued behind the association's instances, so the release is applied after them.
        """
        self.ingest_queue.released(study_uids)

    def run_ingest(
        self, stopping: threading.Event, batch: int = 64, linger_s: float = 0.05
    ) -> None:
        """The ingest thread: record queued instances in batches, apply releases in order.

        After the first instance it waits up to ``linger_s`` (seconds) for more, so a stream of
        C-STOREs is recorded a few instances per transaction instead of one (a transaction
        costs about a millisecond of Python whatever its size, under the GIL the receiving
        association needs). An association release ends the wait at once. Quiet periods count
        from the acknowledgement times carried in the messages, so the wait delays no study.
        """
        while not stopping.is_set():
            items = self.ingest_queue.take(batch=batch, linger_s=linger_s)
            if not items:
                continue
            try:
                self.ingest(items)
            # The job store may be briefly unavailable, or one instance unreadable: whatever it
            # is, the thread must live on (every instance is durable in the spool).
            except Exception:
                log.exception("recording a batch failed; retrying its items one by one")
                for item in items:
                    try:
                        self.ingest([item])
                    # durable in the spool: the restart rescan records it
                    except Exception:
                        log.exception("an instance could not be recorded; healed on restart")

    def ingest(self, items: Sequence[IngestMessage]) -> None:
        """Record stored instances and apply association releases, in arrival order.

        Times are when the gateway acknowledged (monotonic), so a busy ingest thread never
        lengthens a study's quiet period.
        """
        pending: list[tuple[str, pydicom.Dataset, str, str, float]] = []
        for item in items:
            if isinstance(item, Stored):
                instance = item.instance
                header = instance.header
                if header is None:
                    try:
                        header = pydicom.dcmread(instance.path, stop_before_pixels=True)
                    # The spool validated it; a file that vanished or broke since (any error
                    # pydicom may raise) heals on restart.
                    except Exception:
                        log.exception("a spooled instance could not be read back")
                        continue
                calling_ae = instance.source.calling_ae or ""
                pending.append(
                    (instance.study_instance_uid, header, str(instance.path), calling_ae, item.at)
                )
            else:
                self.record_batch(pending)
                pending = []
                with self.lock:
                    for uid in item.study_uids:
                        self.assembler.released(uid, item.at)
                    self.lock.notify_all()
        self.record_batch(pending)

    def ingest_idle(self) -> bool:
        """Nothing waits to be recorded (tests and the demo poll this)."""
        return self.ingest_queue.empty()

    def record_batch(self, batch: Sequence[tuple[str, pydicom.Dataset, str, str, float]]) -> None:
        """Record instances in the job store (one transaction) and track them.

        Each item is ``(study UID, header, spool path, calling AE, acknowledged at)``, the
        time in monotonic seconds.
        """
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
                arrival = self.assembler.add(
                    study_uid=study_uid,
                    series_uid=arrival_row.series_uid,
                    sop_uid=arrival_row.sop_uid,
                    path=path,
                    modality=arrival_row.modality,
                    now=now,
                    expected=expected,
                )
                ignored = arrival is Arrival.LATE and self.late_instances != "rerun"
                if arrival is Arrival.DUPLICATE:
                    # a re-send: kept only while its study is in flight (a study routed
                    # already is not opened again by its own instances)
                    flight = self.in_flight.get(study_uid)
                    if flight is not None:
                        flight.add(arrival_row.sop_uid, header)
                elif not ignored:
                    flight = self.in_flight.open(study_uid, calling_ae)
                    flight.add(arrival_row.sop_uid, header)
                if arrival is Arrival.LATE:
                    self._late_instance(study_uid)
            stat = result.new and not ignored and self._stat_eligible(study_uid)
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

    def forget(self, study_uid: str) -> None:
        """Drop the study's in-memory state: it left the coordinator (routed with or without
        tasks, quarantined, routing failed). What was recorded stays in the job store."""
        with self.lock:
            self.in_flight.forget(study_uid)

    # ---- decisions ---------------------------------------------------------------------------

    def _decide(self, flight: StudyInFlight, order: OrderContext | None) -> Decision:
        """The rules' decision for the study's instances and order known now (evaluated once
        per change of either; model references resolved through the registry)."""

        def run(facts: StudyFacts, order: OrderContext | None) -> Decision:
            return evaluate(self.rules, facts, order, resolve_model=self._resolve)

        return flight.decide(order, run)

    def _unresolved(self, flight: StudyInFlight, order: OrderContext | None) -> Decision:
        """The decision without resolving model references: for the stat judgement (which
        needs only the matching rules), and for the quiet period when a rule names a model the
        registry lacks (routing will fail, but the study still gets its class's timing)."""
        facts = flight.study_facts(order)
        return evaluate(self.rules, facts, order)

    def _quiet_for(self, study: Tracked) -> float:
        """The study's quiet period: that of the most urgent task the rules would give it."""
        quiet = self.quiet_period[PriorityClass.ROUTINE]
        flight = self.in_flight.get(study.study_uid)
        if flight is None or not flight.headers:
            return quiet
        if flight.quiet is not None and flight.quiet[0] == flight.count:
            return flight.quiet[1]
        try:
            order = self._order_for(flight)
            try:
                decision = self._decide(flight, order)
            # The registry may fail on its own (an unknown model, a broken manifest or state
            # file): the priority does not depend on the model, so the rules decide alone.
            except Exception:  # noqa: BLE001
                decision = self._unresolved(flight, order)
            if decision.tasks:
                urgent = min((t.priority for t in decision.tasks), key=lambda p: p.rank)
                quiet = self.quiet_period.get(urgent, quiet)
        # The rules may fail on any malformed header (a value pydicom cannot convert): such a
        # study waits the routine period and routing reports the error.
        except Exception:
            log.debug("quiet period: rules could not evaluate study", exc_info=True)
        flight.quiet = (flight.count, quiet)
        return quiet

    def _stat_eligible(self, uid: str) -> bool:
        """Whether the rules would make this study stat, judged once from its first instances:
        only those are decoded while they arrive (streaming costs CPU that ingest needs)."""
        with self.lock:
            flight = self.in_flight.get(uid)
            if flight is None:
                return False
            if flight.stat is not None:
                return flight.stat
        try:
            order = self._order_for(flight)
            # Model references are not resolved here: this runs on the ingest thread, and the
            # registry reads the models folder (milliseconds) for what matching rules alone say.
            decision = self._unresolved(flight, order)
            matched = {e.rule for e in decision.explanations if e.matched}
            # a matching rule whose task is stat (series size is not known yet: ignore it)
            stat = any(
                str(spec.priority) == PriorityClass.STAT.value
                or (order is not None and order.priority is OrderPriority.STAT)
                for rule in self.rules.rules
                if rule.name in matched
                for spec in rule.produce
            )
        # As for the quiet period: a study the rules cannot read now is not stat.
        except Exception:  # noqa: BLE001
            stat = False
        flight.stat = stat
        return stat

    def _order_for(self, flight: StudyInFlight) -> OrderContext | None:
        first = next(iter(flight.headers.values()), None)
        accession = str(first.get("AccessionNumber", "")) if first is not None else ""
        if not accession:
            return None
        row = self.store.order(accession)
        return row.context() if row is not None else None

    # ---- the loop ----------------------------------------------------------------------------

    def has_work(self) -> bool:
        """Refused submissions wait for the loop (caller holds the lock)."""
        return bool(self._waiting)

    def next_wakeup_s(self, *, stat_only: bool = False) -> float | None:
        """Monotonic time of the next assembly deadline (None: nothing waits); of stat studies
        only with ``stat_only``."""
        with self.lock:
            only = self._is_stat if stat_only else None
            return self.assembler.next_check_s(self.mono(), only=only)

    def _is_stat(self, study_uid: str) -> bool:
        """Whether the rules make the study stat (as judged from its first instances)."""
        flight = self.in_flight.get(study_uid)
        return flight is not None and bool(flight.stat)

    def tick(self, *, stat_only: bool = False) -> None:
        """Route complete studies and submit waiting tasks.

        With ``stat_only`` only studies the rules make stat are routed (the service runs a
        thread for those next to the general one, so a stat CT head never waits while a large
        routine study is being routed).
        """
        with self.lock:
            due = self.assembler.due(self.mono(), only=self._is_stat if stat_only else None)
            # Studies the rules make stat are routed first when several complete together.
            stats = {study.study_uid: self._is_stat(study.study_uid) for study in due}
        due.sort(key=lambda study: not stats[study.study_uid])
        for study in due:
            stat = stats[study.study_uid]
            if not stat:  # a stat study being routed, built or delivered goes first
                self.gate.step_aside()
            try:
                with self.gate.stat_stage() if stat else nullcontext():
                    self.route(study)
            # Any error routing one study (a broken header, a store hiccup) must not stop the
            # loop that routes every other study: it stays complete in the job store and is
            # routed again at the next start.
            except Exception:
                log.exception("routing failed for a study; it stays complete and is retried")
                self.store.audit("routing-failed", study_uid=study.study_uid)
                self.forget(study.study_uid)
        if due:  # wake the general loop: it publishes the worklist with the studies just routed
            with self.lock:
                self.lock.notify_all()
        if not stat_only:
            self._submit_waiting()

    # ---- routing -----------------------------------------------------------------------------

    def route(self, complete: CompleteStudy) -> Decision | None:
        """Identity checks, completion, routing decision and tasks for one complete study.

        Returns the decision, or None when the study was quarantined. Whichever way it ends
        (an error included), the study leaves memory.
        """
        decision: Decision | None = None
        try:
            decision = self._route(complete)
            return decision
        finally:
            self.forget(complete.study_uid)
            self._drop_unread_volumes(complete, decision)

    def _drop_unread_volumes(self, complete: CompleteStudy, decision: Decision | None) -> None:
        """Free the volumes decoded while the study arrived that no task of it will read (a
        series no rule runs a model on, a quarantined study): they would otherwise stay in
        memory until newer series push them out."""
        if self.streaming is None:
            return
        read = {t.series_instance_uid for t in decision.tasks} if decision is not None else set()
        if "" in read:  # a study-level task: which series it reads is the model's business
            return
        self.streaming.discard([uid for uid in complete.series if uid not in read])

    def _route(self, complete: CompleteStudy) -> Decision | None:
        uid = complete.study_uid
        with self.lock:
            flight = self.in_flight.get(uid)
            headers = list(flight.headers.values()) if flight is not None else []
        # After a restart or a re-run only the newest headers are in memory; the rules must see
        # every instance of the study (a series of 1 late slice has too few images to route).
        if flight is None or len(headers) < sum(len(p) for p in complete.series.values()):
            known = self.store.study(uid)
            flight = StudyInFlight(uid, known.calling_ae if known is not None else "")
            pruned = 0
            for paths in complete.series.values():
                for path in paths:
                    try:
                        header = pydicom.dcmread(path, stop_before_pixels=True)
                    except FileNotFoundError:  # removed by spool retention before a late one
                        pruned += 1
                        continue
                    flight.add(element_text(header, "SOPInstanceUID"), header)
            if pruned:
                self.store.audit(
                    "spool-pruned-rerun",
                    study_uid=uid,
                    detail={"headers_read": len(flight.headers), "headers_pruned": pruned},
                )
            headers = list(flight.headers.values())
        problem = identity_problem(headers)
        order = self._order_for(flight)
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
        decision = self._decide(flight, order)
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
            set_ai_status(self.worklist, task.study_instance_uid, AIStatus.UNAVAILABLE)
            self.store.finish_study(task.study_instance_uid)  # its last task ended (failed)
            return
        self._submit(task, attempt, headers)

    def _submit(
        self, task: TaskRow, attempt: int, headers: Mapping[str, pydicom.Dataset] | None = None
    ) -> None:
        assert self.runtime is not None
        rows = self.store.instances_of(task.series_instance_uid)
        if self.store.spool_prune(task.study_instance_uid) is not None:
            rows = self._still_spooled(task, rows)
        paths = [row.path for row in rows]
        known: dict[str, tuple[pydicom.Dataset, str]] | None = None
        if headers is not None and all(r.sop_instance_uid in headers for r in rows):
            known = {r.sop_instance_uid: (headers[r.sop_instance_uid], r.path) for r in rows}
        stat = task.priority is PriorityClass.STAT
        source = SeriesSource(paths, loader=self.loader(task.series_instance_uid, stat=stat))
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
        launched = Launched(task, attempt, source, self.mono(), known)
        finished = self.finished

        def done(f: Future[JobResult], launched: Launched = launched) -> None:
            finished.push(launched, f, deadline_mono)
            with self.lock:  # the loop resubmits tasks a busy engine refused
                self.lock.notify_all()

        future.add_done_callback(done)

    def _still_spooled(self, task: TaskRow, rows: list[InstanceRow]) -> list[InstanceRow]:
        """A re-run of a study whose files retention removed reads the instances still on disk
        (those that came after the prune); the audit trail says how many it lacks."""
        present = [row for row in rows if os.path.exists(row.path)]
        if len(present) < len(rows):
            self.store.audit(
                "spool-pruned-rerun",
                study_uid=task.study_instance_uid,
                task_id=task.task_id,
                detail={
                    "instances_read": len(present),
                    "instances_pruned": len(rows) - len(present),
                },
            )
        return present

    def loader(self, series_uid: str, *, stat: bool = False) -> Callable[[Sequence[str]], Volume]:
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
        """The results thread (see :meth:`ResultHandler.run
        <serving.service.outcomes.ResultHandler.run>`)."""
        self.results.run(stopping, stat_only=stat_only)

    def drain_results(self) -> None:
        """Handle every finished job now (tests, shutdown)."""
        self.results.drain()

    # ---- restart (serving.service.recovery) --------------------------------------------------

    def recover(self, spooled: Sequence[StoredInstance]) -> dict[str, int]:
        """Resume after a restart: every spooled instance recorded, receiving studies tracked
        again (their quiet period restarts now), complete studies re-routed, interrupted tasks
        re-run. Returns counts of what was resumed (``rerouted``, ``requeued``, ``relaunched``).

        See :mod:`serving.service.recovery` for the steps.
        """
        return recovery.recover_after_restart(self, spooled)

    def resume_receiving(self, study_uid: str, generation: int | None) -> None:
        """A study still receiving when the process stopped: its association is gone, so it is
        released now (its quiet period restarts); ``generation``: the one it resumes at (None:
        keep the assembler's)."""
        with self.lock:
            tracked = self.assembler.study(study_uid)
            if tracked is not None and generation is not None:
                tracked.generation = generation
            self.assembler.released(study_uid, self.mono())

    def mark_handed_out(self, study_uid: str, generation: int) -> None:
        """A study already routed at ``generation``: later instances of it are late."""
        with self.lock:
            tracked = self.assembler.study(study_uid)
            if tracked is not None:
                tracked.handed_out = True
                tracked.generation = generation
