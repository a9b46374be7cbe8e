"""Latency profiles: statistics checked with a fake clock, stored atomically in the manifest."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from models.manifest import BackendKind, LatencyPoint, LatencyProfile, load_manifest
from models.profile import (
    ProfileError,
    default_batch_sizes,
    machine_description,
    measure,
    percentile_nearest_rank,
    profile_version,
    with_profile,
    write_profile,
)
from models.registry import Registry
from serving.cli import main
from tests.model_factory import INPUT_NAME, SPATIAL, build_package


class FakeClock:
    """Each timed run takes the next of ``durations`` seconds (read: start, then end)."""

    def __init__(self, durations: list[float]) -> None:
        self._durations: Iterator[float] = iter(durations)
        self.now = 100.0
        self.reads = 0
        self._started = False

    def __call__(self) -> float:
        self.reads += 1
        if self._started:
            self.now += next(self._durations)
        self._started = not self._started
        return self.now


def test_statistics_from_a_fake_clock() -> None:
    shapes: list[tuple[int, ...]] = []
    durations = [0.25, 0.125, 1.0, 0.5, 0.375] + [0.5] * 4 + [2.0]  # exact in binary
    clock = FakeClock(durations)
    points = measure(
        lambda batch: shapes.append(batch.shape),
        [-1, 1, 4, 4, 2],
        [1, 3],
        warmup=2,
        runs=5,
        clock=clock,
    )
    assert points == [
        LatencyPoint(batch_size=1, median_s=0.375, p95_s=1.0, runs=5),
        LatencyPoint(batch_size=3, median_s=0.5, p95_s=2.0, runs=5),
    ]
    assert clock.reads == 2 * 5 * 2  # warm-up runs are not timed
    assert shapes == [(1, 1, 4, 4, 2)] * 7 + [(3, 1, 4, 4, 2)] * 7


def test_p95_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 21)]
    assert percentile_nearest_rank(values, 0.95) == 19.0
    assert percentile_nearest_rank([5.0], 0.95) == 5.0
    assert percentile_nearest_rank(values[::-1], 0.5) == 10.0


def test_default_batch_sizes() -> None:
    assert default_batch_sizes(1) == [1]
    assert default_batch_sizes(4) == [1, 2, 4]
    assert default_batch_sizes(6) == [1, 2, 4, 6]


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ProfileError):
        measure(lambda b: None, [-1, 1, 2, 2], [0], runs=1)
    with pytest.raises(ProfileError):
        measure(lambda b: None, [-1, 1, 2, 2], [1], runs=0)


def test_machine_names_cpu_and_cores() -> None:
    assert machine_description().endswith(" cores")


def test_profile_an_onnx_package_and_write_it(tmp_path: Path) -> None:
    build_package(tmp_path, "tiny-ct", 1)
    registry = Registry(tmp_path)
    version = registry.get("tiny-ct")
    session = ort.InferenceSession(
        str(version.folder / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    seen: list[tuple[int, ...]] = []

    def run(batch: np.ndarray) -> object:
        seen.append(batch.shape)
        return session.run(None, {INPUT_NAME: batch})

    profile = profile_version(version, runner=run, warmup=1, runs=3, clock=FakeClock([0.01] * 9))
    assert [p.batch_size for p in profile.points] == [1, 2, 4]
    assert all(p.median_s == pytest.approx(0.01) for p in profile.points)
    assert seen[0] == (1, 1, *SPATIAL)
    assert seen[-1] == (4, 1, *SPATIAL)
    assert profile.backend is BackendKind.ONNXRUNTIME
    assert profile.device == "cpu"

    write_profile(version, profile)
    again = profile_version(version, runner=run, batch_sizes=[2], runs=2, clock=FakeClock([1, 1]))
    other = again.model_copy(update={"device": "cuda"})
    write_profile(registry.get("tiny-ct"), again)
    write_profile(registry.get("tiny-ct"), other)
    stored = load_manifest(version.folder).latency
    assert [(p.device, [q.batch_size for q in p.points]) for p in stored] == [
        ("cpu", [2]),  # replaced the first cpu profile of this machine
        ("cuda", [2]),
    ]
    assert all(r.ok for r in registry.validate())
    assert not list(version.folder.glob("*.tmp"))


def test_profile_keeps_other_machines(tmp_path: Path) -> None:
    manifest = load_manifest(build_package(tmp_path))
    point = LatencyPoint(batch_size=1, median_s=0.1, p95_s=0.2, runs=3)

    def profile(machine: str) -> LatencyProfile:
        return LatencyProfile(
            backend=BackendKind.ONNXRUNTIME,
            device="cpu",
            machine=machine,
            measured_at="2025-01-01T00:00:00+00:00",
            warmup=0,
            points=[point],
        )

    updated = with_profile(with_profile(manifest, profile("a")), profile("b"))
    assert [p.machine for p in with_profile(updated, profile("a")).latency] == ["b", "a"]


def test_batch_above_max_is_refused(tmp_path: Path) -> None:
    build_package(tmp_path)
    version = Registry(tmp_path).get("tiny-ct")
    with pytest.raises(ProfileError, match=r"batch size 8 is above runtime\.max_batch 4"):
        profile_version(version, runner=lambda b: None, batch_sizes=[1, 8])


def test_cli_profile_with_the_model_runner(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build_package(tmp_path)
    args = ["models", "--root", str(tmp_path), "profile", "tiny-ct@1", "--batch-sizes", "1,2"]
    assert main([*args, "--warmup", "1", "--runs", "3", "--write"]) == 0
    out = capsys.readouterr().out
    assert "tiny-ct@1 on onnxruntime/cpu" in out
    assert "written to" in out
    (stored,) = load_manifest(tmp_path / "tiny-ct" / "1").latency
    assert [p.batch_size for p in stored.points] == [1, 2]
    assert all(p.runs == 3 and p.p95_s >= p.median_s > 0 for p in stored.points)
    assert main([*args, "--backend", "torchscript", "--runs", "2"]) == 0
    with pytest.raises(SystemExit) as exited:
        main([*args[:-1], "0,2"])
    assert exited.value.code == 2
    assert "--batch-sizes: expected positive integers" in capsys.readouterr().err
