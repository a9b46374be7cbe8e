"""One transaction's state changes: each checked against its state machine, each with its
transition row, none carrying patient identity; and the small helpers every job-store writer
shares (the clock in UTC, the patient-ID digest, fresh entity reads).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar, cast

from sqlalchemy import ColumnElement, CursorResult, inspect, update
from sqlalchemy.orm import Session

from serving.jobstore.schema import Base, Transition
from serving.jobstore.states import (
    EntityKind,
    TransitionError,
    UnknownEntityError,
    check_transition,
)

_PHI_KEYS = frozenset(
    {"patientname", "patientsname", "otherpatientnames", "patientid", "patientbirthdate"}
)

E = TypeVar("E", bound=Base)
Clock = Callable[[], datetime]


def utc_now(clock: Clock) -> datetime:
    """``clock()`` in UTC; ``ValueError`` if it returns a naive datetime."""
    value = clock()
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("the clock must return timezone-aware datetimes")
    return value.astimezone(UTC)


def hash_patient_id(patient_id: str) -> str | None:
    """SHA-256 hex digest of a patient ID (None when empty): enough to compare, never shown."""
    return hashlib.sha256(patient_id.encode("utf-8")).hexdigest() if patient_id else None


def reject_phi(detail: Mapping[str, Any] | None) -> None:
    """Raise ``ValueError`` if a detail mapping has a patient-identity key at any depth."""
    pending: list[Any] = [detail]
    while pending:
        value = pending.pop()
        if isinstance(value, Mapping):
            for key, inner in value.items():
                if str(key).replace("_", "").replace(" ", "").lower() in _PHI_KEYS:
                    raise ValueError(f"detail must not carry patient identity (key {key!r})")
                pending.append(inner)
        elif isinstance(value, list | tuple):
            pending.extend(value)


def get_entity(session: Session, entity: type[E], kind: EntityKind, key: str | int) -> E:
    """The entity with primary key ``key``, freshly read; ``UnknownEntityError`` if none."""
    found = session.get(entity, key, populate_existing=True)
    if found is None:
        raise UnknownEntityError(kind, str(key))
    return found


@dataclass(frozen=True)
class InstanceArrival:
    """One stored instance to record (the patient ID is hashed before it is kept)."""

    study_uid: str
    series_uid: str
    sop_uid: str
    path: str
    accession: str
    patient_id: str
    calling_ae: str
    modality: str


class StateChanges:
    """The state changes of one transaction, all stamped ``at`` (UTC), each with its transition."""

    def __init__(self, session: Session, at: datetime) -> None:
        self.session = session
        self.at = at

    def record(
        self,
        kind: EntityKind,
        entity_id: str | int,
        from_state: StrEnum | None,
        to_state: StrEnum,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        """Check a change against its state machine and add its transition row."""
        values = self.transition_values(kind, entity_id, from_state, to_state, detail)
        self.session.add(Transition(**values))

    def transition_values(
        self,
        kind: EntityKind,
        entity_id: str | int,
        from_state: StrEnum | None,
        to_state: StrEnum,
        detail: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Check a change against its state machine; the column values of its transition row.

        For bulk writers that insert many transition rows with one statement.
        """
        check_transition(kind, str(entity_id), from_state, to_state)
        reject_phi(detail)
        return {
            "entity_kind": str(kind),
            "entity_id": str(entity_id),
            "from_state": None if from_state is None else str(from_state),
            "to_state": str(to_state),
            "at": self.at,
            "detail": dict(detail) if detail else None,
        }

    def move(
        self,
        entity: type[Base],
        kind: EntityKind,
        key: str | int,
        change: tuple[StrEnum, StrEnum],
        detail: Mapping[str, Any] | None = None,
        where: Sequence[ColumnElement[bool]] = (),
        **values: Any,
    ) -> bool:
        """Conditional UPDATE ``from → to`` (plus ``values``) and its transition row.

        Returns False, changing nothing, if the entity is no longer in the from-state (or
        fails ``where``): that is how two workers racing for one task or delivery are told
        apart, on SQLite and PostgreSQL alike.
        """
        from_state, to_state = change
        check_transition(kind, str(key), from_state, to_state)
        table = entity.__table__
        (primary_key,) = inspect(entity).primary_key
        statement = (
            update(entity)
            .where(primary_key == key, table.c.state == from_state, *where)
            .values(state=to_state, **values)
            .execution_options(synchronize_session=False)
        )
        result = cast(CursorResult[Any], self.session.execute(statement))
        if result.rowcount != 1:
            return False
        self.record(kind, key, from_state, to_state, detail)
        return True

    def require(
        self,
        entity: type[Base],
        kind: EntityKind,
        key: str | int,
        change: tuple[StrEnum, StrEnum],
        detail: Mapping[str, Any] | None = None,
        **values: Any,
    ) -> None:
        """:meth:`move`, raising ``UnknownEntityError`` or ``TransitionError`` if it cannot."""
        if not self.move(entity, kind, key, change, detail, **values):
            current = get_entity(self.session, entity, kind, key)
            raise TransitionError(kind, str(key), getattr(current, "state", None), change[1])
