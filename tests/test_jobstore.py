"""The job store: idempotent recording, identity checks, exactly-once tasks, durable transitions."""

from __future__ import annotations

import ast
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest

from router.vocabulary import OrderContext, OrderPriority, PriorityClass
from serving.jobstore import (
    EntityKind,
    InstanceRecordResult,
    JobStore,
    OrderState,
    StudyState,
    TaskState,
    TransitionError,
    UnknownEntityError,
    hash_patient_id,
)
from serving.jobstore.store import MODES

T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
STUDY, SERIES = "1.2.826.0.1.1", "1.2.826.0.1.1.1"
PATIENT, ACCESSION = "PID-4711", "ACC-1"


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "var" / "statlane.db"


@pytest.fixture
def store(db_path: Path, clock: FakeClock) -> JobStore:
    return JobStore(f"sqlite:///{db_path}", clock=clock)


R = TypeVar("R")


def present(row: R | None) -> R:
    assert row is not None
    return row


def receive(
    store: JobStore,
    sop: str,
    *,
    study: str = STUDY,
    series: str = SERIES,
    patient: str = PATIENT,
    accession: str = ACCESSION,
) -> InstanceRecordResult:
    return store.record_instance(
        study, series, sop, f"/spool/{sop}.dcm", accession, patient, "CT_SCANNER", "CT"
    )


def new_task(store: JobStore, generation: int = 0, model_version: str = "2") -> str:
    return store.create_task(
        STUDY,
        SERIES,
        rule_name="ct-head-ed",
        model_name="ich-ct-head",
        model_version=model_version,
        priority=PriorityClass.STAT,
        deadline_at=T0 + timedelta(minutes=1),
        mode="triage",
        destinations=["pacs", "worklist"],
        generation=generation,
    ).task_id


def test_record_instance_is_idempotent_on_sop_uid(store: JobStore) -> None:
    assert receive(store, "1.1") == InstanceRecordResult(new=True, conflict=None, late=False)
    assert receive(store, "1.1") == InstanceRecordResult(new=False, conflict=None, late=False)
    (series,) = store.series_of(STUDY)
    assert (series.series_instance_uid, series.instance_count, series.modality) == (
        SERIES,
        1,
        "CT",
    )
    assert [i.path for i in store.instances_of(SERIES)] == ["/spool/1.1.dcm"]
    study = store.study(STUDY)
    assert study is not None
    assert study.state == StudyState.RECEIVING
    assert study.patient_id_hash == hash_patient_id(PATIENT) != PATIENT
    assert study.calling_ae == "CT_SCANNER"


def test_instances_come_back_in_arrival_order(store: JobStore) -> None:
    for sop in ("1.9", "1.10", "1.2", "1.10"):
        receive(store, sop)
    rows = store.instances_of(SERIES)
    assert [r.sop_instance_uid for r in rows] == ["1.9", "1.10", "1.2"]
    assert [r.seq for r in rows] == [1, 2, 3]


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"patient": "PID-9999"}, "PatientID differs from the study's first instance"),
        ({"accession": "ACC-2"}, "AccessionNumber differs from the study's first instance"),
    ],
)
def test_identity_conflict_names_the_field_never_the_value(
    store: JobStore, db_path: Path, changes: dict[str, str], reason: str
) -> None:
    receive(store, "1.1")
    result = receive(store, "1.2", **changes)
    assert result.new
    assert result.conflict == reason
    assert "PID" not in reason
    assert "ACC" not in reason
    store.close()
    stored = b"".join(p.read_bytes() for p in db_path.parent.iterdir())
    assert b"PID-4711" not in stored
    assert b"PID-9999" not in stored


def test_instance_disagreeing_with_its_order_is_a_conflict(store: JobStore) -> None:
    store.record_order(OrderContext(ACCESSION, patient_id="PID-1234", study_instance_uid="9.9"))
    result = receive(store, "1.1")
    assert result.conflict == (
        "PatientID differs from the order's; StudyInstanceUID differs from the order's"
    )


