"""Every way a study leaves the coordinator leaves nothing of it in memory.

A study is kept in memory (its :class:`~serving.service.in_flight.StudyInFlight`: headers, rule
facts, decisions) from its first recorded instance until it is routed. These tests drive a real
coordinator (real job store, rules, registry; no engine: AI unavailable) through each exit —
routed with tasks, routed without, quarantined, routing failed, completed by the idle timeout,
a late instance ignored, a late instance re-run, routed again after a restart — and check that
nothing of the study is left in flight, and nothing waits for the engine or the results side.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydicom
import pytest

from models.registry import Registry
from models.synthetic import generate_study
from router.rules import (
    Decision,
    RuleSet,
    StudyFacts,
    StudyFactsBuilder,
    default_rules,
    facts_from_datasets,
)
from router.vocabulary import PriorityClass
from router.worklist import Worklist
from serving.gateway.spool import InstanceSource, StoredInstance
from serving.jobstore import JobStore, StudyState
from serving.metrics import Metrics
from serving.service.coordinator import Coordinator
from serving.service.in_flight import StudyInFlight
from serving.service.ingest_queue import Released, Stored

QUIET_S = 1.0
IDLE_S = 30.0


class Clock:
    """A monotonic clock the test moves by hand (seconds)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class NoSink:
    """Results are never produced here (no engine): any call is a test failure."""

    def enqueue_results(self, *args: object) -> None:
        """Fail: no engine runs here."""
        raise AssertionError("no result expected without an engine")


def utc() -> datetime:
    return datetime.now(UTC)


def coordinator(
    tmp: Path, clock: Clock, *, late: str = "rerun", rules: RuleSet | None = None
) -> Coordinator:
    store = JobStore(f"sqlite:///{tmp / 'statlane.db'}", clock=utc)
    return Coordinator(
        store=store,
        rules=rules or default_rules(),
        rules_hash="test",
        registry=Registry.default(),
        runtime=None,
        worklist=Worklist(clock=utc),
        metrics=Metrics(),
        sink=NoSink(),
        quiet_period_s={c: QUIET_S for c in PriorityClass},
        mono=clock,
        utc=utc,
        late_instances=late,
        idle_timeout_s=IDLE_S,
    )


def send(c: Coordinator, files: Sequence[Path], *, release: bool = True) -> str:
    """Record ``files`` as the ingest thread would, then the association's release."""
    batch = []
    for path in files:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        batch.append((str(header.StudyInstanceUID), header, str(path), "MODALITY", c.mono()))
    c.record_batch(batch)
    uid = batch[0][0]
    if release:
        c.ingest([Released((uid,), c.mono())])
    return uid


def settle(c: Coordinator, clock: Clock, seconds: float) -> None:
    clock.now += seconds
    c.tick()


def assert_nothing_left(c: Coordinator) -> None:
    assert len(c.in_flight) == 0, list(c.in_flight)
    assert not c.has_work()
    assert len(c.finished) == 0
    assert c.ingest_idle()


def test_routed_with_tasks(tmp_path: Path) -> None:
    study = generate_study("ct-head", tmp_path / "in", seed=1, slices=32, matrix=32)
    clock = Clock()
    c = coordinator(tmp_path, clock)
    uid = send(c, study.files)
    assert uid in c.in_flight
    settle(c, clock, QUIET_S + 0.1)
    tasks = c.store.tasks(study_uid=uid)
    assert [t.model.split("@")[0] for t in tasks] == ["ich-ct-head"]
    assert_nothing_left(c)


def test_stat_study_is_judged_once_and_forgotten(tmp_path: Path) -> None:
    study = generate_study(
        "ct-head", tmp_path / "in", seed=2, slices=32, matrix=32, priority="STAT"
    )
    clock = Clock()
    c = coordinator(tmp_path, clock)
    uid = send(c, study.files)
    flight = c.in_flight.get(uid)
    assert flight is not None
    assert flight.stat is True
    settle(c, clock, QUIET_S + 0.1)
    assert [t.priority for t in c.store.tasks(study_uid=uid)] == [PriorityClass.STAT]
    assert_nothing_left(c)


def test_routed_without_tasks(tmp_path: Path) -> None:
    study = generate_study("ct-head", tmp_path / "in", seed=3, slices=32, matrix=32)
    clock = Clock()
    c = coordinator(tmp_path, clock)
    uid = send(c, study.files[:10])  # the rules want 16 images or more
    settle(c, clock, QUIET_S + 0.1)
    assert c.store.tasks(study_uid=uid) == []
    row = c.store.study(uid)
    assert row is not None
    assert row.state is StudyState.DONE
    assert_nothing_left(c)


