"""Properties of every policy, driven through the discrete-event simulator with a virtual clock.

1. Every submitted task is scheduled exactly once: each chunk is handed out once, each task
   completes once, whatever the mix, arrival pattern, chunking and number of devices.
2. EDF misses no stat deadline whenever the offered work is feasible: each stat task's deadline
   leaves room for one non-preemptible batch already running plus all stat work offered.
"""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from router.vocabulary import PriorityClass
from serving.scheduler import LatencyTable, ModelLatency, Scheduler, SchedulerConfig, TaskRecord
from serving.scheduler.simulator import simulate

MODELS = {
    "ich@1": ModelLatency.from_mapping({1: 0.10, 2: 0.16, 4: 0.28}, 4),
    "cxr@1": ModelLatency.from_mapping({1: 0.02, 8: 0.08}, 8),
    "chest@1": ModelLatency.from_mapping({1: 0.30, 2: 0.50, 4: 0.90}, 4),
}
SHAPES = {"ich@1": (1, 64, 64, 32), "cxr@1": (1, 256, 256), "chest@1": (1, 96, 96, 64)}

task_spec = st.tuples(
    st.sampled_from(sorted(MODELS)),
    st.sampled_from(list(PriorityClass)),
    st.floats(min_value=0.0, max_value=5.0, allow_nan=False),
    st.integers(min_value=1, max_value=6),
)


def _tasks(specs: list[tuple[str, PriorityClass, float, int]]) -> list[TaskRecord]:
    deadline = {
        PriorityClass.STAT: 60.0,
        PriorityClass.URGENT: 300.0,
        PriorityClass.ROUTINE: 3600.0,
    }
    return [
        TaskRecord(
            f"t{i:03d}", model, SHAPES[model], prio, arrival, arrival + deadline[prio], chunks
        )
        for i, (model, prio, arrival, chunks) in enumerate(specs)
    ]


@settings(max_examples=120, deadline=None)
@given(
    st.lists(task_spec, min_size=1, max_size=40),
    st.sampled_from(["fifo", "strict-priority", "edf"]),
    st.integers(min_value=1, max_value=3),
    st.floats(min_value=0.0, max_value=0.2, allow_nan=False),
)
def test_every_task_is_scheduled_exactly_once(
    specs: list[tuple[str, PriorityClass, float, int]],
    policy: str,
    devices: int,
    delay_s: float,
) -> None:
    tasks = _tasks(specs)
    config = SchedulerConfig(devices=devices, max_queue_delay_s=delay_s)
    scheduler = Scheduler(LatencyTable(MODELS), policy, config)
    result = simulate(scheduler, tasks)

    handed_out = Counter((item.task_id, item.index) for b in result.batches for item in b.items)
    assert all(n == 1 for n in handed_out.values())
    chunked = policy == "edf"
    expected = {(t.task_id, i) for t in tasks for i in range(t.chunks if chunked else 1)}
    assert set(handed_out) == expected
    assert sorted(c.task_id for c in result.completions) == sorted(t.task_id for t in tasks)
    assert scheduler.queued_tasks == 0
    assert not scheduler.in_flight
    for batch in result.batches:
        assert (
            len(
                {(t.model, t.shape) for t in tasks if t.task_id in {i.task_id for i in batch.items}}
            )
            == 1
        )
        assert batch.size <= MODELS[batch.model].max_batch


@settings(max_examples=150, deadline=None)
@given(
    st.lists(task_spec, min_size=1, max_size=30),
    st.lists(st.floats(min_value=0.0, max_value=20.0, allow_nan=False), min_size=1, max_size=8),
)
def test_edf_meets_every_stat_deadline_when_the_work_is_feasible(
    background: list[tuple[str, PriorityClass, float, int]],
    stat_arrivals: list[float],
) -> None:
    # Background work is urgent/routine; stat CT heads arrive on top of it.
    specs: list[tuple[str, PriorityClass, float, int]] = [
        (m, p, a, c) for m, p, a, c in background if p is not PriorityClass.STAT
    ]
    tasks = _tasks(specs)
    longest_batch_s = max(m.seconds(m.max_batch) for m in MODELS.values())
    stat_work_s = len(stat_arrivals) * MODELS["ich@1"].seconds(1)
    slack_s = longest_batch_s + stat_work_s
    for k, arrival in enumerate(stat_arrivals):
        tasks.append(
            TaskRecord(
                f"s{k:03d}",
                "ich@1",
                SHAPES["ich@1"],
                PriorityClass.STAT,
                arrival,
                arrival + slack_s,
            )
        )
    scheduler = Scheduler(LatencyTable(MODELS), "edf")
    result = simulate(scheduler, tasks)
    stat_done = [c for c in result.completions if c.task_id.startswith("s")]
    assert len(stat_done) == len(stat_arrivals)
    assert not [c for c in stat_done if c.deadline_missed]
