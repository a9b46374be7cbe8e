"""Recording instances in batches: same results and rows as one by one, in a few statements."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.orm import Session

import serving.jobstore.arrivals as arrivals_module
from router.vocabulary import OrderContext
from serving.jobstore import (
    EntityKind,
    InstanceArrival,
    InstanceRecordResult,
    JobStore,
    StudyState,
    hash_patient_id,
)
from serving.jobstore.schema import Study

T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
STUDY_A, STUDY_B = "1.2.826.0.1.1", "1.2.826.0.1.2"
SERIES_A1, SERIES_A2, SERIES_B1 = "1.2.826.0.1.1.1", "1.2.826.0.1.1.2", "1.2.826.0.1.2.1"
OK = InstanceRecordResult(new=True, conflict=None, late=False)
REPEAT = InstanceRecordResult(new=False, conflict=None, late=False)
TABLES = ("studies", "series", "instances", "transitions")


class FixedClock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock()


@pytest.fixture
def store(tmp_path: Path, clock: FixedClock) -> Iterator[JobStore]:
    store = JobStore(f"sqlite:///{tmp_path / 'batch.db'}", clock=clock)
    yield store
    store.close()


def arrival(
    sop: str,
    *,
    study: str = STUDY_A,
    series: str = SERIES_A1,
    accession: str = "ACC-1",
    patient: str = "PID-1",
    modality: str = "CT",
    calling_ae: str = "CT_SCANNER",
) -> InstanceArrival:
    return InstanceArrival(
        study, series, sop, f"/spool/{sop}.dcm", accession, patient, calling_ae, modality
    )


def record_one_by_one(store: JobStore, batch: list[InstanceArrival]) -> list[InstanceRecordResult]:
    return [
        store.record_instance(
            a.study_uid,
            a.series_uid,
            a.sop_uid,
            a.path,
            a.accession,
            a.patient_id,
            a.calling_ae,
            a.modality,
        )
        for a in batch
    ]


def table_rows(store: JobStore) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the instance tables as stored (rowid order: the order of the inserts)."""
    with store.engine.connect() as connection:
        return {
            table: [
                tuple(row)
                for row in connection.execute(text(f"SELECT rowid, * FROM {table} ORDER BY rowid"))
            ]
            for table in TABLES
        }


def test_a_batch_of_two_studies_and_three_series(store: JobStore) -> None:
    batch = [
        arrival("1.1"),
        arrival("2.1", study=STUDY_B, series=SERIES_B1, accession="ACC-2", patient="PID-2"),
        arrival("1.2", series=SERIES_A2, modality="SR"),
        arrival("1.3"),
        arrival("2.2", study=STUDY_B, series=SERIES_B1, accession="ACC-2", patient="PID-2"),
        arrival("1.4", series=SERIES_A2, modality="CT"),
    ]
    assert store.record_instances(batch) == [OK] * 6
    studies = {s.study_instance_uid: s for s in store.studies()}
    assert set(studies) == {STUDY_A, STUDY_B}
    assert studies[STUDY_B].accession_number == "ACC-2"
    assert studies[STUDY_B].patient_id_hash == hash_patient_id("PID-2")
    assert (studies[STUDY_A].state, studies[STUDY_A].first_seen_at) == (StudyState.RECEIVING, T0)
    counts = {
        s.series_instance_uid: (s.study_instance_uid, s.instance_count, s.modality)
        for s in [*store.series_of(STUDY_A), *store.series_of(STUDY_B)]
    }
    assert counts == {
        SERIES_A1: (STUDY_A, 2, "CT"),
        SERIES_A2: (STUDY_A, 2, "SR"),  # the first instance names the modality
        SERIES_B1: (STUDY_B, 2, "CT"),
    }
    assert [(i.sop_instance_uid, i.seq) for i in store.instances_of(SERIES_A1)] == [
        ("1.1", 1),
        ("1.3", 2),
    ]
    assert [(i.sop_instance_uid, i.seq) for i in store.instances_of(SERIES_A2)] == [
        ("1.2", 1),
        ("1.4", 2),
    ]
    assert [i.path for i in store.instances_of(SERIES_B1)] == ["/spool/2.1.dcm", "/spool/2.2.dcm"]
    # A second batch continues each series' count.
    store.record_instances([arrival("1.5", series=SERIES_A2), arrival("1.6")])
    assert [i.seq for i in store.instances_of(SERIES_A2)] == [1, 2, 3]
    assert [i.seq for i in store.instances_of(SERIES_A1)] == [1, 2, 3]
    with store.engine.connect() as connection:
        written = connection.execute(
            text("SELECT entity_kind, entity_id, from_state, to_state, detail FROM transitions")
        ).all()
    assert [tuple(row) for row in written] == [
        ("study", STUDY_A, None, "receiving", '{"calling_ae": "CT_SCANNER"}'),
        ("series", SERIES_A1, None, "receiving", "null"),
        ("study", STUDY_B, None, "receiving", '{"calling_ae": "CT_SCANNER"}'),
        ("series", SERIES_B1, None, "receiving", "null"),
        ("series", SERIES_A2, None, "receiving", "null"),
    ]


