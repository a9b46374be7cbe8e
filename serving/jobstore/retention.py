"""Spool retention: which studies' instance files may be removed, and the record that they were.

A study's instances may go once the study is done (every task ended: done, failed or
cancelled), every outbox item of its tasks is delivered or dead, and the grace period has
passed since the last of those events and since the study's last instance arrived. A study
pruned before and reopened by a late instance is prunable again once it settles again.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from serving.jobstore.changes import StateChanges
from serving.jobstore.schema import (
    Instance,
    OutboxEntry,
    Series,
    SpoolPrune,
    Study,
    Task,
    Transition,
)
from serving.jobstore.states import EntityKind, OutboxState, StudyState, TaskState

_TERMINAL_TASK = (TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED)
_TERMINAL_OUTBOX = (OutboxState.DELIVERED, OutboxState.DEAD)


def prunable_studies(session: Session, now: datetime, grace_s: float, limit: int) -> list[str]:
    """UIDs of done studies whose instance files may be removed at ``now`` (at most ``limit``).

    Args:
        session: A read transaction.
        now: The current time (UTC).
        grace_s: Seconds that must have passed since the study settled (>= 0).
        limit: Most studies to return (oldest first).
    """
    cutoff = now - timedelta(seconds=grace_s)
    last_instance = (
        select(func.max(Instance.received_at))
        .join(Series, Series.series_instance_uid == Instance.series_instance_uid)
        .where(Series.study_instance_uid == Study.study_instance_uid)
        .scalar_subquery()
    )
    # in SQL: done, last instance before the cutoff, and not pruned since that instance
    query = (
        select(Study.study_instance_uid)
        .outerjoin(SpoolPrune, SpoolPrune.study_instance_uid == Study.study_instance_uid)
        .where(
            Study.state == StudyState.DONE,
            last_instance <= cutoff,
            or_(SpoolPrune.pruned_at.is_(None), SpoolPrune.pruned_at < last_instance),
        )
        .order_by(Study.first_seen_at, Study.study_instance_uid)
    )
    found: list[str] = []
    for uid in session.scalars(query):
        settled = _settled_at(session, uid)
        if settled is None or settled > cutoff:
            continue
        found.append(uid)
        if len(found) >= limit:
            break
    return found


def _settled_at(session: Session, study_uid: str) -> datetime | None:
    """When the study's last task ended and its last outbox item was delivered or died; None
    while any of them is still working (or the store has no time for it)."""
    tasks = session.execute(
        select(Task.task_id, Task.state, Task.finished_at).where(
            Task.study_instance_uid == study_uid
        )
    ).all()
    times: list[datetime] = []
    for _, state, finished_at in tasks:
        if state not in _TERMINAL_TASK:
            return None
        if finished_at is not None:
            times.append(finished_at)
    task_ids = [task_id for task_id, _, _ in tasks]
    if task_ids:
        items = session.execute(
            select(OutboxEntry.id, OutboxEntry.state).where(OutboxEntry.task_id.in_(task_ids))
        ).all()
        if any(state not in _TERMINAL_OUTBOX for _, state in items):
            return None
        if items:
            ended = session.scalar(
                select(func.max(Transition.at)).where(
                    Transition.entity_kind == str(EntityKind.OUTBOX),
                    Transition.entity_id.in_([str(item_id) for item_id, _ in items]),
                )
            )
            if ended is not None:
                times.append(ended)
    study_done = session.scalar(
        select(func.max(Transition.at)).where(
            Transition.entity_kind == str(EntityKind.STUDY),
            Transition.entity_id == study_uid,
        )
    )
    if study_done is not None:
        times.append(study_done)
    return max(times) if times else None


def record_prune(changes: StateChanges, study_uid: str, instances: int, bytes_removed: int) -> None:
    """Record that the study's instance files were removed (now): insert or update its row."""
    row = changes.session.get(SpoolPrune, study_uid)
    if row is None:
        changes.session.add(
            SpoolPrune(
                study_instance_uid=study_uid,
                pruned_at=changes.at,
                instances=instances,
                bytes_removed=bytes_removed,
            )
        )
        return
    row.pruned_at = changes.at
    row.instances += instances
    row.bytes_removed += bytes_removed