def test_series_uid_reused_by_another_study_is_a_conflict(store: JobStore) -> None:
    receive(store, "1.1")
    result = receive(store, "2.1", study="1.2.826.0.1.2", accession="ACC-9", patient="PID-2")
    assert result.conflict == "SeriesInstanceUID already belongs to another study"


def test_study_lifecycle_and_late_instances(store: JobStore, clock: FakeClock) -> None:
    receive(store, "1.1")
    receive(store, "1.2")
    done_at = clock.advance(30)
    study = store.mark_study_complete(STUDY, {SERIES: 2})
    assert (study.state, study.completed_at) == (StudyState.COMPLETE, done_at)
    (series,) = store.series_of(STUDY)
    assert (series.expected_count, series.complete_at) == (2, done_at)
    store.record_routing(STUDY, {"matched": [{"rule": "ct-head-ed"}]}, rules_hash="ab12")
    assert store.routing_decisions(STUDY)[0].rules_hash == "ab12"
    assert present(store.study(STUDY)).state == StudyState.ROUTED
    store.set_study_state(STUDY, StudyState.DONE)
    assert receive(store, "1.3").late is True
    assert store.series_of(STUDY)[0].complete_at is None
    assert [t.to_state for t in store.transitions(SERIES, EntityKind.SERIES)] == [
        "receiving",
        "complete",
        "receiving",
    ]
    reopened = store.set_study_state(STUDY, StudyState.RECEIVING, {"reason": "late instances"})
    assert (reopened.state, reopened.completed_at) == (StudyState.RECEIVING, None)
    assert [t.to_state for t in store.transitions(STUDY)] == [
        "receiving",
        "complete",
        "routed",
        "done",
        "receiving",
    ]


def test_mark_complete_repeats_harmlessly_and_checks_series(store: JobStore) -> None:
    receive(store, "1.1")
    with pytest.raises(UnknownEntityError, match=r"series 9\.9 is not in the job store"):
        store.mark_study_complete(STUDY, {"9.9": 1})
    store.mark_study_complete(STUDY, {SERIES: 1})
    store.mark_study_complete(STUDY, {SERIES: 1})
    assert len(store.transitions(STUDY)) == 2
    with pytest.raises(UnknownEntityError, match=r"study 7\.7 is not in the job store"):
        store.mark_study_complete("7.7", {})


def test_quarantine_holds_the_study(store: JobStore) -> None:
    receive(store, "1.1")
    held = store.quarantine_study(STUDY, "PatientID differs from the study's first instance")
    assert held.state == StudyState.QUARANTINED
    assert held.quarantine_reason == "PatientID differs from the study's first instance"
    with pytest.raises(TransitionError, match=f"study {STUDY}: cannot go from quarantined"):
        store.mark_study_complete(STUDY, {})
    released = store.set_study_state(STUDY, StudyState.RECEIVING)
    assert released.quarantine_reason is None


def test_create_task_is_idempotent_per_generation(store: JobStore) -> None:
    receive(store, "1.1")
    first = new_task(store)
    assert new_task(store) == first
    rerun = new_task(store, generation=1)
    other_model = new_task(store, model_version="3")
    assert len({first, rerun, other_model}) == 3
    assert len(store.tasks(study_uid=STUDY)) == 3
    task = store.task(first)
    assert task is not None
    assert (task.state, task.priority, task.model, task.destinations) == (
        TaskState.QUEUED,
        PriorityClass.STAT,
        "ich-ct-head@2",
        ("pacs", "worklist"),
    )
    assert task.deadline_at == T0 + timedelta(minutes=1)


def test_create_task_rejects_bad_input(store: JobStore) -> None:
    with pytest.raises(UnknownEntityError):
        new_task(store)
    receive(store, "1.1")
    naive = T0.replace(tzinfo=None)
    for deadline, mode, message in [(T0, "loud", "mode 'loud'"), (naive, "shadow", "aware")]:
        with pytest.raises(ValueError, match=message):
            store.create_task(
                STUDY,
                SERIES,
                rule_name="r",
                model_name="m",
                model_version="1",
                priority=PriorityClass.ROUTINE,
                deadline_at=deadline,
                mode=mode,
            )