def test_a_repeated_sop_uid_is_not_new_within_and_across_batches(store: JobStore) -> None:
    first = store.record_instances([arrival("1.1"), arrival("1.2"), arrival("1.1")])
    assert first == [OK, OK, REPEAT]
    second = store.record_instances([arrival("1.2"), arrival("1.3"), arrival("1.3")])
    assert second == [REPEAT, OK, REPEAT]
    (series,) = store.series_of(STUDY_A)
    assert series.instance_count == 3
    rows = store.instances_of(SERIES_A1)
    assert [(r.sop_instance_uid, r.seq, r.path) for r in rows] == [
        ("1.1", 1, "/spool/1.1.dcm"),
        ("1.2", 2, "/spool/1.2.dcm"),
        ("1.3", 3, "/spool/1.3.dcm"),
    ]
    # A repeat sent under another series changes nothing there.
    assert store.record_instances([arrival("1.1", series=SERIES_A2)]) == [REPEAT]
    assert [s.series_instance_uid for s in store.series_of(STUDY_A)] == [SERIES_A1]
    # A repeat under a study not seen before still records that study (without a series).
    repeat = arrival("1.2", study=STUDY_B, series=SERIES_B1, calling_ae="OTHER")
    assert store.record_instances([repeat, arrival("1.4")]) == [REPEAT, OK]
    study = store.study(STUDY_B)
    assert study is not None
    assert study.calling_ae == "OTHER"
    assert [t.to_state for t in store.transitions(STUDY_B)] == ["receiving"]
    assert store.series_of(STUDY_B) == []


def test_identity_conflicts_are_reported_per_instance(store: JobStore) -> None:
    results = store.record_instances(
        [
            arrival("1.1"),
            arrival("1.2", patient="PID-9"),
            arrival("1.3", accession="ACC-9"),
            arrival("1.4", patient="PID-9", accession="ACC-9"),
            arrival("1.5"),
            arrival("1.6", series=SERIES_B1, study=STUDY_B),
            arrival("1.7", series=SERIES_B1),  # a series of study B under study A
        ]
    )
    patient = "PatientID differs from the study's first instance"
    accession = "AccessionNumber differs from the study's first instance"
    series = "SeriesInstanceUID already belongs to another study"
    assert [r.conflict for r in results] == [
        None,
        patient,
        accession,
        f"{patient}; {accession}",
        None,
        None,
        series,
    ]
    assert all(r.new for r in results)
    study = store.study(STUDY_A)
    assert study is not None
    assert (study.patient_id_hash, study.accession_number) == (hash_patient_id("PID-1"), "ACC-1")
    # Across batches the study's first instance still decides; a repeat is checked too.
    later = store.record_instances([arrival("1.2", patient="PID-9"), arrival("1.8")])
    assert later == [InstanceRecordResult(False, patient, False), OK]


