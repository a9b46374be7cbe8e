"""The job store's tables (SQLAlchemy 2.0 typed ORM), their frozen read rows, and the engine.

SQLite (the default) runs in WAL mode with ``synchronous=FULL``, so a committed row survives a
power cut, and every write transaction starts with ``BEGIN IMMEDIATE``: a read-then-write
transaction takes the single write lock up front instead of failing with a busy snapshot when
another thread commits in between. PostgreSQL URLs work unchanged (plain types only; the API
relies on conditional UPDATEs and unique constraints, not on SQLite behaviour).

Times are stored as UTC. Patient IDs are stored only as SHA-256 digests; patient names never.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Dialect,
    Engine,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy import DateTime as _DateTime
from sqlalchemy import Enum as _Enum
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import StaticPool
from sqlalchemy.types import TypeDecorator

from router.vocabulary import AssigningAuthority, OrderContext, OrderPriority, PriorityClass
from serving.jobstore.states import EntityKind, OrderState, OutboxState, StudyState, TaskState

WRITE_OPTION = "statlane_write"
#: Execution option: a write transaction whose commit need not reach the disk before it returns
#: (SQLite ``synchronous=NORMAL``), for records that can be rebuilt from elsewhere.
RELAXED_SYNC_OPTION = "statlane_relaxed_sync"
"""Execution option that marks an engine/connection whose transactions will write."""

UID = String(64)  # DICOM UIDs are at most 64 characters


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite keeps naive UTC text)."""

    impl = _DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()} given; use timezone-aware UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _state(enum: type[StrEnum]) -> _Enum:
    """Store a StrEnum by value as VARCHAR (no native enum type, no CHECK constraint)."""
    return _Enum(enum, native_enum=False, length=16, values_callable=lambda e: [m.value for m in e])


class Base(DeclarativeBase):
    """Declarative base of the job store's tables."""


class Study(Base):
    """One study, from its first instance on."""

    __tablename__ = "studies"

    study_instance_uid: Mapped[str] = mapped_column(UID, primary_key=True)
    accession_number: Mapped[str] = mapped_column(String(64), index=True)
    patient_id_hash: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[StudyState] = mapped_column(_state(StudyState), index=True)
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    quarantine_reason: Mapped[str | None] = mapped_column(Text)
    calling_ae: Mapped[str] = mapped_column(String(16))


class Series(Base):
    """One series of a study; ``expected_count`` comes with the study's completion."""

    __tablename__ = "series"

    series_instance_uid: Mapped[str] = mapped_column(UID, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(
        ForeignKey("studies.study_instance_uid"), index=True
    )
    modality: Mapped[str] = mapped_column(String(16))
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    expected_count: Mapped[int | None] = mapped_column(Integer)
    last_instance_at: Mapped[datetime] = mapped_column(UTCDateTime)
    complete_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Instance(Base):
    """One received instance and where the spool keeps it."""

    __tablename__ = "instances"
    __table_args__ = (UniqueConstraint("series_instance_uid", "seq", name="uq_instance_seq"),)

    sop_instance_uid: Mapped[str] = mapped_column(UID, primary_key=True)
    series_instance_uid: Mapped[str] = mapped_column(ForeignKey("series.series_instance_uid"))
    seq: Mapped[int] = mapped_column(Integer)  # 1-based arrival position within the series
    path: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)


class SpoolPrune(Base):
    """A study whose instance files were removed from the spool (retention); its instance rows
    keep their paths. A table of its own: ``create_tables`` never adds columns."""

    __tablename__ = "spool_prunes"

    study_instance_uid: Mapped[str] = mapped_column(UID, primary_key=True)
    pruned_at: Mapped[datetime] = mapped_column(UTCDateTime)
    instances: Mapped[int] = mapped_column(Integer)
    bytes_removed: Mapped[int] = mapped_column(BigInteger)