def test_a_task_runs_to_completion_exactly_once(store: JobStore, clock: FakeClock) -> None:
    receive(store, "1.1")
    task_id = new_task(store)
    assert store.start_task(task_id) == 1
    with pytest.raises(TransitionError, match="cannot go from running to running"):
        store.start_task(task_id)
    # The worker died: on restart the task is requeued and a second worker starts it.
    assert store.requeue_interrupted() == [task_id]
    assert store.requeue_interrupted() == []
    assert store.start_task(task_id) == 2
    assert store.finish_task(task_id, 1, {"late": "first worker"}) is False
    assert store.fail_task(task_id, 1, "stale") is False
    clock.advance(5)
    assert store.finish_task(task_id, 2, {"ich": {"probability": 0.93}}) is True
    assert store.finish_task(task_id, 2, {"again": True}) is False
    task = store.task(task_id)
    assert task is not None
    assert (task.state, task.attempts, task.result, task.finished_at) == (
        TaskState.DONE,
        2,
        {"ich": {"probability": 0.93}},
        T0 + timedelta(seconds=5),
    )
    assert store.cancel_task(task_id, "order cancelled") is False


def test_failed_and_cancelled_tasks(store: JobStore) -> None:
    receive(store, "1.1")
    failing, cancelled = new_task(store), new_task(store, generation=1)
    attempt = store.start_task(failing)
    assert store.fail_task(failing, attempt, "backend timeout after 30 s") is True
    assert store.cancel_task(cancelled, "order cancelled") is True
    assert [t.task_id for t in store.tasks(TaskState.FAILED)] == [failing]
    assert present(store.task(cancelled)).error == "order cancelled"
    with pytest.raises(UnknownEntityError, match="task nope is not in the job store"):
        store.start_task("nope")


def test_every_change_is_a_transition_stamped_by_the_clock(
    store: JobStore, clock: FakeClock
) -> None:
    receive(store, "1.1")
    task_id = new_task(store)
    started = clock.advance(2)
    attempt = store.start_task(task_id)
    finished = clock.advance(3)
    store.finish_task(task_id, attempt, {})
    rows = store.transitions(task_id)
    assert [(r.entity_kind, r.from_state, r.to_state, r.at) for r in rows] == [
        (EntityKind.TASK, None, "queued", T0),
        (EntityKind.TASK, "queued", "running", started),
        (EntityKind.TASK, "running", "done", finished),
    ]
    assert rows[1].detail == {"attempt": 1}


def test_orders_upsert_and_cancel(store: JobStore, clock: FakeClock) -> None:
    order = OrderContext(
        ACCESSION,
        priority=OrderPriority.STAT,
        procedure_code="24725-4",
        procedure_scheme="LN",
        indication="headache",
        patient_id=PATIENT,
    )
    assert store.record_order(order).state == OrderState.ACTIVE
    clock.advance(60)
    row = store.record_order(OrderContext(ACCESSION, order_control="CA"))
    assert row.state == OrderState.CANCELLED
    assert (row.priority, row.procedure_code, row.indication) == (
        OrderPriority.STAT,
        "24725-4",
        "headache",
    )
    assert row.patient_id_hash == hash_patient_id(PATIENT)
    assert row.context().patient_id == ""
    assert [(t.to_state, t.at) for t in store.transitions(ACCESSION)] == [
        ("active", T0),
        ("cancelled", T0 + timedelta(seconds=60)),
    ]
    assert store.order("ACC-404") is None
    with pytest.raises(ValueError, match="no accession number"):
        store.record_order(OrderContext(""))