def test_blank_identity_fields_are_filled_by_later_instances(store: JobStore) -> None:
    store.record_instances([arrival("1.1", patient="", accession="")])
    results = store.record_instances(
        [arrival("1.2", patient="", accession=""), arrival("1.3"), arrival("1.4", patient="PID-9")]
    )
    assert [r.conflict for r in results] == [
        None,
        None,
        "PatientID differs from the study's first instance",
    ]
    study = store.study(STUDY_A)
    assert study is not None
    assert (study.patient_id_hash, study.accession_number) == (hash_patient_id("PID-1"), "ACC-1")
    # Filled within the batch that created the study, too.
    store.record_instances(
        [
            arrival("2.1", study=STUDY_B, series=SERIES_B1, patient="", accession=""),
            arrival("2.2", study=STUDY_B, series=SERIES_B1, patient="PID-2", accession="ACC-2"),
        ]
    )
    other = store.study(STUDY_B)
    assert other is not None
    assert (other.patient_id_hash, other.accession_number) == (hash_patient_id("PID-2"), "ACC-2")


def test_an_instance_disagreeing_with_its_order_is_a_conflict(store: JobStore) -> None:
    store.record_order(OrderContext("ACC-1", patient_id="PID-7", study_instance_uid="9.9"))
    results = store.record_instances(
        [arrival("1.1"), arrival("1.2", patient=""), arrival("1.3", accession="")]
    )
    assert [r.conflict for r in results] == [
        "PatientID differs from the order's; StudyInstanceUID differs from the order's",
        "StudyInstanceUID differs from the order's",
        None,
    ]


def test_instances_after_the_study_left_receiving_are_late(
    store: JobStore, clock: FixedClock
) -> None:
    store.record_instances([arrival("1.1"), arrival("1.2", series=SERIES_A2)])
    done_at = clock.now = T0 + timedelta(seconds=30)
    store.mark_study_complete(STUDY_A, {SERIES_A1: 1, SERIES_A2: 1})
    later = clock.now = T0 + timedelta(seconds=60)
    results = store.record_instances(
        [arrival("1.3"), arrival("1.4"), arrival("1.1"), arrival("1.5", series="1.2.826.0.1.1.3")]
    )
    assert results == [
        InstanceRecordResult(True, None, True),
        InstanceRecordResult(True, None, True),
        InstanceRecordResult(False, None, True),
        InstanceRecordResult(True, None, True),
    ]
    series = {s.series_instance_uid: s for s in store.series_of(STUDY_A)}
    assert (series[SERIES_A1].instance_count, series[SERIES_A1].complete_at) == (3, None)
    assert series[SERIES_A1].last_instance_at == later
    assert series[SERIES_A1].expected_count == 1
    assert (series[SERIES_A2].complete_at, series[SERIES_A2].instance_count) == (done_at, 1)
    # One reopening per series, however many late instances the batch holds.
    assert [(t.to_state, t.detail, t.at) for t in store.transitions(SERIES_A1)] == [
        ("receiving", None, T0),
        ("complete", None, done_at),
        ("receiving", {"reason": "late"}, later),
    ]
    assert [t.to_state for t in store.transitions(STUDY_A, EntityKind.STUDY)] == [
        "receiving",
        "complete",
    ]
    # A study in any state but receiving makes its instances late; a new study's are not.
    store.set_study_state(STUDY_A, StudyState.QUARANTINED, {"reason": "PatientID"})
    results = store.record_instances([arrival("1.6"), arrival("2.1", study=STUDY_B)])
    assert [r.late for r in results] == [True, False]


def test_an_empty_batch_writes_nothing(store: JobStore) -> None:
    assert store.record_instances([]) == []
    assert store.studies() == []