class Order(Base):
    """One imaging order (fields of ``OrderContext``; the patient ID only as a digest)."""

    __tablename__ = "orders"

    accession_number: Mapped[str] = mapped_column(String(64), primary_key=True)
    priority: Mapped[str] = mapped_column(String(16))
    procedure_code: Mapped[str] = mapped_column(String(64))
    procedure_scheme: Mapped[str] = mapped_column(String(32))
    procedure_meaning: Mapped[str] = mapped_column(Text)
    indication: Mapped[str] = mapped_column(Text)
    patient_id_hash: Mapped[str | None] = mapped_column(String(64))
    placer_order_number: Mapped[str] = mapped_column(String(64))
    filler_order_number: Mapped[str] = mapped_column(String(64))
    study_instance_uid: Mapped[str] = mapped_column(UID)
    order_control: Mapped[str] = mapped_column(String(8))
    message_control_id: Mapped[str] = mapped_column(String(64))
    state: Mapped[OrderState] = mapped_column(_state(OrderState))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class OrderIdentifiers(Base):
    """Who assigned an order's identifiers, as received: role → [namespace, universal ID, type].

    Roles: ``placer`` and ``filler`` (EI-2..4 of ORC-2/ORC-3), ``patient`` (PID-3.4). A table of
    its own, not columns of ``orders``: ``create_tables`` adds missing tables to an existing
    store, never missing columns.
    """

    __tablename__ = "order_identifiers"

    accession_number: Mapped[str] = mapped_column(
        ForeignKey("orders.accession_number"), primary_key=True
    )
    authorities: Mapped[dict[str, list[str]]] = mapped_column(JSON)


AUTHORITY_ROLES = ("placer", "filler", "patient")
"""Keys of ``OrderIdentifiers.authorities`` and ``OrderRow.authorities``."""


def authorities_of(order: OrderContext) -> dict[str, list[str]]:
    """The non-empty assigning authorities of ``order`` by role (JSON for the job store)."""
    by_role = {
        "placer": order.placer_order_authority,
        "filler": order.filler_order_authority,
        "patient": order.patient_id_authority,
    }
    return {
        role: [a.namespace_id, a.universal_id, a.universal_id_type]
        for role, a in by_role.items()
        if a
    }


def _authority(authorities: dict[str, list[str]], role: str) -> AssigningAuthority:
    parts = [*authorities.get(role, []), "", "", ""][:3]
    return AssigningAuthority(str(parts[0]), str(parts[1]), str(parts[2]))


class Task(Base):
    """One inference task."""

    __tablename__ = "tasks"
    __table_args__ = (
        # One task per (study, series, model version, generation): re-routing is idempotent.
        UniqueConstraint(
            "study_instance_uid",
            "series_instance_uid",
            "model_name",
            "model_version",
            "generation",
            name="uq_task_identity",
        ),
    )

    task_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(
        ForeignKey("studies.study_instance_uid"), index=True
    )
    series_instance_uid: Mapped[str] = mapped_column(UID)  # "" for a study-level task
    rule_name: Mapped[str] = mapped_column(String(128))
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(32))
    generation: Mapped[int] = mapped_column(Integer)
    priority: Mapped[PriorityClass] = mapped_column(_state(PriorityClass))
    deadline_at: Mapped[datetime] = mapped_column(UTCDateTime)
    mode: Mapped[str] = mapped_column(String(16))
    destinations: Mapped[list[str]] = mapped_column(JSON)
    state: Mapped[TaskState] = mapped_column(_state(TaskState), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)


class Transition(Base):
    """One state change of a study, series, task, order or outbox item."""

    __tablename__ = "transitions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    entity_kind: Mapped[str] = mapped_column(String(16))
    entity_id: Mapped[str] = mapped_column(String(64), index=True)
    from_state: Mapped[str | None] = mapped_column(String(16))
    to_state: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class RoutingDecision(Base):
    """Which rules matched a study and why."""

    __tablename__ = "routing_decisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_instance_uid: Mapped[str] = mapped_column(
        ForeignKey("studies.study_instance_uid"), index=True
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    rules_hash: Mapped[str] = mapped_column(String(64))
    decision: Mapped[dict[str, Any]] = mapped_column(JSON)


