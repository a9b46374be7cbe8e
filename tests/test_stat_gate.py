"""StatGate: background work waits while a stat stage runs, never longer than its cap."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from serving.service.stat_gate import StatGate


def test_no_stat_stage_no_wait() -> None:
    gate = StatGate(max_wait_s=1.0, linger_s=0.0)
    assert not gate.busy()
    assert gate.step_aside() == 0.0
    assert gate.waits == 0


def test_background_waits_until_the_stat_stage_ends_and_the_linger_passed() -> None:
    gate = StatGate(max_wait_s=5.0, linger_s=0.05)
    entered, leave = threading.Event(), threading.Event()
    ended_at: list[float] = []

    def stat() -> None:
        with gate.stat_stage():
            entered.set()
            leave.wait(5)
            ended_at.append(time.monotonic())  # in the stage: never after its real end

    worker = threading.Thread(target=stat)
    worker.start()
    assert entered.wait(5)
    assert gate.busy()
    threading.Timer(0.2, leave.set).start()
    started = time.monotonic()
    waited = gate.step_aside()
    resumed = time.monotonic()
    worker.join(5)
    assert 0.2 <= waited < 2.0
    assert resumed >= ended_at[0] + 0.05 - 0.005  # the linger after the stage's end
    assert resumed - started == pytest.approx(waited, abs=0.2)
    assert gate.waits == 1
    assert gate.waited_s == pytest.approx(waited)
    assert gate.totals() == (1, gate.waited_s)
    assert not gate.busy()


def test_wait_is_capped_so_background_never_starves() -> None:
    gate = StatGate(max_wait_s=0.1, linger_s=0.0)
    with gate.stat_stage():
        started = time.monotonic()
        waited = gate.step_aside()
        assert 0.1 <= waited < 2.0  # capped: the stage itself never ends here
        assert time.monotonic() - started < 2.0
        assert gate.busy()  # the stage still runs; only this wait ended
    assert not gate.busy()


def test_nested_and_concurrent_stages_count() -> None:
    gate = StatGate(max_wait_s=0.0, linger_s=0.0)
    with gate.stat_stage():
        with gate.stat_stage():
            assert gate.busy()
        assert gate.busy()
    assert not gate.busy()


def test_a_failing_stage_still_opens_the_gate() -> None:
    gate = StatGate(max_wait_s=1.0, linger_s=0.0)
    with pytest.raises(RuntimeError), gate.stat_stage():
        raise RuntimeError("routing failed")
    assert not gate.busy()
    assert gate.step_aside() == 0.0


def test_the_injected_clock_drives_the_linger() -> None:
    now = [100.0]
    gate = StatGate(max_wait_s=1.0, linger_s=0.5, clock=lambda: now[0])
    with gate.stat_stage():
        pass
    assert gate.busy()  # ended at 100.0: lingers until 100.5
    now[0] = 100.6
    assert not gate.busy()


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="seconds"):
        StatGate(max_wait_s=-1.0)


class _CountingGate(StatGate):
    def __init__(self) -> None:
        super().__init__(max_wait_s=0.0)
        self.calls = 0

    def step_aside(self) -> float:
        self.calls += 1
        return 0.0


def test_a_background_series_is_read_stepping_aside_before_each_file(tmp_path: Path) -> None:
    """The coordinator's loader: background reads step aside per file, stat reads never."""
    from types import SimpleNamespace

    from models.synthetic import generate_study
    from serving.metrics import Metrics
    from serving.service.coordinator import Coordinator

    study = generate_study("ct-head", tmp_path, seed=3, matrix=32, slices=32)
    paths = [str(p) for p in study.files]
    gate = _CountingGate()
    owner = SimpleNamespace(streaming=None, gate=gate, metrics=Metrics())
    # The owner is a stand-in for the coordinator with only what the loader reads.
    background = Coordinator.loader(owner, "series", stat=False)(paths)  # type: ignore[arg-type]
    assert gate.calls == len(paths)
    stat = Coordinator.loader(owner, "series", stat=True)(paths)  # type: ignore[arg-type]
    assert gate.calls == len(paths)  # the stat read did not wait
    assert background.array.shape == stat.array.shape
    assert (background.array == stat.array).all()
