"""States of studies, series, tasks, orders and outbox items, and the moves allowed between them.

Every state change in the job store is checked here before it is written, so a bug that would
run a finished task again or revive a delivered message fails loudly instead of acting twice.
"""

from __future__ import annotations

from enum import StrEnum


class JobStoreError(Exception):
    """Base of the job store's errors; the message is one line naming the entity by its id."""


class UnknownEntityError(JobStoreError, LookupError):
    """A study, series, task, order or outbox item that the job store does not hold."""

    def __init__(self, kind: EntityKind, entity_id: str) -> None:
        super().__init__(f"{kind} {entity_id} is not in the job store")
        self.kind = kind
        self.entity_id = entity_id


class TransitionError(JobStoreError):
    """A state change that the entity's state machine does not allow."""

    def __init__(
        self, kind: EntityKind, entity_id: str, from_state: str | None, to_state: str
    ) -> None:
        origin = from_state if from_state is not None else "nothing"
        super().__init__(f"{kind} {entity_id}: cannot go from {origin} to {to_state}")
        self.kind = kind
        self.entity_id = entity_id
        self.from_state = from_state
        self.to_state = to_state


class EntityKind(StrEnum):
    """What a transition row is about."""

    STUDY = "study"
    SERIES = "series"
    TASK = "task"
    OUTBOX = "outbox"
    ORDER = "order"


class StudyState(StrEnum):
    """Where a study is between its first instance and its last result."""

    RECEIVING = "receiving"  # instances arriving
    COMPLETE = "complete"  # assembly settled; ready for routing
    QUARANTINED = "quarantined"  # identity conflict or bad data: held for a person
    ROUTED = "routed"  # routing decision recorded, tasks created
    DONE = "done"  # every task finished


class SeriesState(StrEnum):
    """A series is receiving until its study is marked complete (kept in transitions only)."""

    RECEIVING = "receiving"
    COMPLETE = "complete"


class TaskState(StrEnum):
    """One inference task."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class OrderState(StrEnum):
    """An imaging order from the RIS."""

    ACTIVE = "active"
    CANCELLED = "cancelled"


class OutboxState(StrEnum):
    """One delivery in the outbox."""

    PENDING = "pending"  # waiting for its next attempt
    SENDING = "sending"  # claimed by one worker
    DELIVERED = "delivered"
    DEAD = "dead"  # gave up: retries exhausted or a permanent failure; needs `outbox retry`


# from-state (None: the entity is being created) -> states it may move to.
_ALLOWED: dict[EntityKind, dict[str | None, frozenset[str]]] = {
    EntityKind.STUDY: {
        None: frozenset({StudyState.RECEIVING}),
        StudyState.RECEIVING: frozenset({StudyState.COMPLETE, StudyState.QUARANTINED}),
        # Late instances reopen a study; its tasks re-run at the next generation.
        StudyState.COMPLETE: frozenset(
            {StudyState.ROUTED, StudyState.QUARANTINED, StudyState.RECEIVING}
        ),
        StudyState.ROUTED: frozenset(
            {StudyState.DONE, StudyState.QUARANTINED, StudyState.RECEIVING}
        ),
        StudyState.DONE: frozenset({StudyState.RECEIVING, StudyState.QUARANTINED}),
        # Released by a person after the conflict was resolved.
        StudyState.QUARANTINED: frozenset({StudyState.RECEIVING}),
    },
    EntityKind.SERIES: {
        None: frozenset({SeriesState.RECEIVING}),
        SeriesState.RECEIVING: frozenset({SeriesState.COMPLETE}),
        SeriesState.COMPLETE: frozenset({SeriesState.RECEIVING}),  # a late instance
    },
    EntityKind.TASK: {
        None: frozenset({TaskState.QUEUED}),
        TaskState.QUEUED: frozenset({TaskState.RUNNING, TaskState.CANCELLED}),
        TaskState.RUNNING: frozenset(
            {TaskState.DONE, TaskState.FAILED, TaskState.QUEUED, TaskState.CANCELLED}
        ),
        TaskState.DONE: frozenset(),
        TaskState.FAILED: frozenset(),
        TaskState.CANCELLED: frozenset(),
    },
    EntityKind.ORDER: {
        None: frozenset({OrderState.ACTIVE, OrderState.CANCELLED}),
        OrderState.ACTIVE: frozenset({OrderState.CANCELLED}),
        OrderState.CANCELLED: frozenset({OrderState.ACTIVE}),
    },
    EntityKind.OUTBOX: {
        None: frozenset({OutboxState.PENDING}),
        OutboxState.PENDING: frozenset({OutboxState.SENDING}),
        OutboxState.SENDING: frozenset(
            {OutboxState.DELIVERED, OutboxState.PENDING, OutboxState.DEAD}
        ),
        OutboxState.DELIVERED: frozenset(),
        OutboxState.DEAD: frozenset({OutboxState.PENDING}),
    },
}


def allowed(kind: EntityKind, from_state: str | None, to_state: str) -> bool:
    """Whether ``kind`` may move from ``from_state`` (None: creation) to ``to_state``."""
    return to_state in _ALLOWED[kind].get(from_state, frozenset())


def check_transition(
    kind: EntityKind, entity_id: str, from_state: str | None, to_state: str
) -> None:
    """Raise :class:`TransitionError` unless the move is allowed."""
    if not allowed(kind, from_state, to_state):
        raise TransitionError(kind, entity_id, from_state, to_state)
