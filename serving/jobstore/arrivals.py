"""Recording a batch of received instances in a handful of SQL statements.

:meth:`JobStore.record_instances` runs :func:`record_arrivals` in its write transaction. It
reads every study, series, order and already-recorded instance that the batch names with one
``IN`` select per table, replays the arrivals in order against those snapshots in Python
(deciding exactly what recording them one at a time would), and then writes: the new studies,
the studies whose blank identity fields were filled, the new series, one counter update per
series that already existed, the instances and the transitions, one statement per table
(``executemany``), studies before series before instances for the foreign keys.

Instance counters are incremented in SQL (``instance_count + k``) and read back inside the
same transaction, so concurrent writers on PostgreSQL never lose an increment; an insert that
loses a unique-key race raises ``IntegrityError`` and the store's retry re-reads everything.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Table, insert, select, update
from sqlalchemy.orm import Session

from serving.jobstore.schema import (
    Instance,
    InstanceRecordResult,
    Order,
    Series,
    Study,
    Transition,
)
from serving.jobstore.states import EntityKind, SeriesState, StudyState

if TYPE_CHECKING:
    from serving.jobstore.changes import InstanceArrival, StateChanges

_STUDIES = cast(Table, Study.__table__)
_SERIES = cast(Table, Series.__table__)
_INSTANCES = cast(Table, Instance.__table__)
_ORDERS = cast(Table, Order.__table__)
_TRANSITIONS = cast(Table, Transition.__table__)
_IN_CHUNK = 500  # keys per IN (...) select, far below any backend's bound-parameter limit

_SERIES_OF_ANOTHER_STUDY = "SeriesInstanceUID already belongs to another study"


@dataclass(slots=True)
class _StudySnapshot:
    """A study as the batch sees it: read from the database or created by an earlier arrival."""

    accession_number: str
    patient_id_hash: str | None
    state: str
    calling_ae: str
    new: bool  # created by this batch (inserted at the end with its final values)
    filled: bool = False  # an existing study whose blank identity fields this batch filled

    def conflicts(self, accession: str, digest: str | None) -> list[str]:
        """Identity fields that disagree with the study's first instance; fills in its blanks."""
        found = []
        if digest and self.patient_id_hash and digest != self.patient_id_hash:
            found.append("PatientID differs from the study's first instance")
        if accession and self.accession_number and accession != self.accession_number:
            found.append("AccessionNumber differs from the study's first instance")
        patient_id_hash = self.patient_id_hash or digest
        accession_number = self.accession_number or accession
        if (patient_id_hash, accession_number) != (self.patient_id_hash, self.accession_number):
            self.patient_id_hash, self.accession_number = patient_id_hash, accession_number
            self.filled = not self.new
        return found


@dataclass(slots=True)
class _SeriesSnapshot:
    """A series as the batch sees it, and how many instances the batch adds to it."""

    study_instance_uid: str
    modality: str
    complete: bool  # its ``complete_at`` is set
    new: bool
    reopened: bool = False  # complete → receiving by a late instance of this batch
    added: int = 0


@dataclass(frozen=True, slots=True)
class _OrderSnapshot:
    patient_id_hash: str | None
    study_instance_uid: str

    def conflicts(self, study_uid: str, digest: str | None) -> list[str]:
        """Identity fields that disagree with the order of the instance's accession."""
        found = []
        if digest and self.patient_id_hash and digest != self.patient_id_hash:
            found.append("PatientID differs from the order's")
        if self.study_instance_uid and self.study_instance_uid != study_uid:
            found.append("StudyInstanceUID differs from the order's")
        return found


def record_arrivals(
    changes: StateChanges, arrivals: Sequence[InstanceArrival], digests: Sequence[str | None]
) -> list[InstanceRecordResult]:
    """Record ``arrivals`` (patient IDs already hashed into ``digests``) in ``changes``' session.

    Returns one result per arrival, in order, each exactly what recording the arrivals one by
    one would have returned; writes the same rows and transitions (in the same order).
    """
    session, now = changes.session, changes.at
    studies = load_studies(session, (a.study_uid for a in arrivals))
    series = _load_series(session, (a.series_uid for a in arrivals))
    orders = _load_orders(session, (a.accession for a in arrivals if a.accession))
    recorded = _load_recorded(session, (a.sop_uid for a in arrivals))

    results: list[InstanceRecordResult] = []
    transitions: list[dict[str, Any]] = []
    added: list[tuple[InstanceArrival, int]] = []  # new instance, its position in the batch
    for arrival, digest in zip(arrivals, digests, strict=True):
        study_uid, series_uid = arrival.study_uid, arrival.series_uid
        conflicts: list[str] = []
        study = studies.get(study_uid)
        if study is None:
            study = studies[study_uid] = _StudySnapshot(
                arrival.accession, digest, StudyState.RECEIVING, arrival.calling_ae, new=True
            )
            detail = {"calling_ae": arrival.calling_ae}
            transitions.append(
                changes.transition_values(
                    EntityKind.STUDY, study_uid, None, StudyState.RECEIVING, detail
                )
            )
        else:
            conflicts += study.conflicts(arrival.accession, digest)
        order = orders.get(arrival.accession) if arrival.accession else None
        if order is not None:
            conflicts += order.conflicts(study_uid, digest)
        late = study.state != StudyState.RECEIVING
        if arrival.sop_uid in recorded:
            results.append(InstanceRecordResult(False, _joined(conflicts), late))
            continue
        recorded.add(arrival.sop_uid)
        one = series.get(series_uid)
        if one is None:
            one = series[series_uid] = _SeriesSnapshot(
                study_uid, arrival.modality, complete=False, new=True
            )
            created = (None, SeriesState.RECEIVING)
            transitions.append(changes.transition_values(EntityKind.SERIES, series_uid, *created))
        elif one.study_instance_uid != study_uid:
            conflicts.append(_SERIES_OF_ANOTHER_STUDY)
        if one.complete:
            one.complete, one.reopened = False, True
            change = (SeriesState.COMPLETE, SeriesState.RECEIVING)
            detail = {"reason": "late"}
            transitions.append(
                changes.transition_values(EntityKind.SERIES, series_uid, *change, detail)
            )
        one.added += 1
        added.append((arrival, one.added))
        results.append(InstanceRecordResult(True, _joined(conflicts), late))

    _write_studies(session, studies, now)
    first_seq = _write_series(session, series, now)
    if added:
        rows = [
            {
                "sop_instance_uid": a.sop_uid,
                "series_instance_uid": a.series_uid,
                "seq": first_seq[a.series_uid] + position - 1,
                "path": a.path,
                "received_at": now,
            }
            for a, position in added
        ]
        session.execute(insert(_INSTANCES), rows)
    if transitions:
        session.execute(insert(_TRANSITIONS), transitions)
    return results


