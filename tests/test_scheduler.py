"""The scheduler as a pure state machine, stepped with a fake clock (no threads, no sleeps)."""

from __future__ import annotations

import pytest

from router.vocabulary import PriorityClass
from serving.scheduler import (
    BatchPlan,
    LatencyTable,
    ModelLatency,
    Scheduler,
    SchedulerConfig,
    SchedulerError,
    TaskRecord,
    Wait,
)
from serving.scheduler.policies import EarliestDeadlineFirst

STAT, URGENT, ROUTINE = PriorityClass.STAT, PriorityClass.URGENT, PriorityClass.ROUTINE
SHAPE = (1, 8, 8, 8)


def latency(**profiles: dict[int, float]) -> LatencyTable:
    """``latency(ich={1: 0.1, 4: 0.25})``: max batch is the largest size given."""
    return LatencyTable(
        {f"{name}@1": ModelLatency.from_mapping(p, max(p)) for name, p in profiles.items()}
    )


def task(
    task_id: str,
    priority: PriorityClass = ROUTINE,
    *,
    model: str = "ich",
    arrival: float = 0.0,
    deadline: float | None = None,
    chunks: int = 1,
) -> TaskRecord:
    default = {STAT: 60.0, URGENT: 300.0, ROUTINE: 3600.0}[priority]
    return TaskRecord(
        task_id,
        f"{model}@1",
        SHAPE,
        priority,
        arrival,
        arrival + default if deadline is None else deadline,
        chunks,
    )


def dispatch(scheduler: Scheduler, now: float) -> BatchPlan:
    plan = scheduler.next_batch(now)
    assert isinstance(plan, BatchPlan), plan
    return plan


def ids(plan: BatchPlan) -> list[str]:
    return [item.task_id for item in plan.items]


def test_edf_runs_earliest_deadline_first_across_classes() -> None:
    s = Scheduler(latency(ich={1: 1.0}), "edf")
    s.submit(task("routine", ROUTINE, deadline=100.0), 0.0)
    s.submit(task("urgent", URGENT, deadline=50.0), 0.0)
    s.submit(task("stat", STAT, deadline=10.0), 0.0)
    order = []
    now = 0.0
    for _ in range(3):
        plan = dispatch(s, now)
        order += ids(plan)
        now += 1.0
        s.complete(plan.batch_id, now)
    assert order == ["stat", "urgent", "routine"]


def test_fifo_ignores_priority_and_strict_priority_ignores_deadlines() -> None:
    for policy, expected in (("fifo", ["a", "b", "c"]), ("strict-priority", ["c", "b", "a"])):
        s = Scheduler(latency(ich={1: 1.0}), policy)
        s.submit(task("a", ROUTINE, arrival=0.0), 0.0)
        s.submit(task("b", URGENT, arrival=0.1), 0.1)
        s.submit(task("c", STAT, arrival=0.2), 0.2)
        order = []
        now = 1.0
        for _ in range(3):
            plan = dispatch(s, now)
            order += ids(plan)
            now += 1.0
            s.complete(plan.batch_id, now)
        assert order == expected, policy


def test_aging_lets_routine_overtake_fresh_stat_work_after_its_max_wait() -> None:
    config = SchedulerConfig()
    config.max_wait_s[ROUTINE] = 10.0
    edf = Scheduler(latency(ich={1: 1.0}), "edf", config)
    strict = Scheduler(latency(ich={1: 1.0}), "strict-priority", config)
    served_at = {}
    for s in (edf, strict):
        s.submit(task("old-routine", ROUTINE), 0.0)
        now = 0.0
        for k in range(30):  # a stat arrives every second: overload for strict priority
            s.submit(task(f"stat-{k}", STAT, arrival=now), now)
            plan = dispatch(s, now)
            now += 1.0
            s.complete(plan.batch_id, now)
            if "old-routine" in ids(plan):
                served_at[s.policy.name] = now
                break
    assert served_at["edf"] <= 10.0 + 1.0 + 1.0  # cap plus one service time (plus arrival)
    assert "strict-priority" not in served_at  # starved for the whole run