def test_audit_events_filter_and_refuse_patient_identity(store: JobStore, clock: FakeClock) -> None:
    store.audit("instance.received", study_uid=STUDY, accession=ACCESSION)
    later = clock.advance(10)
    store.audit("task.deadline_at_risk", study_uid="other", task_id="t1", detail={"slack_s": -3})
    assert [e.event for e in store.audit_events(since=later)] == ["task.deadline_at_risk"]
    assert [e.event for e in store.audit_events(study_uid=STUDY)] == ["instance.received"]
    with pytest.raises(ValueError, match="PatientName"):
        store.audit("oops", detail={"study": {"PatientName": "DOE^JANE"}})
    with pytest.raises(ValueError, match="patient_id"):
        store.audit("oops", detail={"items": [{"patient_id": "x"}]})
    assert len(store.audit_events()) == 2


def test_everything_survives_reopening_the_file(db_path: Path, clock: FakeClock) -> None:
    url = f"sqlite:///{db_path}"
    first = JobStore(url, clock=clock)
    receive(first, "1.1")
    task_id = new_task(first)
    first.start_task(task_id)
    first.audit("task.started", task_id=task_id)
    with first.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    first.close()

    reopened = JobStore(url, clock=clock)
    assert present(reopened.study(STUDY)).state == StudyState.RECEIVING
    assert [i.path for i in reopened.instances_of(SERIES)] == ["/spool/1.1.dcm"]
    assert present(reopened.task(task_id)).state == TaskState.RUNNING
    assert [t.to_state for t in reopened.transitions(task_id)] == ["queued", "running"]
    assert reopened.transitions(task_id)[0].at == T0
    assert [e.event for e in reopened.audit_events()] == ["task.started"]
    assert reopened.requeue_interrupted() == [task_id]


