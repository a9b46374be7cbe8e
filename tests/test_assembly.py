"""Study assembly: completion by expected count, by quiet period after release, by idle timeout."""

from __future__ import annotations

from serving.service.assembly import Arrival, StudyAssembler, StudyState


def _assembler(quiet: float = 2.0, idle: float = 60.0) -> StudyAssembler:
    return StudyAssembler(lambda study: quiet, idle_timeout_s=idle)


def _add(
    a: StudyAssembler,
    k: int,
    now: float,
    *,
    study: str = "1.2.3",
    series: str = "1.2.3.4",
    expected: int | None = None,
) -> Arrival:
    return a.add(
        study_uid=study,
        series_uid=series,
        sop_uid=f"{series}.{k}",
        path=f"/spool/{k}",
        modality="CT",
        now=now,
        expected=expected,
    )


def test_complete_after_release_and_quiet_period_only() -> None:
    a = _assembler(quiet=2.0)
    for k in range(5):
        assert _add(a, k, now=float(k) * 0.1) is Arrival.NEW
    assert a.due(now=10.0) == []  # not released, idle timeout not reached
    a.released("1.2.3", now=0.5)
    assert a.due(now=2.3) == []  # 1.9 s quiet < 2 s
    assert a.next_check_s(now=2.3) == 0.4 + 2.0
    [study] = a.due(now=2.45)
    assert study.reason == "quiet-period"
    assert study.series == {"1.2.3.4": [f"/spool/{k}" for k in range(5)]}
    assert a.due(now=100.0) == []  # handed out exactly once


def test_expected_count_completes_without_waiting() -> None:
    a = _assembler(quiet=30.0)
    for k in range(3):
        _add(a, k, now=1.0, expected=3)
    [study] = a.due(now=1.0)
    assert study.reason == "expected-count"
    assert study.waited_s == 0.0


def test_instances_after_release_restart_the_quiet_period() -> None:
    a = _assembler(quiet=2.0)
    _add(a, 0, now=0.0)
    a.released("1.2.3", now=0.1)
    _add(a, 1, now=1.5)  # a second association continues the study
    assert a.due(now=2.5) == []  # released before the last instance: wait for the next release
    a.released("1.2.3", now=1.6)
    assert a.due(now=3.4) == []
    assert [s.study_uid for s in a.due(now=3.6)] == ["1.2.3"]


def test_idle_timeout_without_release() -> None:
    a = _assembler(quiet=2.0, idle=30.0)
    _add(a, 0, now=0.0)
    assert a.due(now=29.0) == []
    [study] = a.due(now=30.0)
    assert study.reason == "idle-timeout"


def test_duplicates_and_late_instances() -> None:
    a = _assembler(quiet=1.0)
    _add(a, 0, now=0.0)
    assert _add(a, 0, now=0.1) is Arrival.DUPLICATE
    a.released("1.2.3", now=0.2)
    [first] = a.due(now=1.5)
    assert first.generation == 0
    assert _add(a, 1, now=2.0) is Arrival.LATE
    assert a.reopen("1.2.3") == 1
    a.released("1.2.3", now=2.1)
    [second] = a.due(now=3.5)
    assert second.generation == 1
    assert len(second.series["1.2.3.4"]) == 2


def test_quiet_period_is_per_study() -> None:
    def quiet(study: StudyState) -> float:
        return 0.5 if study.study_uid == "stat" else 10.0

    a = StudyAssembler(quiet)
    _add(a, 0, now=0.0, study="stat", series="s1")
    _add(a, 0, now=0.0, study="routine", series="s2")
    a.released("stat", now=0.0)
    a.released("routine", now=0.0)
    assert [s.study_uid for s in a.due(now=0.6)] == ["stat"]
    assert [s.study_uid for s in a.due(now=10.0)] == ["routine"]


def test_due_and_next_check_can_look_at_some_studies_only() -> None:
    a = _assembler(quiet=1.0)
    _add(a, 1, now=0.0, study="stat", series="stat.1")
    _add(a, 1, now=0.5, study="routine", series="routine.1")
    a.released("stat", now=0.1)
    a.released("routine", now=0.6)

    def is_stat(uid: str) -> bool:
        return uid == "stat"

    assert a.next_check_s(now=0.7, only=is_stat) == 1.0
    assert a.next_check_s(now=0.7, only=lambda uid: uid == "routine") == 1.5
    assert [s.study_uid for s in a.due(now=2.0, only=is_stat)] == ["stat"]
    assert a.due(now=2.0, only=is_stat) == []  # handed out once; the routine one still waits
    assert [s.study_uid for s in a.due(now=2.0)] == ["routine"]