def test_batch_size_keeps_the_most_urgent_deadline() -> None:
    s = Scheduler(latency(ich={1: 1.0, 2: 1.5, 4: 2.5, 8: 4.5}), "edf")
    s.submit(task("head", STAT, deadline=2.0), 0.0)
    for k in range(7):
        s.submit(task(f"r{k}", ROUTINE), 0.0)
    plan = dispatch(s, 0.0)
    assert ids(plan)[0] == "head"
    assert plan.size == 3  # 3 items take 2.0 s (interpolated); 4 would take 2.5 s > 2.0 s
    assert plan.predicted_s <= 2.0


def test_batch_shrinks_so_another_models_urgent_task_still_fits() -> None:
    s = Scheduler(latency(chest={1: 1.0, 8: 5.0}, ich={1: 1.0}), "edf")
    for k in range(8):
        s.submit(task(f"c{k}", URGENT, model="chest", deadline=30.0), 0.0)
    s.submit(task("stat", STAT, model="ich", deadline=40.0), 0.0)
    # The stat's deadline is later than the chest head's, so chest runs first, but only a
    # batch that leaves the stat enough time: finish + 1 s <= 40 s holds for any size here.
    plan = dispatch(s, 0.0)
    assert plan.model == "chest@1"
    assert plan.size == 8
    s2 = Scheduler(latency(chest={1: 1.0, 8: 5.0}, ich={1: 1.0}), "edf")
    for k in range(8):
        s2.submit(task(f"c{k}", URGENT, model="chest", deadline=3.0), 0.0)
    s2.submit(task("stat", STAT, model="ich", deadline=4.0), 0.0)
    plan = dispatch(s2, 0.0)
    assert plan.model == "chest@1"
    assert plan.predicted_s + 1.0 <= 4.0  # the stat still meets its deadline after this batch


def test_chunks_interleave_so_a_stat_waits_at_most_one_chunk_batch() -> None:
    s = Scheduler(latency(chest={1: 1.0, 2: 1.8}, ich={1: 0.5}), "edf")
    s.submit(task("big", ROUTINE, model="chest", chunks=8), 0.0)
    first = dispatch(s, 0.0)
    assert first.size == 2
    assert {i.index for i in first.items} == {0, 1}
    s.submit(task("stat", STAT, model="ich", arrival=0.1), 0.1)
    assert s.complete(first.batch_id, 1.8) == []
    second = dispatch(s, 1.8)
    assert ids(second) == ["stat"]  # waited one chunk batch (1.7 s), not the whole volume
    done = s.complete(second.batch_id, 2.3)
    assert [c.task_id for c in done] == ["stat"]
    assert not done[0].deadline_missed
    indices = []
    now = 2.3
    while True:
        plan = s.next_batch(now)
        if isinstance(plan, Wait):
            break
        indices += [i.index for i in plan.items]
        now += plan.predicted_s
        finished = s.complete(plan.batch_id, now)
    assert sorted(indices) == [2, 3, 4, 5, 6, 7]
    assert [c.task_id for c in finished] == ["big"]


def test_strict_priority_runs_a_chunked_volume_as_one_unit() -> None:
    s = Scheduler(latency(chest={1: 1.0, 2: 1.8, 8: 6.0}, ich={1: 0.5}), "strict-priority")
    s.submit(task("big", ROUTINE, model="chest", chunks=8), 0.0)
    plan = dispatch(s, 1.0)
    assert plan.size == 1
    assert plan.items[0].cost_chunks == 8
    assert plan.predicted_s == pytest.approx(6.0)


def test_max_blocking_limits_non_stat_batches() -> None:
    policy = EarliestDeadlineFirst(max_blocking_s=1.0)
    s = Scheduler(latency(chest={1: 0.6, 2: 1.0, 4: 1.8}), policy)
    s.submit(task("big", ROUTINE, model="chest", chunks=4), 0.0)
    plan = dispatch(s, 0.0)
    assert plan.size == 2
    assert plan.predicted_s <= 1.0