def _write_studies(session: Session, studies: dict[str, _StudySnapshot], now: datetime) -> None:
    """Insert the batch's new studies; store the blanks it filled in existing ones."""
    new = [
        {
            "study_instance_uid": uid,
            "accession_number": s.accession_number,
            "patient_id_hash": s.patient_id_hash,
            "state": s.state,
            "first_seen_at": now,
            "completed_at": None,
            "quarantine_reason": None,
            "calling_ae": s.calling_ae,
        }
        for uid, s in studies.items()
        if s.new
    ]
    if new:
        session.execute(insert(_STUDIES), new)
    for uid, s in studies.items():
        if s.filled:
            session.execute(
                update(_STUDIES)
                .where(_STUDIES.c.study_instance_uid == uid)
                .values(accession_number=s.accession_number, patient_id_hash=s.patient_id_hash)
            )


def _write_series(
    session: Session, series: dict[str, _SeriesSnapshot], now: datetime
) -> dict[str, int]:
    """Insert new series and count the batch's instances in; each series' first new ``seq``."""
    new = [
        {
            "series_instance_uid": uid,
            "study_instance_uid": s.study_instance_uid,
            "modality": s.modality,
            "instance_count": s.added,
            "expected_count": None,
            "last_instance_at": now,
            "complete_at": None,
        }
        for uid, s in series.items()
        if s.new
    ]
    if new:
        session.execute(insert(_SERIES), new)
    first_seq = {uid: 1 for uid, s in series.items() if s.new}
    grown = {uid: s for uid, s in series.items() if s.added and not s.new}
    for uid, s in grown.items():
        # Count in SQL so concurrent writers on PostgreSQL never lose an increment.
        values: dict[str, Any] = {
            "instance_count": _SERIES.c.instance_count + s.added,
            "last_instance_at": now,
        }
        if s.reopened:
            values["complete_at"] = None
        session.execute(
            update(_SERIES).where(_SERIES.c.series_instance_uid == uid).values(**values)
        )
    for chunk in _chunks(grown):
        query = select(_SERIES.c.series_instance_uid, _SERIES.c.instance_count).where(
            _SERIES.c.series_instance_uid.in_(chunk)
        )
        for uid, count in session.execute(query):
            first_seq[uid] = int(count or 0) - grown[uid].added + 1
    return first_seq


def load_studies(session: Session, uids: Iterable[str]) -> dict[str, _StudySnapshot]:
    """The studies among ``uids`` already in the store, by Study Instance UID (one query per
    chunk of UIDs); a study missing from the result is new."""
    c = _STUDIES.c
    found = {}
    for chunk in _chunks(uids):
        query = select(
            c.study_instance_uid, c.accession_number, c.patient_id_hash, c.state, c.calling_ae
        ).where(c.study_instance_uid.in_(chunk))
        for uid, accession, digest, state, calling_ae in session.execute(query):
            found[uid] = _StudySnapshot(accession, digest, state, calling_ae, new=False)
    return found


def _load_series(session: Session, uids: Iterable[str]) -> dict[str, _SeriesSnapshot]:
    c = _SERIES.c
    found = {}
    for chunk in _chunks(uids):
        query = select(
            c.series_instance_uid, c.study_instance_uid, c.modality, c.complete_at
        ).where(c.series_instance_uid.in_(chunk))
        for uid, study_uid, modality, complete_at in session.execute(query):
            found[uid] = _SeriesSnapshot(
                study_uid, modality, complete=complete_at is not None, new=False
            )
    return found


def _load_orders(session: Session, accessions: Iterable[str]) -> dict[str, _OrderSnapshot]:
    c = _ORDERS.c
    found = {}
    for chunk in _chunks(accessions):
        query = select(c.accession_number, c.patient_id_hash, c.study_instance_uid).where(
            c.accession_number.in_(chunk)
        )
        for accession, digest, study_uid in session.execute(query):
            found[accession] = _OrderSnapshot(digest, study_uid)
    return found


def _load_recorded(session: Session, sop_uids: Iterable[str]) -> set[str]:
    c = _INSTANCES.c
    found: set[str] = set()
    for chunk in _chunks(sop_uids):
        query = select(c.sop_instance_uid).where(c.sop_instance_uid.in_(chunk))
        found.update(session.scalars(query))
    return found


def _chunks(keys: Iterable[str]) -> Iterator[list[str]]:
    """The distinct ``keys`` in slices small enough for one ``IN (...)``."""
    distinct = list(dict.fromkeys(keys))
    for start in range(0, len(distinct), _IN_CHUNK):
        yield distinct[start : start + _IN_CHUNK]


def _joined(conflicts: list[str]) -> str | None:
    return "; ".join(conflicts) if conflicts else None