class AuditEvent(Base):
    """One audit event; never patient names."""

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    event: Mapped[str] = mapped_column(String(64))
    study_instance_uid: Mapped[str | None] = mapped_column(UID, index=True)
    accession_number: Mapped[str | None] = mapped_column(String(64))
    task_id: Mapped[str | None] = mapped_column(String(32))
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class OutboxEntry(Base):
    """One delivery waiting, in flight, done or dead."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_due", "state", "priority", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(String(32), index=True)
    destination: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16))
    payload_path: Mapped[str | None] = mapped_column(Text)
    payload: Mapped[bytes | None] = mapped_column(LargeBinary)
    payload_is_text: Mapped[bool] = mapped_column(Boolean, default=False)
    dedupe_key: Mapped[str] = mapped_column(String(255), unique=True)
    priority: Mapped[int] = mapped_column(Integer)  # PriorityClass.rank: 0 (stat) goes first
    state: Mapped[OutboxState] = mapped_column(_state(OutboxState))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


def make_engine(url: str, busy_timeout_s: float = 30.0) -> Engine:
    """An engine for ``url``; SQLite gets WAL, ``synchronous=FULL``, foreign keys, busy timeout.

    The parent folder of a SQLite file is created. An in-memory SQLite database is shared by
    all threads through one connection: use it for single-threaded tests only.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    database = parsed.database or ""
    in_memory = database in ("", ":memory:")
    if in_memory:
        engine = create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
    else:
        Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url)
    timeout_ms = int(busy_timeout_s * 1000)

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        # Take BEGIN away from the sqlite3 module: `_begin` below emits it, so reads are
        # repeatable and writers lock up front.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        if not in_memory:
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA busy_timeout={timeout_ms}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        options = connection.get_execution_options()
        writes = options.get(WRITE_OPTION, False)
        if writes:
            # Durability per transaction: FULL fsyncs the WAL at commit, NORMAL leaves it to
            # the next FULL commit or checkpoint (still atomic and consistent; only the newest
            # NORMAL commits can be lost in a power cut, never in a process crash).
            sync = "NORMAL" if options.get(RELAXED_SYNC_OPTION, False) else "FULL"
            if connection.info.get("synchronous") != sync:
                connection.exec_driver_sql(f"PRAGMA synchronous={sync}")
                connection.info["synchronous"] = sync
        connection.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")

    return engine


def create_tables(engine: Engine) -> None:
    """Create missing tables (idempotent; safe when two processes open the store at once)."""
    Base.metadata.create_all(engine.execution_options(**{WRITE_OPTION: True}))


# ---- frozen rows: what the job store's API returns (never ORM objects) ----------------------

R = TypeVar("R")


def to_row(row_type: type[R], entity: Base) -> R:
    """Copy the ORM entity's columns named by the dataclass ``row_type`` into a frozen row."""
    names = [f.name for f in fields(cast(Any, row_type))]
    return row_type(**{name: getattr(entity, name) for name in names})


@dataclass(frozen=True)
class InstanceRecordResult:
    """What recording an instance found.

    Attributes:
        new: False when the SOP Instance UID was already recorded (a resend).
        conflict: Why the instance's identity disagrees with its study or order, naming the
            fields, never their values; None when consistent.
        late: The study had already left ``receiving`` (its tasks may need a new generation).
    """

    new: bool
    conflict: str | None
    late: bool = False


@dataclass(frozen=True)
class StudyRow:
    """One study. ``patient_id_hash`` is a SHA-256 digest, never the patient ID."""

    study_instance_uid: str
    accession_number: str
    patient_id_hash: str | None
    state: StudyState
    first_seen_at: datetime
    completed_at: datetime | None
    quarantine_reason: str | None
    calling_ae: str


@dataclass(frozen=True)
class SeriesRow:
    """One series; ``expected_count`` is set when its study is marked complete."""

    series_instance_uid: str
    study_instance_uid: str
    modality: str
    instance_count: int
    expected_count: int | None
    last_instance_at: datetime
    complete_at: datetime | None


