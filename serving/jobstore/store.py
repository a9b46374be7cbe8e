"""The durable job store: studies, orders, tasks, routing decisions, audit and transitions.

Every method runs in its own transaction and commits before it returns, so a state change is on
disk before anyone acts on it; each state change writes its transition row in the same
transaction. Methods return frozen rows (``*Row``), never ORM objects, and are safe to call
from many threads. Times come from the injected clock and must be timezone-aware.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import fields
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from router.vocabulary import OrderContext, OrderPriority, PriorityClass
from serving.jobstore.arrivals import record_arrivals
from serving.jobstore.changes import (
    Clock,
    InstanceArrival,
    StateChanges,
    get_entity,
    hash_patient_id,
    reject_phi,
    utc_now,
)
from serving.jobstore.retention import prunable_studies, record_prune
from serving.jobstore.schema import (
    RELAXED_SYNC_OPTION,
    WRITE_OPTION,
    AuditEvent,
    AuditRow,
    Instance,
    InstanceRecordResult,
    InstanceRow,
    Order,
    OrderIdentifiers,
    OrderRow,
    RoutingDecision,
    RoutingRow,
    Series,
    SeriesRow,
    SpoolPrune,
    SpoolPruneRow,
    Study,
    StudyRow,
    Task,
    TaskRow,
    Transition,
    TransitionRow,
    authorities_of,
    create_tables,
    make_engine,
    to_row,
)
from serving.jobstore.states import (
    EntityKind,
    OrderState,
    SeriesState,
    StudyState,
    TaskState,
    UnknownEntityError,
)
from serving.jobstore.study_end import end_study_if_settled, planned_tasks_exist

DEFAULT_URL = "sqlite:///var/statlane.db"
MODES = ("shadow", "triage", "assistant")
"""Values of ``router.result.Mode`` (not imported: it would pull torch into the CLI)."""

_CANCEL_CONTROLS = frozenset({"CA", "OC", "DC", "OD"})  # ORC-1 codes that end an order
_CONFLICT_RETRIES = 3

logger = logging.getLogger(__name__)
T = TypeVar("T")


class JobStore:
    """Durable state of the runtime, in SQLite (default) or PostgreSQL.

    Args:
        url: SQLAlchemy URL, e.g. ``sqlite:///var/statlane.db`` or ``postgresql://host/db``.
        clock: Returns the current time, timezone-aware (UTC or any offset; stored as UTC).
        busy_timeout_s: How long a SQLite writer waits for the write lock, seconds.
    """

    def __init__(
        self, url: str = DEFAULT_URL, *, clock: Clock, busy_timeout_s: float = 30.0
    ) -> None:
        self.url = url
        self._clock = clock
        self._engine = make_engine(url, busy_timeout_s)
        create_tables(self._engine)
        self._reads = sessionmaker(bind=self._engine, expire_on_commit=False)
        writer = self._engine.execution_options(**{WRITE_OPTION: True})
        self._writes = sessionmaker(bind=writer, expire_on_commit=False)
        relaxed = self._engine.execution_options(**{WRITE_OPTION: True, RELAXED_SYNC_OPTION: True})
        self._relaxed_writes = sessionmaker(bind=relaxed, expire_on_commit=False)
        # SQLite has one writer at a time, and a writer that finds the lock taken sleeps in
        # SQLite's busy handler (1, 2, 5, 10 ... 100 ms steps) however soon it is released.
        # Writers of this process queue on a Python lock instead and start the moment the
        # previous commit is done; the busy timeout is left for other processes.
        self._write_lock: threading.RLock | None = (
            threading.RLock() if self._engine.dialect.name == "sqlite" else None
        )

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (for health checks and tests)."""
        return self._engine

    def now(self) -> datetime:
        """The injected clock's time in UTC; ``ValueError`` if the clock returns a naive time."""
        return utc_now(self._clock)

    def close(self) -> None:
        """Release every pooled connection."""
        self._engine.dispose()

    @contextmanager
    def writing(
        self, at: datetime | None = None, *, durable: bool = True
    ) -> Iterator[StateChanges]:
        """A write transaction whose changes are stamped ``at`` (default: now), committed on exit.

        For the job store's own modules (the outbox); callers use the methods. ``durable=False``
        (SQLite): the commit returns before it is on disk; it becomes durable with the next
        durable commit (the WAL is written in order), and it survives a crash of the process
        anyway. Only for what a restart rebuilds after a power cut and what no effect outside
        the job store depends on before a durable commit follows: instance records (the spool
        is rescanned), and a study's routing up to its task's start (completion, routing
        decision, task creation and start: a restart re-routes a complete study and re-runs an
        interrupted task; the task's end and its outbox items are durable commits). The stat
        path then waits for one fsync less per step.
        """
        sessions = self._writes if durable else self._relaxed_writes
        with self._write_lock or nullcontext(), sessions.begin() as session:
            yield StateChanges(session, self.now() if at is None else utc_now(lambda: at))

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A read-only transaction (for the job store's own modules)."""
        with self._reads.begin() as session:
            yield session

    def write_retrying(
        self, work: Callable[[StateChanges], T], at: datetime | None = None, *, durable: bool = True
    ) -> T:
        """Run ``work`` in a write transaction, again if a concurrent insert won a unique key.

        On SQLite writers are serialised and this never retries; on PostgreSQL two threads may
        both insert the first instance of a study, and the loser re-reads the winner's row.
        ``durable`` as for :meth:`writing`.
        """
        for attempt in range(_CONFLICT_RETRIES):
            try:
                with self.writing(at, durable=durable) as changes:
                    return work(changes)
            except IntegrityError:
                if attempt == _CONFLICT_RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    # ---- studies, series, instances -------------------------------------------------------

    def record_instance(
        self,
        study_uid: str,
        series_uid: str,
        sop_uid: str,
        path: str,
        accession: str,
        patient_id: str,
        calling_ae: str,
        modality: str,
    ) -> InstanceRecordResult:
        """Record one received instance (idempotent on ``sop_uid``) and check its identity.

        The patient ID is kept only as a SHA-256 digest. ``conflict`` names (without values)
        the identity fields that disagree with the study's first instance or with the order
        of the same accession; the instance is recorded anyway (it is already on disk) and
        the caller decides whether to quarantine.
        """
        arrival = InstanceArrival(
            study_uid, series_uid, sop_uid, path, accession, patient_id, calling_ae, modality
        )
        return self.record_instances([arrival])[0]

    def record_instances(self, arrivals: Sequence[InstanceArrival]) -> list[InstanceRecordResult]:
        """Record several instances in one transaction, in order.

        Each behaves as :meth:`record_instance`; the gateway batches what arrived while the
        previous commit was being written. A batch costs a handful of SQL statements, not a
        few per instance (see :mod:`serving.jobstore.arrivals`).

        The commit is not fsynced (SQLite ``synchronous=NORMAL``): the instance is durable in
        the spool already, which is rescanned at start-up, so an fsync here would only compete
        with the spool's own fsync before the next acknowledgement. The next durable commit
        (study complete, task created) makes these records durable too (the WAL is written in
        order).
        """
        if not arrivals:
            return []

        hashed = {a.patient_id: hash_patient_id(a.patient_id) for a in arrivals}
        digests = [hashed[a.patient_id] for a in arrivals]

        def work(changes: StateChanges) -> list[InstanceRecordResult]:
            return record_arrivals(changes, arrivals, digests)

        return self.write_retrying(work, durable=False)

    def mark_study_complete(self, study_uid: str, series_counts: Mapping[str, int]) -> StudyRow:
        """Receiving → complete; ``series_counts`` (series UID → instances) become expected counts.

        Every series of the study is marked complete. Calling it again on a complete study
        changes nothing (a restart may repeat it).
        """
        with self.writing(durable=False) as changes:  # re-routed after a power cut
            session = changes.session
            study = get_entity(session, Study, EntityKind.STUDY, study_uid)
            if study.state == StudyState.COMPLETE:
                return to_row(StudyRow, study)
            series = session.scalars(select(Series).where(Series.study_instance_uid == study_uid))
            by_uid = {s.series_instance_uid: s for s in series}
            for unknown in sorted(set(series_counts) - set(by_uid)):
                raise UnknownEntityError(EntityKind.SERIES, unknown)
            detail = {"series_counts": dict(series_counts)}
            changes.record(EntityKind.STUDY, study_uid, study.state, StudyState.COMPLETE, detail)
            study.state, study.completed_at = StudyState.COMPLETE, changes.at
            for uid, row in by_uid.items():
                if uid in series_counts:
                    row.expected_count = int(series_counts[uid])
                if row.complete_at is None:
                    row.complete_at = changes.at
                    change = (SeriesState.RECEIVING, SeriesState.COMPLETE)
                    changes.record(EntityKind.SERIES, uid, *change)
            return to_row(StudyRow, study)

    def quarantine_study(self, study_uid: str, reason: str) -> StudyRow:
        """Hold a study for a person; ``reason`` must name fields, never patient values."""
        row = self.set_study_state(study_uid, StudyState.QUARANTINED, {"reason": reason})
        logger.warning("study %s quarantined: %s", study_uid, reason)
        return row

    def set_study_state(
        self, study_uid: str, state: StudyState, detail: Mapping[str, Any] | None = None
    ) -> StudyRow:
        """Move a study to ``state`` (no-op if already there); ``TransitionError`` if not allowed.

        Quarantine keeps ``detail["reason"]``; going back to receiving (late instances, a
        released quarantine) clears the completion time and the quarantine reason.
        """
        with self.writing() as changes:
            study = get_entity(changes.session, Study, EntityKind.STUDY, study_uid)
            if study.state == state:
                return to_row(StudyRow, study)
            changes.record(EntityKind.STUDY, study_uid, study.state, state, detail)
            study.state = state
            if state == StudyState.QUARANTINED:
                study.quarantine_reason = str((detail or {}).get("reason", ""))
            elif state == StudyState.RECEIVING:
                study.completed_at, study.quarantine_reason = None, None
            elif state == StudyState.COMPLETE:
                study.completed_at = changes.at
            return to_row(StudyRow, study)

    def finish_study(self, study_uid: str) -> bool:
        """Routed → done once every planned task exists and none is queued or running.

        One transaction, so a re-run being routed (its decision written, its tasks not yet)
        never lets an older generation's result close the study. True if the study is done.
        """
        with self.writing() as changes:
            return end_study_if_settled(changes, study_uid)

    def planned_tasks_exist(self, study_uid: str) -> bool:
        """Whether every task of the study's newest routing decision has been created."""
        with self.reading() as session:
            return planned_tasks_exist(session, study_uid)

    def study(self, study_uid: str) -> StudyRow | None:
        """One study, or None."""
        with self.reading() as session:
            study = session.get(Study, study_uid)
            return None if study is None else to_row(StudyRow, study)

    def studies(self, state: StudyState | None = None) -> list[StudyRow]:
        """Studies (in ``state`` if given), oldest first."""
        query = select(Study).order_by(Study.first_seen_at, Study.study_instance_uid)
        if state is not None:
            query = query.where(Study.state == state)
        with self.reading() as session:
            return [to_row(StudyRow, s) for s in session.scalars(query)]

    def series_of(self, study_uid: str) -> list[SeriesRow]:
        """The study's series, in order of their last instance."""
        query = (
            select(Series)
            .where(Series.study_instance_uid == study_uid)
            .order_by(Series.last_instance_at, Series.series_instance_uid)
        )
        with self.reading() as session:
            return [to_row(SeriesRow, s) for s in session.scalars(query)]

    def instances_of(self, series_uid: str) -> list[InstanceRow]:
        """The series' instances in the order they arrived (``seq``)."""
        query = select(Instance).where(Instance.series_instance_uid == series_uid)
        with self.reading() as session:
            return [to_row(InstanceRow, i) for i in session.scalars(query.order_by(Instance.seq))]

    # ---- spool retention ------------------------------------------------------------------

    def prunable_studies(self, grace_s: float, limit: int = 100) -> list[str]:
        """Done studies whose instance files may leave the spool now (oldest first).

        Every task ended (done, failed, cancelled), every outbox item of those tasks delivered
        or dead, and ``grace_s`` seconds passed since the last of those and since the study's
        last instance; a study pruned before qualifies again only after a later instance.
        """
        with self.reading() as session:
            return prunable_studies(session, self.now(), grace_s, limit)

    def record_spool_prune(self, study_uid: str, instances: int, bytes_removed: int) -> None:
        """Record that ``instances`` files (``bytes_removed`` bytes) of the study were removed;
        the instance rows keep their paths."""
        with self.writing() as changes:
            record_prune(changes, study_uid, instances, bytes_removed)

    def spool_prune(self, study_uid: str) -> SpoolPruneRow | None:
        """When the study's instance files were last removed from the spool, or None."""
        with self.reading() as session:
            row = session.get(SpoolPrune, study_uid)
            return None if row is None else to_row(SpoolPruneRow, row)

    # ---- orders ---------------------------------------------------------------------------

    def record_order(self, order: OrderContext) -> OrderRow:
        """Insert or update an order by accession; ORC-1 ``CA``/``OC``/``DC``/``OD`` cancel it.

        Empty fields of an update keep the stored value (HL7: empty means "no change").
        """
        if not order.accession_number:
            raise ValueError("order has no accession number; it cannot be joined to a study")
        cancel = order.order_control.upper() in _CANCEL_CONTROLS
        state = OrderState.CANCELLED if cancel else OrderState.ACTIVE
        digest = hash_patient_id(order.patient_id)

        def work(changes: StateChanges) -> OrderRow:
            row = changes.session.get(Order, order.accession_number)
            if row is None:
                row = Order(
                    accession_number=order.accession_number,
                    priority=OrderPriority.UNKNOWN,
                    patient_id_hash=None,
                    received_at=changes.at,
                    **dict.fromkeys(_ORDER_TEXT_FIELDS, ""),
                )
                changes.session.add(row)
            previous = row.state
            if order.priority != OrderPriority.UNKNOWN:
                row.priority = order.priority
            row.patient_id_hash = digest or row.patient_id_hash
            for name in _ORDER_TEXT_FIELDS:
                setattr(row, name, getattr(order, name) or getattr(row, name))
            row.order_control, row.state, row.updated_at = order.order_control, state, changes.at
            if previous != state:
                detail = {"order_control": order.order_control, "message": order.message_control_id}
                changes.record(EntityKind.ORDER, order.accession_number, previous, state, detail)
            received = authorities_of(order)
            if received:  # like the text fields: a role not sent again keeps what was stored
                extra = changes.session.get(OrderIdentifiers, order.accession_number)
                if extra is None:
                    extra = OrderIdentifiers(accession_number=order.accession_number)
                    extra.authorities = {}
                    changes.session.add(extra)
                extra.authorities = {**extra.authorities, **received}
            changes.session.flush()
            return _order_row(changes.session, row)

        return self.write_retrying(work)

    def order(self, accession: str) -> OrderRow | None:
        """The order of ``accession``, or None."""
        with self.reading() as session:
            row = session.get(Order, accession)
            return None if row is None else _order_row(session, row)

    def order_context(self, accession: str) -> OrderContext | None:
        """The received order of ``accession`` as order context; None without one (or for "")."""
        row = self.order(accession) if accession else None
        return row.context() if row is not None else None

    # ---- tasks ----------------------------------------------------------------------------

    def create_task(
        self,
        study_uid: str,
        series_uid: str,
        *,
        rule_name: str,
        model_name: str,
        model_version: str,
        priority: PriorityClass,
        deadline_at: datetime,
        mode: str,
        destinations: Sequence[str] = (),
        generation: int = 0,
    ) -> TaskRow:
        """A queued task, or the existing one with the same study, series, model and generation.

        Re-routing a study after a restart therefore never duplicates tasks; a re-run after
        late instances passes ``generation + 1``. ``series_uid`` is ``""`` for a study-level
        task; ``mode`` is a ``router.result.Mode`` value; ``deadline_at`` is timezone-aware.
        """
        if mode not in MODES:
            raise ValueError(f"task mode {mode!r} is not one of {', '.join(MODES)}")
        if generation < 0:
            raise ValueError(f"task generation must be >= 0, got {generation}")
        if deadline_at.tzinfo is None:
            raise ValueError("task deadline must be a timezone-aware datetime")
        identity = (
            Task.study_instance_uid == study_uid,
            Task.series_instance_uid == series_uid,
            Task.model_name == model_name,
            Task.model_version == model_version,
            Task.generation == generation,
        )

        def work(changes: StateChanges) -> TaskRow:
            existing = changes.session.scalars(select(Task).where(*identity)).first()
            if existing is not None:
                return to_row(TaskRow, existing)
            get_entity(changes.session, Study, EntityKind.STUDY, study_uid)
            task = Task(
                task_id=uuid.uuid4().hex,
                study_instance_uid=study_uid,
                series_instance_uid=series_uid,
                rule_name=rule_name,
                model_name=model_name,
                model_version=model_version,
                generation=generation,
                priority=PriorityClass(priority),
                deadline_at=deadline_at,
                mode=str(mode),
                destinations=list(destinations),
                state=TaskState.QUEUED,
                attempts=0,
                created_at=changes.at,
            )
            changes.session.add(task)
            model = f"{model_name}@{model_version}"
            detail = {"rule": rule_name, "model": model, "generation": generation}
            changes.record(EntityKind.TASK, task.task_id, None, TaskState.QUEUED, detail)
            changes.session.flush()
            return to_row(TaskRow, task)

        return self.write_retrying(work, durable=False)  # re-created by re-routing

    def start_task(self, task_id: str) -> int:
        """Queued → running; returns this attempt's number (1 for the first start).

        Raises ``TransitionError`` if the task is not queued (another worker started it).
        """
        with self.writing(durable=False) as changes:  # re-run after a power cut
            task = get_entity(changes.session, Task, EntityKind.TASK, task_id)
            attempt = task.attempts + 1
            changes.require(
                Task,
                EntityKind.TASK,
                task_id,
                (TaskState.QUEUED, TaskState.RUNNING),
                {"attempt": attempt},
                where=(Task.attempts == task.attempts,),
                attempts=attempt,
                started_at=changes.at,
            )
            return attempt

    def finish_task(self, task_id: str, attempt: int, result: Mapping[str, Any]) -> bool:
        """Running → done with ``result`` (JSON), only if ``attempt`` is still the live one.

        Returns False when the task was requeued, cancelled or finished by someone else, so
        no task runs twice to completion.
        """
        values = {"result": dict(result), "error": None}
        return self._end_attempt(task_id, attempt, TaskState.DONE, {"attempt": attempt}, values)

    def fail_task(self, task_id: str, attempt: int, error: str) -> bool:
        """Running → failed with ``error`` (one line, no PHI), only for the live ``attempt``."""
        detail = {"attempt": attempt, "error": error}
        return self._end_attempt(task_id, attempt, TaskState.FAILED, detail, {"error": error})

    def cancel_task(self, task_id: str, reason: str) -> bool:
        """Queued or running → cancelled (e.g. its order was cancelled); False if it had ended."""
        with self.writing() as changes:
            task = get_entity(changes.session, Task, EntityKind.TASK, task_id)
            if task.state not in (TaskState.QUEUED, TaskState.RUNNING):
                return False
            return changes.move(
                Task,
                EntityKind.TASK,
                task_id,
                (task.state, TaskState.CANCELLED),
                {"reason": reason},
                finished_at=changes.at,
                error=reason,
            )

    def requeue_interrupted(self) -> list[str]:
        """Running → queued for every task (on restart: their worker is gone); returns the ids."""
        with self.writing() as changes:
            running = changes.session.scalars(
                select(Task.task_id)
                .where(Task.state == TaskState.RUNNING)
                .order_by(Task.started_at, Task.task_id)
            ).all()
            change = (TaskState.RUNNING, TaskState.QUEUED)
            detail = {"reason": "interrupted"}
            return [t for t in running if changes.move(Task, EntityKind.TASK, t, change, detail)]

    def task(self, task_id: str) -> TaskRow | None:
        """One task, or None."""
        with self.reading() as session:
            task = session.get(Task, task_id)
            return None if task is None else to_row(TaskRow, task)

    def tasks(self, state: TaskState | None = None, study_uid: str | None = None) -> list[TaskRow]:
        """Tasks filtered by state and/or study, oldest first."""
        query = select(Task).order_by(Task.created_at, Task.task_id)
        if state is not None:
            query = query.where(Task.state == state)
        if study_uid is not None:
            query = query.where(Task.study_instance_uid == study_uid)
        with self.reading() as session:
            return [to_row(TaskRow, t) for t in session.scalars(query)]

    def _end_attempt(
        self,
        task_id: str,
        attempt: int,
        state: TaskState,
        detail: dict[str, Any],
        values: dict[str, Any],
    ) -> bool:
        with self.writing() as changes:
            get_entity(changes.session, Task, EntityKind.TASK, task_id)
            return changes.move(
                Task,
                EntityKind.TASK,
                task_id,
                (TaskState.RUNNING, state),
                detail,
                where=(Task.attempts == attempt,),
                finished_at=changes.at,
                **values,
            )

    # ---- routing, audit, transitions ------------------------------------------------------

    def record_routing(
        self, study_uid: str, decision: Mapping[str, Any], *, rules_hash: str = ""
    ) -> RoutingRow:
        """Keep a routing decision (matched rules and reasons, JSON); complete → routed.

        ``rules_hash`` identifies the rules file that decided. A study in another state (a
        restart re-routing it) keeps its state.
        """
        reject_phi(decision)
        with self.writing(durable=False) as changes:  # re-routed after a power cut
            study = get_entity(changes.session, Study, EntityKind.STUDY, study_uid)
            row = RoutingDecision(
                study_instance_uid=study_uid,
                at=changes.at,
                rules_hash=rules_hash,
                decision=dict(decision),
            )
            changes.session.add(row)
            if study.state == StudyState.COMPLETE:
                change = (StudyState.COMPLETE, StudyState.ROUTED)
                changes.record(EntityKind.STUDY, study_uid, *change, {"rules_hash": rules_hash})
                study.state = StudyState.ROUTED
            changes.session.flush()
            return to_row(RoutingRow, row)

    def routing_decisions(self, study_uid: str) -> list[RoutingRow]:
        """The study's routing decisions, oldest first."""
        query = select(RoutingDecision).where(RoutingDecision.study_instance_uid == study_uid)
        with self.reading() as session:
            rows = session.scalars(query.order_by(RoutingDecision.id))
            return [to_row(RoutingRow, r) for r in rows]

    def audit(
        self,
        event: str,
        *,
        study_uid: str | None = None,
        accession: str | None = None,
        task_id: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> AuditRow:
        """Append an audit event; ``ValueError`` if ``detail`` has a patient-identity key."""
        reject_phi(detail)
        with self.writing() as changes:
            row = AuditEvent(
                at=changes.at,
                event=event,
                study_instance_uid=study_uid,
                accession_number=accession,
                task_id=task_id,
                detail=dict(detail) if detail else None,
            )
            changes.session.add(row)
            changes.session.flush()
            return to_row(AuditRow, row)

    def audit_events(
        self, since: datetime | None = None, study_uid: str | None = None
    ) -> list[AuditRow]:
        """Audit events at or after ``since`` and/or of one study, in the order written."""
        query = select(AuditEvent).order_by(AuditEvent.id)
        if since is not None:
            query = query.where(AuditEvent.at >= since)
        if study_uid is not None:
            query = query.where(AuditEvent.study_instance_uid == study_uid)
        with self.reading() as session:
            return [to_row(AuditRow, a) for a in session.scalars(query)]

    def transitions(self, entity_id: str, kind: EntityKind | None = None) -> list[TransitionRow]:
        """State changes of one entity (of any kind, or of ``kind``), in the order written."""
        query = select(Transition).where(Transition.entity_id == entity_id)
        if kind is not None:
            query = query.where(Transition.entity_kind == str(kind))
        with self.reading() as session:
            rows = session.scalars(query.order_by(Transition.id))
            return [to_row(TransitionRow, t) for t in rows]


def _order_row(session: Session, row: Order) -> OrderRow:
    """The frozen row of an order, with the assigning authorities of its identifiers."""
    extra = session.get(OrderIdentifiers, row.accession_number)
    names = [f.name for f in fields(OrderRow) if f.name != "authorities"]
    return OrderRow(
        **{name: getattr(row, name) for name in names},
        authorities=dict(extra.authorities) if extra is not None else {},
    )


_ORDER_TEXT_FIELDS = (
    "procedure_code",
    "procedure_scheme",
    "procedure_meaning",
    "indication",
    "placer_order_number",
    "filler_order_number",
    "study_instance_uid",
    "message_control_id",
)