def test_partial_routine_batch_waits_for_company_but_stat_never_waits() -> None:
    config = SchedulerConfig(max_queue_delay_s=0.05)
    s = Scheduler(latency(ich={1: 1.0, 4: 2.0}), "edf", config)
    s.submit(task("r", ROUTINE), 0.0)
    answer = s.next_batch(0.0)
    assert isinstance(answer, Wait)
    assert answer.until_s == pytest.approx(0.05)
    s.submit(task("r2", ROUTINE, arrival=0.01), 0.01)
    assert isinstance(s.next_batch(0.01), Wait)
    plan = dispatch(s, 0.05)
    assert ids(plan) == ["r", "r2"]
    s.submit(task("stat", STAT, arrival=1.0), 1.0)
    assert isinstance(s.next_batch(1.0), Wait)  # the only device is busy
    s.complete(plan.batch_id, 1.6)
    assert ids(dispatch(s, 1.6)) == ["stat"]


def test_deadline_at_risk_is_raised_on_submit() -> None:
    s = Scheduler(latency(chest={1: 10.0}, ich={1: 1.0}), "edf")
    answers = [
        s.submit(task(f"c{k:02d}", URGENT, model="chest", deadline=100.0), 0.0) for k in range(11)
    ]
    assert [a.at_risk for a in answers] == [False] * 10 + [True]  # the 11th finishes at 110 s
    assert answers[-1].predicted_finish_s == pytest.approx(110.0)
    stat = s.submit(task("stat", STAT, model="ich", deadline=20.0), 0.0)
    assert not stat.at_risk  # EDF puts it first: 1 s of work
    assert s.at_risk_count == 1


def test_two_devices_run_two_batches_at_once() -> None:
    s = Scheduler(latency(ich={1: 1.0}), "edf", SchedulerConfig(devices=2))
    for k in range(3):
        s.submit(task(f"t{k}", STAT), 0.0)
    a, b = dispatch(s, 0.0), dispatch(s, 0.0)
    assert {*ids(a), *ids(b)} == {"t0", "t1"}
    assert isinstance(s.next_batch(0.0), Wait)
    s.complete(a.batch_id, 1.0)
    assert ids(dispatch(s, 1.0)) == ["t2"]


def test_a_failed_batch_fails_its_tasks_and_drops_their_other_chunks() -> None:
    s = Scheduler(latency(chest={1: 1.0}), "edf")
    s.submit(task("big", ROUTINE, model="chest", chunks=3), 0.0)
    plan = dispatch(s, 0.0)
    done = s.complete(plan.batch_id, 1.0, failed=True)
    assert [(c.task_id, c.failed) for c in done] == [("big", True)]
    assert isinstance(s.next_batch(1.0), Wait)
    assert s.queued_tasks == 0


def test_protocol_errors_are_typed() -> None:
    s = Scheduler(latency(ich={1: 1.0}), "edf")
    s.submit(task("a"), 0.0)
    with pytest.raises(SchedulerError, match="twice"):
        s.submit(task("a"), 0.0)
    with pytest.raises(SchedulerError, match="no latency profile"):
        s.submit(task("b", model="unknown"), 0.0)
    with pytest.raises(SchedulerError, match="not in flight"):
        s.complete(99, 0.0)
    with pytest.raises(ValueError, match="unknown scheduling policy"):
        Scheduler(latency(ich={1: 1.0}), "lifo")
    with pytest.raises(ValueError, match="deadline before arrival"):
        task("c", arrival=5.0, deadline=1.0)


# ---- stat lanes --------------------------------------------------------------------------------


def lane_scheduler(lanes: int = 1) -> Scheduler:
    return Scheduler(
        latency(ich={1: 0.2, 4: 0.4}, chest={1: 0.6}),
        "edf",
        SchedulerConfig(stat_lanes=lanes, max_queue_delay_s=0.0),
    )


