"""The durable job store: studies, orders, tasks, routing decisions, audit, and the outbox table.

Public API: :class:`JobStore` (SQLite by default, PostgreSQL by URL), the frozen rows it
returns, the state enums and the typed errors. The outbox queue on top of its table is
:class:`serving.delivery.outbox.Outbox`.
"""

from serving.jobstore.changes import InstanceArrival, hash_patient_id
from serving.jobstore.schema import (
    AuditRow,
    InstanceRecordResult,
    InstanceRow,
    OrderRow,
    RoutingRow,
    SeriesRow,
    SpoolPruneRow,
    StudyRow,
    TaskRow,
    TransitionRow,
)
from serving.jobstore.states import (
    EntityKind,
    JobStoreError,
    OrderState,
    OutboxState,
    SeriesState,
    StudyState,
    TaskState,
    TransitionError,
    UnknownEntityError,
)
from serving.jobstore.store import DEFAULT_URL, JobStore

__all__ = [
    "DEFAULT_URL",
    "AuditRow",
    "EntityKind",
    "InstanceArrival",
    "InstanceRecordResult",
    "InstanceRow",
    "JobStore",
    "JobStoreError",
    "OrderRow",
    "OrderState",
    "OutboxState",
    "RoutingRow",
    "SeriesRow",
    "SeriesState",
    "SpoolPruneRow",
    "StudyRow",
    "StudyState",
    "TaskRow",
    "TaskState",
    "TransitionError",
    "TransitionRow",
    "UnknownEntityError",
    "hash_patient_id",
]