def test_quarantined(tmp_path: Path) -> None:
    study = generate_study("ct-head", tmp_path / "in", seed=4, slices=32, matrix=32)
    odd = pydicom.dcmread(study.files[-1])
    odd.PatientID = "SOMEONE-ELSE"
    odd.save_as(study.files[-1])
    clock = Clock()
    c = coordinator(tmp_path, clock)
    uid = send(c, study.files)
    settle(c, clock, QUIET_S + 0.1)
    row = c.store.study(uid)
    assert row is not None
    assert row.state is StudyState.QUARANTINED
    assert_nothing_left(c)


def test_routing_failed(tmp_path: Path) -> None:
    study = generate_study("ct-head", tmp_path / "in", seed=5, slices=32, matrix=32)
    clock = Clock()
    c = coordinator(tmp_path, clock)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("job store down")

    c.store.record_routing = broken  # type: ignore[method-assign,assignment]
    uid = send(c, study.files)
    settle(c, clock, QUIET_S + 0.1)
    assert "routing-failed" in {e.event for e in c.store.audit_events(study_uid=uid)}
    assert_nothing_left(c)


def test_completed_by_the_idle_timeout(tmp_path: Path) -> None:
    study = generate_study("ct-head", tmp_path / "in", seed=6, slices=32, matrix=32)
    clock = Clock()
    c = coordinator(tmp_path, clock)
    uid = send(c, study.files, release=False)  # the association never ends
    settle(c, clock, QUIET_S + 0.1)
    assert uid in c.in_flight  # not released: the quiet period does not apply
    settle(c, clock, IDLE_S)
    decisions = c.store.routing_decisions(uid)
    assert [d.decision["completed_by"] for d in decisions] == ["idle-timeout"]
    assert_nothing_left(c)


@pytest.mark.parametrize("late", ["ignore", "rerun"])
def test_late_instance(tmp_path: Path, late: str) -> None:
    study = generate_study("ct-head", tmp_path / "in", seed=7, slices=33, matrix=32)
    *first, last = study.files
    clock = Clock()
    c = coordinator(tmp_path, clock, late=late)
    uid = send(c, first)
    settle(c, clock, QUIET_S + 0.1)
    assert_nothing_left(c)
    send(c, [last])
    if late == "ignore":
        assert_nothing_left(c)
        assert "late-instance-ignored" in {e.event for e in c.store.audit_events(study_uid=uid)}
        return
    assert uid in c.in_flight
    settle(c, clock, QUIET_S + 0.1)
    generations = [d.decision["generation"] for d in c.store.routing_decisions(uid)]
    assert generations == [0, 1]
    # generation 1 was routed on every instance, read back from the spool for the first 32
    assert "33 images" in c.store.routing_decisions(uid)[1].decision["tasks"][0]["series_reason"]
    assert_nothing_left(c)


def test_routed_again_after_a_restart(tmp_path: Path) -> None:
    """Killed after the study was marked complete, before its decision: recovery routes it."""
    study = generate_study("ct-head", tmp_path / "in", seed=8, slices=32, matrix=32)
    clock = Clock()
    first = coordinator(tmp_path, clock)
    uid = send(first, study.files)
    first.store.mark_study_complete(uid, {})
    first.store.close()
    again = coordinator(tmp_path, clock)
    spooled = []
    for path in study.files:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        spooled.append(_spooled(header, path))
    resumed = again.recover(spooled)
    assert resumed["rerouted"] == 1
    assert [t.model.split("@")[0] for t in again.store.tasks(study_uid=uid)] == ["ich-ct-head"]
    assert_nothing_left(again)


def test_typed_ingest_messages_apply_in_order(tmp_path: Path) -> None:
    """A release applies after the instances queued before it, through the ingest queue."""
    study = generate_study("ct-head", tmp_path / "in", seed=9, slices=32, matrix=32)
    clock = Clock()
    c = coordinator(tmp_path, clock)
    for path in study.files:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        c.instance_stored(_spooled(header, path))
    uid = str(pydicom.dcmread(study.files[0], stop_before_pixels=True).StudyInstanceUID)
    c.association_ended([uid, uid])
    batches = []
    while not c.ingest_idle():
        batch = c.ingest_queue.take(batch=8, linger_s=0.0)
        batches.append(batch)
        c.ingest(batch)
    assert all(isinstance(m, Stored) for b in batches for m in b[:-1])
    assert batches[-1][-1] == Released((uid,), clock.now)
    assert sum(len(b) for b in batches) == len(study.files) + 1
    settle(c, clock, QUIET_S + 0.1)
    assert c.store.tasks(study_uid=uid)
    assert_nothing_left(c)


def _spooled(header: pydicom.Dataset, path: Path) -> StoredInstance:
    return StoredInstance(
        sop_instance_uid=str(header.SOPInstanceUID),
        sop_class_uid=str(header.SOPClassUID),
        series_instance_uid=str(header.SeriesInstanceUID),
        study_instance_uid=str(header.StudyInstanceUID),
        path=path,
        size_bytes=path.stat().st_size,
        transfer_syntax_uid=str(header.file_meta.TransferSyntaxUID),
        received_at=utc(),
        source=InstanceSource("MODALITY", "127.0.0.1", "dimse", "test"),
    )