def test_concurrent_writers_lose_nothing(store: JobStore) -> None:
    per_thread, threads = 25, 4
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def writer(index: int) -> None:
        try:
            start.wait()
            for n in range(per_thread):
                series = f"{SERIES}.{n % 2}"
                receive(store, f"9.{index}.{n}", series=series)
                receive(store, f"9.{index}.{n}", series=series)  # a resend
        except BaseException as error:  # noqa: BLE001 - a thread's error is lost unless kept
            errors.append(error)

    workers = [threading.Thread(target=writer, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    series = store.series_of(STUDY)
    assert sum(s.instance_count for s in series) == per_thread * threads
    for one in series:
        assert [i.seq for i in store.instances_of(one.series_instance_uid)] == list(
            range(1, one.instance_count + 1)
        )
    assert len(store.transitions(STUDY)) == 1


def test_a_naive_clock_is_refused(tmp_path: Path) -> None:
    store = JobStore(f"sqlite:///{tmp_path / 'x.db'}", clock=lambda: datetime(2024, 5, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        receive(store, "1.1")


def test_modes_match_the_router_contract() -> None:
    # Read the contract's source: importing router.result pulls in torch (seconds per run).
    source = Path(__file__).parents[1] / "router" / "result.py"
    (mode,) = [
        node
        for node in ast.parse(source.read_text()).body
        if isinstance(node, ast.ClassDef) and node.name == "Mode"
    ]
    values = {
        node.value.value
        for node in mode.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
    }
    assert set(MODES) == values


def test_an_in_memory_store_serves_single_threaded_tests(clock: FakeClock) -> None:
    store = JobStore("sqlite://", clock=clock)
    receive(store, "1.1")
    assert present(store.study(STUDY)).state == StudyState.RECEIVING


def test_rebuildable_commits_skip_the_fsync_and_a_task_end_keeps_it(store: JobStore) -> None:
    """Instance records (rebuilt from the spool) and a study's routing up to its task's start
    (a restart re-routes and re-runs) are committed without fsync; the task's end is fsynced,
    and takes the earlier commits to disk with it."""
    from sqlalchemy import event

    modes: list[str] = []

    def spy(conn: object, cursor: object, statement: str, *_: object) -> None:
        if statement.startswith("PRAGMA synchronous="):
            modes.append(statement.rsplit("=", 1)[1])

    event.listen(store.engine, "before_cursor_execute", spy)
    receive(store, f"{SERIES}.1")
    receive(store, f"{SERIES}.2")
    store.mark_study_complete(STUDY, {SERIES: 2})
    receive(store, f"{SERIES}.3")
    task_id = new_task(store)
    attempt = store.start_task(task_id)
    assert modes == ["NORMAL"]  # switched only when it changes
    assert store.finish_task(task_id, attempt, {"findings": []})
    store.audit("probe")

    assert modes == ["NORMAL", "FULL"]
    with store.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL


def test_writers_of_one_process_queue_in_process_not_in_sqlites_busy_handler(
    db_path: Path, clock: FakeClock
) -> None:
    """With no busy timeout SQLite refuses a second writer at once ("database is locked"):
    every concurrent write still succeeds because the store serialises its own writers."""
    store = JobStore(f"sqlite:///{db_path}", clock=clock, busy_timeout_s=0.0)
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def write(k: int) -> None:
        start.wait()
        try:
            for i in range(10):
                store.audit("probe", detail={"writer": k, "i": i})
        except BaseException as error:  # noqa: BLE001 - a thread's error is lost unless kept
            errors.append(error)

    threads = [threading.Thread(target=write, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len([e for e in store.audit_events() if e.event == "probe"]) == 80


def _routed(store: JobStore, generation: int, models: list[str]) -> None:
    """Complete and route the study as ``generation`` with one planned task per model."""
    store.mark_study_complete(STUDY, {SERIES: 1})
    tasks = [{"series": SERIES, "model": model} for model in models]
    store.record_routing(STUDY, {"generation": generation, "tasks": tasks})


def test_a_study_is_done_when_its_last_task_ends_done_or_failed(store: JobStore) -> None:
    receive(store, "1.1")
    _routed(store, 0, ["ich-ct-head@2", "ich-ct-head@3"])
    first = new_task(store)
    assert store.planned_tasks_exist(STUDY) is False
    assert store.finish_study(STUDY) is False  # the second planned task is not created yet
    second = new_task(store, model_version="3")
    assert store.planned_tasks_exist(STUDY) is True
    attempt = store.start_task(first)
    assert store.finish_task(first, attempt, {"ok": True})
    assert store.finish_study(STUDY) is False  # the second is still queued
    assert store.fail_task(second, store.start_task(second), "backend down")
    assert store.finish_study(STUDY) is True  # a failed task has ended too
    assert present(store.study(STUDY)).state == StudyState.DONE
    assert store.finish_study(STUDY) is True  # repeats harmlessly
    assert [t.to_state for t in store.transitions(STUDY)][-1:] == ["done"]
    assert len([t for t in store.transitions(STUDY) if t.to_state == "done"]) == 1


def test_an_older_generation_ending_never_closes_a_study_being_rerouted(store: JobStore) -> None:
    """The late-instance race: generation 1's decision is written, its task not yet, when
    generation 0's task ends. The study stays open until generation 1's task ends."""
    receive(store, "1.1")
    _routed(store, 0, ["ich-ct-head@2"])
    old = new_task(store)
    attempt = store.start_task(old)
    assert receive(store, "1.2").late is True
    store.set_study_state(STUDY, StudyState.RECEIVING, {"reason": "late instance"})
    assert store.finish_task(old, attempt, {"ok": True})
    assert store.finish_study(STUDY) is False  # reopened
    _routed(store, 1, ["ich-ct-head@2"])
    assert present(store.study(STUDY)).state == StudyState.ROUTED
    assert store.finish_study(STUDY) is False  # routed again, its task not created yet
    rerun = new_task(store, generation=1)
    assert store.finish_study(STUDY) is False  # queued
    assert store.finish_task(rerun, store.start_task(rerun), {"ok": True})
    assert store.finish_study(STUDY) is True
    assert present(store.study(STUDY)).state == StudyState.DONE