def test_a_stat_starts_on_the_lane_while_the_device_runs_a_routine_batch() -> None:
    s = lane_scheduler()
    s.submit(task("chest", ROUTINE, model="chest", chunks=3), 0.0)
    routine = dispatch(s, 0.0)
    assert not routine.stat_lane
    s.submit(task("head", STAT, deadline=10.0), 0.1)
    assert s.next_batch(0.1) == Wait(None)  # the device is busy
    lane = s.next_batch(0.1, stat_lane=True)
    assert isinstance(lane, BatchPlan)
    assert lane.stat_lane
    assert ids(lane) == ["head"]
    s.complete(lane.batch_id, 0.3)
    s.complete(routine.batch_id, 0.6)
    assert ids(dispatch(s, 0.6)) == ["chest"]  # the routine task goes on where it stopped


def test_the_lane_takes_stat_items_only_and_one_batch_per_lane() -> None:
    s = lane_scheduler()
    s.submit(task("r1", ROUTINE), 0.0)
    busy = dispatch(s, 0.0)
    s.submit(task("s1", STAT, deadline=5.0), 0.0)
    s.submit(task("s2", STAT, deadline=6.0), 0.0)
    s.submit(task("r2", ROUTINE, deadline=7.0), 0.0)  # same model: would fill a device batch
    lane = s.next_batch(0.0, stat_lane=True)
    assert isinstance(lane, BatchPlan)
    assert ids(lane) == ["s1", "s2"]
    s.submit(task("s3", STAT, deadline=8.0), 0.0)
    assert s.next_batch(0.0, stat_lane=True) == Wait(None)  # the only lane is taken
    s.complete(busy.batch_id, 0.2)
    assert ids(dispatch(s, 0.2)) == ["r2", "s3"]  # earliest deadline first, as always


def test_the_lane_leaves_free_devices_and_non_stat_heads_alone() -> None:
    s = lane_scheduler()
    s.submit(task("s1", STAT, deadline=5.0), 0.0)
    assert s.next_batch(0.0, stat_lane=True) == Wait(None)  # the device is free: it runs there
    device = dispatch(s, 0.0)
    s.submit(task("u1", URGENT, deadline=1.0), 0.0)
    s.submit(task("s2", STAT, deadline=5.0), 0.0)
    assert s.next_batch(0.0, stat_lane=True) == Wait(None)  # an urgent task is more urgent
    s.complete(device.batch_id, 0.2)
    no_lanes = lane_scheduler(lanes=0)
    no_lanes.submit(task("r", ROUTINE), 0.0)
    dispatch(no_lanes, 0.0)
    no_lanes.submit(task("s", STAT, deadline=5.0), 0.0)
    assert no_lanes.next_batch(0.0, stat_lane=True) == Wait(None)


def test_the_lane_serves_a_stat_behind_routine_work_that_aged_ahead_of_it() -> None:
    """Aging orders a long-waiting routine task first on the device; the stat still starts on
    the lane next to the device's batch (it only defers to earlier deadlines)."""
    config = SchedulerConfig(stat_lanes=1, max_queue_delay_s=0.0)
    config.max_wait_s[ROUTINE] = 1.0
    s = Scheduler(latency(ich={1: 0.2}, chest={1: 0.6}), "edf", config)
    s.submit(task("busy", ROUTINE, model="chest"), 0.0)
    busy = dispatch(s, 0.0)
    s.submit(task("aged", ROUTINE, model="chest"), 0.0)  # ordered by arrival + 1 s
    s.submit(task("head", STAT, arrival=0.5, deadline=60.5), 0.5)  # ordered by 60.5
    assert s.queue_order == ("aged", "head")
    lane = s.next_batch(0.5, stat_lane=True)
    assert isinstance(lane, BatchPlan)
    assert lane.stat_lane
    assert ids(lane) == ["head"]
    s.complete(busy.batch_id, 0.6)
    assert ids(dispatch(s, 0.6)) == ["aged"]  # the aged routine task keeps the device