def test_rules_run_once_per_decision_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stat judgement on the first instance, then one decision for the complete study that the
    quiet period and the route share: two evaluations, however often the loop checks."""
    import serving.service.coordinator as module

    calls: list[int] = []
    real = module.evaluate

    def counting(ruleset: RuleSet, facts: StudyFacts, *args: Any, **kwargs: Any) -> Decision:
        calls.append(sum(s.image_count for s in facts.series))
        return real(ruleset, facts, *args, **kwargs)

    monkeypatch.setattr(module, "evaluate", counting)
    study = generate_study("ct-head", tmp_path / "in", seed=10, slices=32, matrix=32)
    clock = Clock()
    c = coordinator(tmp_path, clock)
    uid = send(c, study.files)
    for _ in range(5):  # the loops check often while the quiet period runs
        c.next_wakeup_s()
        c.tick()
    settle(c, clock, QUIET_S + 0.1)
    assert c.store.tasks(study_uid=uid)
    assert calls == [1, 32]
    assert_nothing_left(c)


def test_incremental_facts_match_facts_built_at_once(tmp_path: Path) -> None:
    study = generate_study("ct-chest", tmp_path / "in", seed=11, slices=100, matrix=32)
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in study.files]
    builder = StudyFactsBuilder()
    for count, header in enumerate(headers, start=1):
        builder.add(header)
        if count in (1, 7, len(headers)):  # asked midway, as the coordinator does
            assert builder.facts("MODALITY") == facts_from_datasets(headers[:count], "MODALITY")


def test_facts_folded_by_several_threads_count_each_header_once(tmp_path: Path) -> None:
    """The ingest thread (stat judgement) and the loops (quiet period, routing) may ask for
    the facts at once while headers keep arriving: each header is folded in exactly once."""
    study = generate_study("ct-head", tmp_path / "in", seed=12, slices=64, matrix=32)
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in study.files]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch every few bytecodes: races show at once
    try:
        _fold_concurrently(headers)
    finally:
        sys.setswitchinterval(interval)


def _fold_concurrently(headers: Sequence[pydicom.Dataset]) -> None:
    for _ in range(5):
        flight = StudyInFlight(str(headers[0].StudyInstanceUID))
        stop = threading.Event()

        def ask(flight: StudyInFlight = flight, stop: threading.Event = stop) -> None:
            while not stop.is_set():
                flight.study_facts(None)

        first, *rest = headers
        flight.add(str(first.SOPInstanceUID), first)  # facts need one header
        askers = [threading.Thread(target=ask) for _ in range(3)]
        for thread in askers:
            thread.start()
        for header in rest:
            flight.add(str(header.SOPInstanceUID), header)
        stop.set()
        for thread in askers:
            thread.join()
        facts = flight.study_facts(None)
        assert sum(s.image_count for s in facts.series) == len(headers)


def test_a_study_sent_again_after_its_route_is_not_kept(tmp_path: Path) -> None:
    """A modality re-sends a routed study: its instances are duplicates, nothing reopens."""
    study = generate_study("ct-head", tmp_path / "in", seed=13, slices=32, matrix=32)
    clock = Clock()
    c = coordinator(tmp_path, clock)
    uid = send(c, study.files)
    settle(c, clock, QUIET_S + 0.1)
    send(c, study.files)
    assert_nothing_left(c)
    settle(c, clock, IDLE_S + 1)
    assert len(c.store.routing_decisions(uid)) == 1
    assert_nothing_left(c)


@pytest.mark.parametrize("state", ["done", "routed"])
def test_a_restart_keeps_nothing_of_studies_already_routed(tmp_path: Path, state: str) -> None:
    """Recovery records every spooled instance again; a study routed before the restart (its
    task finished, or still queued) leaves no in-memory state behind."""
    study = generate_study("ct-head", tmp_path / "in", seed=14, slices=32, matrix=32)
    clock = Clock()
    first = coordinator(tmp_path, clock)
    if state == "routed":  # died before its task ran: routed, the task still queued
        first.launch = lambda *args, **kwargs: None  # type: ignore[method-assign]
    uid = send(first, study.files)
    settle(first, clock, QUIET_S + 0.1)
    row = first.store.study(uid)
    assert row is not None
    assert row.state is (StudyState.ROUTED if state == "routed" else StudyState.DONE)
    first.store.close()
    again = coordinator(tmp_path, clock)
    spooled = [_spooled(pydicom.dcmread(p, stop_before_pixels=True), p) for p in study.files]
    again.recover(spooled)
    assert_nothing_left(again)
    settle(again, clock, IDLE_S + 1)  # nothing of it is routed again
    assert len(again.store.routing_decisions(uid)) == 1
    assert_nothing_left(again)