@dataclass(frozen=True)
class InstanceRow:
    """One instance; ``seq`` is its 1-based arrival position within the series."""

    sop_instance_uid: str
    series_instance_uid: str
    seq: int
    path: str
    received_at: datetime


@dataclass(frozen=True)
class SpoolPruneRow:
    """When a study's instance files were last removed from the spool, how many, how many bytes."""

    study_instance_uid: str
    pruned_at: datetime
    instances: int
    bytes_removed: int


@dataclass(frozen=True)
class OrderRow:
    """One order as last updated: the fields of ``OrderContext``, the patient ID as a digest."""

    accession_number: str
    priority: OrderPriority
    procedure_code: str
    procedure_scheme: str
    procedure_meaning: str
    indication: str
    patient_id_hash: str | None
    placer_order_number: str
    filler_order_number: str
    study_instance_uid: str
    order_control: str
    message_control_id: str
    state: OrderState
    received_at: datetime
    updated_at: datetime
    authorities: dict[str, list[str]] = field(default_factory=dict)  # see OrderIdentifiers

    def __post_init__(self) -> None:
        object.__setattr__(self, "priority", OrderPriority(self.priority))

    def context(self) -> OrderContext:
        """The order for the routing rules (``patient_id`` empty: the store keeps only a digest)."""
        return OrderContext(
            accession_number=self.accession_number,
            priority=self.priority,
            procedure_code=self.procedure_code,
            procedure_scheme=self.procedure_scheme,
            procedure_meaning=self.procedure_meaning,
            indication=self.indication,
            placer_order_number=self.placer_order_number,
            filler_order_number=self.filler_order_number,
            placer_order_authority=_authority(self.authorities, "placer"),
            filler_order_authority=_authority(self.authorities, "filler"),
            patient_id_authority=_authority(self.authorities, "patient"),
            study_instance_uid=self.study_instance_uid,
            order_control=self.order_control,
            message_control_id=self.message_control_id,
        )


@dataclass(frozen=True)
class TaskRow:
    """One inference task.

    Attributes:
        series_instance_uid: The series the model reads; ``""`` for a study-level task.
        generation: 0 for the first routing; +1 for each re-run after late instances.
        deadline_at: Absolute deadline, UTC.
        mode: A ``router.result.Mode`` value (``shadow``, ``triage``, ``assistant``).
        attempts: How many times the task was started; ``finish_task`` must quote the latest.
        result: The result document (JSON) once done.
        error: Why the last attempt failed, or why it was cancelled.
    """

    task_id: str
    study_instance_uid: str
    series_instance_uid: str
    rule_name: str
    model_name: str
    model_version: str
    generation: int
    priority: PriorityClass
    deadline_at: datetime
    mode: str
    destinations: tuple[str, ...]
    state: TaskState
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    result: dict[str, Any] | None
    error: str | None

    def __post_init__(self) -> None:
        object.__setattr__(self, "destinations", tuple(self.destinations))

    @property
    def model(self) -> str:
        """``name@version``, as the scheduler names models."""
        return f"{self.model_name}@{self.model_version}"


@dataclass(frozen=True)
class TransitionRow:
    """One state change; ``from_state`` is None when the entity was created."""

    id: int
    entity_kind: EntityKind
    entity_id: str
    from_state: str | None
    to_state: str
    at: datetime
    detail: dict[str, Any] | None

    def __post_init__(self) -> None:
        object.__setattr__(self, "entity_kind", EntityKind(self.entity_kind))


@dataclass(frozen=True)
class RoutingRow:
    """One routing decision: the rules file's hash and the matched rules with their reasons."""

    id: int
    study_instance_uid: str
    at: datetime
    rules_hash: str
    decision: dict[str, Any]


@dataclass(frozen=True)
class AuditRow:
    """One audit event (trigger, routing, model version, delivery ...), free of PHI."""

    id: int
    at: datetime
    event: str
    study_instance_uid: str | None
    accession_number: str | None
    task_id: str | None
    detail: dict[str, Any] | None
