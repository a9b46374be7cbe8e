"""``statlane simulate``: the production scheduler on a virtual clock answers capacity questions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TypedDict

import pytest

from router.vocabulary import PriorityClass
from serving.cli import main
from serving.scheduler import LatencyTable, ModelLatency, SchedulerConfig
from serving.scheduler.workload import (
    MixEntry,
    class_metrics,
    mean_service_s,
    poisson_arrivals,
    rate_for_load,
)


class _Profile(TypedDict):
    """One model's entry in a profiles file: seconds per batch size (as JSON keys)."""

    max_batch: int
    seconds: dict[str, float]


PROFILES: dict[str, _Profile] = {
    "ich-ct-head@2": {"max_batch": 4, "seconds": {"1": 2.0, "4": 5.0}},
    "ct-chest-nodule@1": {"max_batch": 4, "seconds": {"1": 6.0, "4": 16.0}},
}


@pytest.fixture
def profiles(tmp_path: Path) -> Path:
    path = tmp_path / "profiles.json"
    path.write_text(json.dumps(PROFILES))
    return path


def test_more_devices_never_make_stat_worse_and_the_answer_is_named(
    profiles: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "simulate",
        "--profiles",
        str(profiles),
        "--hours",
        "2",
        "--devices",
        "1,2,4",
        "--rate",
        "stat:ich-ct-head@2:60",
        "--rate",
        "routine:ct-chest-nodule@1:800:2",
        "--json",
    ]
    assert main(args) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["devices"] for r in results] == [1, 2, 4]
    p99 = [r["classes"]["stat"]["p99_s"] for r in results]
    assert p99[0] >= p99[1] >= p99[2] * 0.999
    assert results[0]["utilization"] > results[2]["utilization"]
    assert main(args[:-1]) == 0
    assert "smallest device count with no stat deadline missed" in capsys.readouterr().out


@pytest.mark.parametrize(
    "bad",
    [
        ["--rate", "stat:ich-ct-head@2"],
        ["--rate", "asap:ich-ct-head@2:10"],
        ["--rate", "stat:unknown@1:10"],
        ["--rate", "stat:ich-ct-head@2:-1"],
    ],
)
def test_bad_arguments_give_one_clear_line(
    profiles: Path, bad: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", "--profiles", str(profiles), *bad]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("statlane simulate:")


def test_load_is_a_fraction_of_capacity() -> None:
    latency = LatencyTable(
        {
            m: ModelLatency.from_mapping(
                {int(k): v for k, v in p["seconds"].items()}, p["max_batch"]
            )
            for m, p in PROFILES.items()
        }
    )
    mix = [
        MixEntry("ich-ct-head@2", PriorityClass.STAT, 0.2, (1,)),
        MixEntry("ct-chest-nodule@1", PriorityClass.ROUTINE, 0.8, (1,), 2),
    ]
    per_task = mean_service_s(mix, latency)
    assert per_task == pytest.approx(0.2 * 5.0 / 4 + 0.8 * 16.0 / 4 * 2)
    rate = rate_for_load(0.5, mix, latency, devices=2)
    assert rate * per_task == pytest.approx(1.0)
    tasks = poisson_arrivals(mix, rate, 10_000.0, SchedulerConfig(), seed=1)
    assert len(tasks) == pytest.approx(rate * 10_000.0, rel=0.1)
    assert (
        poisson_arrivals(mix, rate, 100.0, SchedulerConfig(), seed=1)
        == tasks[: len(poisson_arrivals(mix, rate, 100.0, SchedulerConfig(), seed=1))]
    )
    assert class_metrics(tasks[:0], []) == {}
