"""The durable job store: studies, orders, tasks, routing decisions, audit, and the outbox.

Public API: :class:`JobStore` (SQLite by default, PostgreSQL by URL), :class:`Outbox` with its
:class:`RetryPolicy`, the frozen rows they return, the state enums and the typed errors.
"""

from serving.jobstore.changes import InstanceArrival, hash_patient_id
from serving.jobstore.outbox import Outbox, OutboxItem, RetryPolicy
from serving.jobstore.schema import (
    AuditRow,
    InstanceRecordResult,
    InstanceRow,
    OrderRow,
    RoutingRow,
    SeriesRow,
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
    "Outbox",
    "OutboxItem",
    "OutboxState",
    "RetryPolicy",
    "RoutingRow",
    "SeriesRow",
    "SeriesState",
    "StudyRow",
    "StudyState",
    "TaskRow",
    "TaskState",
    "TransitionError",
    "TransitionRow",
    "UnknownEntityError",
    "hash_patient_id",
]