def test_a_batch_costs_a_few_statements_however_long(store: JobStore) -> None:
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    store.record_order(OrderContext("ACC-1"))
    event.listen(store.engine, "before_cursor_execute", count)
    store.record_instances([arrival(f"1.{n}") for n in range(64)])
    first = len(statements)
    statements.clear()
    store.record_instances([arrival(f"1.{n}") for n in range(32, 96)])
    assert first <= 12, statements
    assert len(statements) <= 12, statements
    assert [i.seq for i in store.instances_of(SERIES_A1)] == list(range(1, 97))


def test_a_lost_unique_key_race_retries_the_whole_batch(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    load_studies = arrivals_module.load_studies
    calls: list[int] = []

    def racing(session: Session, uids: Any) -> Any:
        found = load_studies(session, uids)
        calls.append(len(found))
        if len(calls) == 1:  # another writer inserts the study right after this read
            session.add(
                Study(
                    study_instance_uid=STUDY_A,
                    accession_number="ACC-1",
                    patient_id_hash=None,
                    state=StudyState.RECEIVING,
                    first_seen_at=T0,
                    calling_ae="OTHER",
                )
            )
            session.flush()
        return found

    monkeypatch.setattr(arrivals_module, "load_studies", racing)
    assert store.record_instances([arrival("1.1"), arrival("1.2")]) == [OK, OK]
    assert calls == [0, 0]  # the second attempt rolled the first back and started again
    assert [t.to_state for t in store.transitions(STUDY_A)] == ["receiving"]
    assert [i.seq for i in store.instances_of(SERIES_A1)] == [1, 2]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_batches_record_exactly_what_one_by_one_does(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    clock = FixedClock()
    batched = JobStore(f"sqlite:///{tmp_path / 'batched.db'}", clock=clock)
    single = JobStore(f"sqlite:///{tmp_path / 'single.db'}", clock=clock)
    studies = [f"1.2.3.{n}" for n in range(3)]
    series = [f"1.2.3.{n}.{m}" for n in range(3) for m in range(2)] + ["1.2.3.9.9"]
    order = OrderContext("ACC-1", patient_id="PID-1", study_instance_uid=studies[0])

    def random_arrival() -> InstanceArrival:
        study = rng.choice(studies)
        own = [s for s in series if s.startswith(f"{study}.")]
        return InstanceArrival(
            study,
            rng.choice(own) if rng.random() < 0.95 else rng.choice(series),
            f"1.2.3.4.{rng.randrange(160)}",  # 200 draws from 160 UIDs: many repeats
            f"/spool/{rng.randrange(10**6)}.dcm",
            rng.choice(["ACC-1", "ACC-2", ""]),
            rng.choice(["PID-1", "PID-2", ""]),
            rng.choice(["CT_SCANNER", "MR_SCANNER"]),
            rng.choice(["CT", "MR"]),
        )

    sequence = [random_arrival() for _ in range(200)]
    results: dict[str, list[InstanceRecordResult]] = {"batched": [], "single": []}
    for store in (batched, single):
        store.record_order(order)
    for index, half in enumerate((sequence[:100], sequence[100:])):
        start = 0
        while start < len(half):
            size = rng.choice([1, 2, 3, 7, 16, 40, 64])
            batch = half[start : start + size]
            results["batched"] += batched.record_instances(batch)
            results["single"] += record_one_by_one(single, batch)
            start += size
        # Between the halves the first study completes: the rest of its instances are late.
        if index == 0 and batched.study(studies[0]) is not None:
            counts = {s.series_instance_uid: s.instance_count for s in single.series_of(studies[0])}
            clock.now = T0 + timedelta(seconds=10)
            for store in (batched, single):
                store.mark_study_complete(studies[0], counts)
            clock.now = T0 + timedelta(seconds=20)
    assert len(results["batched"]) == 200
    assert results["batched"] == results["single"]
    assert any(not r.new for r in results["batched"])
    assert any(r.conflict for r in results["batched"])
    assert any(r.late for r in results["batched"])
    assert table_rows(batched) == table_rows(single)
    for store in (batched, single):
        store.close()
