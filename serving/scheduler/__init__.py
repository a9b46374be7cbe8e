"""The deadline-aware scheduler: a pure state machine (no threads, files or tensors).

Public API: :class:`Scheduler`, the records it exchanges, latency profiles and policies.
"""

from serving.scheduler.latency import LatencyTable, ModelLatency
from serving.scheduler.policies import make_policy
from serving.scheduler.records import (
    Admission,
    BatchPlan,
    Completion,
    SchedulerConfig,
    TaskRecord,
    Wait,
    WorkItem,
)
from serving.scheduler.scheduler import Scheduler, SchedulerError

__all__ = [
    "Admission",
    "BatchPlan",
    "Completion",
    "LatencyTable",
    "ModelLatency",
    "Scheduler",
    "SchedulerConfig",
    "SchedulerError",
    "TaskRecord",
    "Wait",
    "WorkItem",
    "make_policy",
]
