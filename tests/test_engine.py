"""The executor: stages, batching, priorities, backpressure and failures (real threads, no sleeps).

A controllable backend blocks the device until the test releases it, so ordering is shown
deterministically instead of with timing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import Any, TypedDict, Unpack, cast

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference

from models.backends import Backend, BackendModel, RequestContext, create_backend
from models.chunking import ChunkingError, ChunkSpec
from models.manifest import load_manifest
from router.vocabulary import PriorityClass
from serving.engine import Engine, EngineBusy, InferenceJob, ModelEntry
from serving.scheduler import LatencyTable, ModelLatency, Scheduler, SchedulerConfig
from serving.service.stat_gate import StatGate
from tests.model_factory import OUTPUT_NAME, SPATIAL, build_package

STAT, ROUTINE = PriorityClass.STAT, PriorityClass.ROUTINE


class GatedBackend:
    """Records batches; each waits for the test to open the gate."""

    name = "gated"

    def __init__(self, fail_on: str | None = None) -> None:
        self.gate = threading.Semaphore(0)
        self.started = threading.Semaphore(0)
        self.batches: list[list[str]] = []
        self.contexts: list[RequestContext] = []
        self.fail_on = fail_on

    def load(self, model: BackendModel) -> None:
        return None

    def infer(
        self, model: BackendModel, batch: np.ndarray, context: RequestContext
    ) -> Mapping[str, np.ndarray]:
        labels = [f"{v:.0f}" for v in batch[:, 0, 0, 0, 0]]
        self.batches.append(labels)
        self.contexts.append(context)
        self.started.release()
        assert self.gate.acquire(timeout=30)
        if self.fail_on in labels:
            raise RuntimeError("device lost")
        return {OUTPUT_NAME: batch.reshape(len(batch), -1)[:, :2] * 2}

    def healthy(self) -> bool:
        return True

    def close(self) -> None:
        return None


@pytest.fixture
def tiny(tmp_path: Path) -> BackendModel:
    folder = build_package(tmp_path)
    return BackendModel.from_package(load_manifest(folder), folder)


class _EngineOptions(TypedDict, total=False):
    """Engine keywords a test may set beyond the defaults."""

    max_pending: int


def _engine(
    tiny: BackendModel,
    backend: Backend,
    max_batch: int = 4,
    stat_lanes: int = 0,
    **kw: Unpack[_EngineOptions],
) -> Engine:
    latency = LatencyTable({tiny.ident: ModelLatency.from_mapping({1: 0.01, 4: 0.02}, max_batch)})
    config = SchedulerConfig(max_queue_delay_s=0.0, stat_lanes=stat_lanes)
    entry = ModelEntry(
        tiny,
        (1, *SPATIAL),
        prepare=lambda volume: (np.full((1, *SPATIAL), float(volume), np.float32), np.eye(4)),
    )
    return Engine(
        {tiny.ident: entry},
        [backend],
        Scheduler(latency, "edf", config),
        clock=time.monotonic,
        **kw,
    )


def _job(label: int, priority: PriorityClass = ROUTINE) -> InferenceJob:
    return InferenceJob(f"job-{label}", "tiny-ct@1", priority, volume=label)


def test_results_match_the_backend_and_stages_are_stamped(tiny: BackendModel) -> None:
    engine = _engine(tiny, create_backend("onnxruntime", device="cpu"))
    batch = np.random.default_rng(0).normal(size=(3, 1, *SPATIAL)).astype(np.float32)
    futures = [
        engine.submit(InferenceJob(f"p{k}", tiny.ident, ROUTINE, prepared=batch[k]))
        for k in range(3)
    ]
    results = [f.result(timeout=60) for f in futures]
    engine.stop()
    direct = create_backend("onnxruntime", device="cpu").infer(
        tiny, batch, RequestContext("direct")
    )
    for k, result in enumerate(results):
        assert result.error is None
        assert result.outputs is not None
        np.testing.assert_allclose(
            result.outputs[OUTPUT_NAME], direct[OUTPUT_NAME][k], rtol=1e-5, atol=1e-6
        )
        t = result.times
        assert t.ready_s is not None
        assert t.batch_started_s is not None
        assert t.inferred_s is not None
        assert t.done_s is not None
        assert t.received_s <= t.ready_s <= t.batch_started_s <= t.inferred_s <= t.done_s


def test_stat_overtakes_queued_routine_work_and_batches_share_a_model(tiny: BackendModel) -> None:
    backend = GatedBackend()
    engine = _engine(tiny, backend, max_batch=2)
    first = engine.submit(_job(1))
    assert backend.started.acquire(timeout=30)  # job 1 occupies the device
    routine = [engine.submit(_job(k)) for k in (2, 3, 4)]
    while engine.scheduler.queued_tasks < 3:  # wait for preprocessing, not for time
        threading.Event().wait(0.001)
    stat = engine.submit(_job(9, STAT))
    while engine.scheduler.queued_tasks < 4:
        threading.Event().wait(0.001)
    for _ in range(4):
        backend.gate.release()
    results = [f.result(timeout=30) for f in [first, *routine, stat]]
    engine.stop()
    assert backend.batches[0] == ["1"]
    assert backend.batches[1][0] == "9"  # stat first, batched with the most urgent routine
    assert backend.contexts[1].priority is STAT
    assert all(r.error is None for r in results)
    assert sorted(label for b in backend.batches for label in b) == ["1", "2", "3", "4", "9"]


class LaneBackend:
    """Routine batches block until released; stat batches return at once."""

    name = "lanes"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.routine_running = threading.Event()
        self.active = 0
        self.most_active = 0
        self._lock = threading.Lock()

    def load(self, model: BackendModel) -> None:
        return None

    def infer(
        self, model: BackendModel, batch: np.ndarray, context: RequestContext
    ) -> Mapping[str, np.ndarray]:
        with self._lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        try:
            if context.priority is not STAT:
                self.routine_running.set()
                assert self.release.wait(timeout=30)
            return {OUTPUT_NAME: batch.reshape(len(batch), -1)[:, :2]}
        finally:
            with self._lock:
                self.active -= 1

    def healthy(self) -> bool:
        return True

    def close(self) -> None:
        return None


@pytest.mark.parametrize("lanes", [0, 1])
def test_a_stat_lane_runs_a_stat_next_to_a_running_routine_batch(
    tiny: BackendModel, lanes: int
) -> None:
    backend = LaneBackend()
    engine = _engine(tiny, backend, stat_lanes=lanes)
    routine = engine.submit(_job(1))
    assert backend.routine_running.wait(timeout=30)
    stat = engine.submit(_job(9, STAT))
    try:
        if lanes:
            assert stat.result(timeout=30).error is None  # while the routine batch still runs
            assert not routine.done()
            assert backend.most_active == 2
        else:
            with pytest.raises(TimeoutError):
                stat.result(timeout=0.5)  # one batch per device: the stat waits
    finally:
        backend.release.set()
    assert routine.result(timeout=30).error is None
    assert stat.result(timeout=30).error is None
    engine.stop()


def test_backpressure_refuses_without_losing_accepted_jobs(tiny: BackendModel) -> None:
    backend = GatedBackend()
    engine = _engine(tiny, backend, max_pending=2)
    accepted = [engine.submit(_job(1)), engine.submit(_job(2))]
    with pytest.raises(EngineBusy):
        engine.submit(_job(3))
    for _ in range(2):
        backend.gate.release()
    assert all(f.result(timeout=30).error is None for f in accepted)
    engine.stop()


def test_a_failed_batch_fails_its_jobs_and_the_engine_goes_on(tiny: BackendModel) -> None:
    backend = GatedBackend(fail_on="1")
    engine = _engine(tiny, backend, max_batch=1)
    bad, good = engine.submit(_job(1)), engine.submit(_job(2))
    backend.gate.release()
    backend.gate.release()
    assert "device lost" in (bad.result(timeout=30).error or "")
    assert good.result(timeout=30).error is None
    engine.stop()


def test_a_volume_that_fails_preprocessing_fails_alone(tiny: BackendModel) -> None:
    engine = _engine(tiny, create_backend("onnxruntime", device="cpu"))
    broken = engine.submit(InferenceJob("bad", tiny.ident, ROUTINE, volume="not a number"))
    fine = engine.submit(_job(5))
    assert "preprocessing failed" in (broken.result(timeout=30).error or "")
    assert fine.result(timeout=30).error is None
    engine.stop()


# ---- chunked (sliding-window) jobs ------------------------------------------------------------

CHUNK_SPATIAL = (8, 8, 16)
CHUNK = ChunkSpec((8, 8, 8), overlap=0.5)  # windows start at z = 0, 4, 8: three chunks


class ManualClock:
    """A clock that moves only when the fake backend says a batch took time (seconds)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class PatchBackend:
    """Dense fake model (output = 2 x input): records each call's patches as (job, z start),
    optionally waits for the test to open the gate, then advances the clock by ``step_s``."""

    name = "patches"

    def __init__(
        self,
        clock: ManualClock,
        *,
        step_s: float = 1.0,
        gated: bool = False,
        fail_on: tuple[str, int] | None = None,
    ) -> None:
        self.clock = clock
        self.step_s = step_s
        self.gate = threading.Semaphore(0) if gated else None
        self.started = threading.Semaphore(0)
        self.calls: list[list[tuple[str, int]]] = []
        self.fail_on = fail_on

    def load(self, model: BackendModel) -> None:
        return None

    def infer(
        self, model: BackendModel, batch: np.ndarray, context: RequestContext
    ) -> Mapping[str, np.ndarray]:
        assert len(batch) <= model.max_batch
        first = batch[:, 0, 0, 0, 0]  # volumes hold 100 * job + z: the patch's job and z start
        patches = [(f"{v // 100:.0f}", int(v % 100)) for v in first]
        self.calls.append(patches)
        self.started.release()
        if self.gate is not None:
            assert self.gate.acquire(timeout=30)
        self.clock.now += self.step_s
        if self.fail_on in patches:
            raise RuntimeError("device lost")
        return {OUTPUT_NAME: batch * 2.0}

    def healthy(self) -> bool:
        return True

    def close(self) -> None:
        return None


def _volume(label: int, spatial: tuple[int, ...] = CHUNK_SPATIAL) -> np.ndarray:
    """(1, *spatial) holding 100 * label + z, so every patch names its job and z start."""
    z = np.arange(spatial[-1], dtype=np.float32)
    return np.broadcast_to(100.0 * label + z, (1, *spatial)).astype(np.float32)


def _chunk_engine(
    tiny: BackendModel,
    backend: PatchBackend,
    *,
    policy: str = "edf",
    chest_batch: int = 2,
) -> Engine:
    """``chest@1`` is chunked (routine work); ``head@1`` runs whole (the stat model)."""
    chest = replace(tiny, ident="chest@1", name="chest", max_batch=chest_batch)
    head = replace(tiny, ident="head@1", name="head", max_batch=1)
    latency = LatencyTable(
        {
            "chest@1": ModelLatency.from_mapping({1: 1.0}, chest_batch),
            "head@1": ModelLatency.from_mapping({1: 1.0}, 1),
        }
    )
    entries = {
        "chest@1": ModelEntry(chest, (1, *CHUNK_SPATIAL), prepare=None, chunking=CHUNK),
        "head@1": ModelEntry(head, (1, *CHUNK_SPATIAL), prepare=None),
    }
    config = SchedulerConfig(max_queue_delay_s=0.0)
    return Engine(entries, [backend], Scheduler(latency, policy, config), clock=backend.clock)


def _prepared(label: int, model: str, priority: PriorityClass = ROUTINE) -> InferenceJob:
    return InferenceJob(f"job-{label}", model, priority, prepared=_volume(label))


def _wait_queued(engine: Engine, tasks: int) -> None:
    while engine.scheduler.queued_tasks < tasks:  # wait for the hand-over, not for time
        threading.Event().wait(0.001)


@pytest.mark.parametrize(
    ("policy", "expected_calls", "stat_wait_s", "chest_inferred_s"),
    [
        # EDF chunks: the stat head runs after the one chunk batch that is on the device.
        ("edf", [[("1", 0), ("1", 4)], [("9", 0)], [("1", 8)]], 1.0, 3.0),
        # Strict priority does not chunk: the chest CT is one non-preemptible unit whose
        # patches run back to back (two backend calls of at most max_batch patches).
        ("strict-priority", [[("1", 0), ("1", 4)], [("1", 8)], [("9", 0)]], 2.0, 2.0),
    ],
)
def test_stat_waits_at_most_one_chunk_batch(
    tiny: BackendModel,
    policy: str,
    expected_calls: list[list[tuple[str, int]]],
    stat_wait_s: float,
    chest_inferred_s: float,
) -> None:
    clock = ManualClock()
    backend = PatchBackend(clock, gated=True)
    engine = _chunk_engine(tiny, backend, policy=policy)
    routine = engine.submit(_prepared(1, "chest@1"))
    assert backend.started.acquire(timeout=30)  # chunks 0 and 1 occupy the device
    stat = engine.submit(_prepared(9, "head@1", STAT))
    _wait_queued(engine, 2 if policy == "edf" else 1)
    assert backend.gate is not None
    for _ in range(3):
        backend.gate.release()
    chest, head = routine.result(timeout=30), stat.result(timeout=30)
    engine.stop()
    assert backend.calls == expected_calls
    assert head.error is None
    assert chest.error is None
    assert head.times.ready_s == 0.0
    assert head.times.batch_started_s == stat_wait_s
    assert (chest.chunks, head.chunks) == (3, 1)
    assert chest.times.batch_started_s == 0.0
    assert chest.times.inferred_s == chest_inferred_s
    assert chest.batch_size == 1  # the size of its last chunk's batch (or its whole-task item)
    assert chest.outputs is not None
    np.testing.assert_allclose(chest.outputs[OUTPUT_NAME], 2.0 * _volume(1), rtol=1e-6)


def test_chunked_jobs_equal_the_sliding_window_reference(tiny: BackendModel) -> None:
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 2, kernel_size=3, padding=1).eval()

    class ConvBackend(PatchBackend):
        def infer(
            self, model: BackendModel, batch: np.ndarray, context: RequestContext
        ) -> Mapping[str, np.ndarray]:
            self.calls.append([("?", 0)] * len(batch))
            with torch.no_grad():
                return {OUTPUT_NAME: net(torch.from_numpy(batch)).numpy()}

    spatial = (12, 10, 19)  # splits unevenly into (8, 8, 8) windows
    spec = ChunkSpec((8, 8, 8), overlap=0.25)
    backend = ConvBackend(ManualClock())
    model = replace(tiny, max_batch=4)
    latency = LatencyTable({tiny.ident: ModelLatency.from_mapping({1: 0.01, 4: 0.02}, 4)})
    volumes = np.random.default_rng(3).normal(size=(3, 1, *spatial)).astype(np.float32)
    entry = ModelEntry(
        model, (1, *spatial), prepare=lambda k: (volumes[k], np.eye(4)), chunking=spec
    )
    engine = Engine(
        {tiny.ident: entry},
        [backend],
        Scheduler(latency, "edf", SchedulerConfig(max_queue_delay_s=0.0)),
        clock=backend.clock,
    )
    futures = [
        engine.submit(InferenceJob(f"v{k}", tiny.ident, ROUTINE, volume=k)) for k in range(3)
    ]
    results = [f.result(timeout=60) for f in futures]
    engine.stop()
    with torch.no_grad():
        windowed = sliding_window_inference(
            torch.from_numpy(volumes), spec.roi_size, 4, net, spec.overlap, mode="gaussian"
        )
    assert isinstance(windowed, torch.Tensor)  # one tensor for a network with one output
    expected = windowed.numpy()
    for k, result in enumerate(results):
        assert result.error is None
        assert result.outputs is not None
        assert result.chunks == 12  # 2 x 2 x 3 windows
        np.testing.assert_allclose(result.outputs[OUTPUT_NAME], expected[k], atol=1e-5)
    assert sum(len(call) for call in backend.calls) == 3 * 12
    assert max(len(call) for call in backend.calls) == 4  # patches of several jobs stack


def _spy_on_postprocessing(engine: Engine) -> list[Future[object]]:
    """Every task handed to the postprocessing thread (answering a future twice raises there)."""
    tasks: list[Future[object]] = []
    submit = engine.postprocessing.submit

    def spy(fn: Any, /, *args: Any) -> Future[object]:
        future: Future[object] = submit(fn, *args)
        tasks.append(future)
        return future

    # The spy keeps the pool's call shape but not its generic signature.
    engine.postprocessing.submit = spy  # type: ignore[method-assign,assignment]
    return tasks


def test_a_failing_chunk_fails_its_job_once_and_the_engine_goes_on(tiny: BackendModel) -> None:
    clock = ManualClock()
    backend = PatchBackend(clock, fail_on=("1", 8))  # job 1's last batch (chunk 2) fails
    engine = _chunk_engine(tiny, backend, chest_batch=1)
    post_tasks = _spy_on_postprocessing(engine)
    bad = engine.submit(_prepared(1, "chest@1"))
    good = engine.submit(_prepared(2, "chest@1"))
    failed, fine = bad.result(timeout=30), good.result(timeout=30)
    engine.stop()
    assert failed.error == "inference failed: device lost"
    assert failed.outputs is None
    assert failed.chunks == 3
    assert fine.error is None
    assert fine.outputs is not None
    np.testing.assert_allclose(fine.outputs[OUTPUT_NAME], 2.0 * _volume(2), rtol=1e-6)
    assert [p for call in backend.calls for p in call if p[0] == "1"] == [
        ("1", 0),
        ("1", 4),
        ("1", 8),
    ]
    assert engine.pending == 0
    assert all(task.exception() is None for task in post_tasks)  # nothing answered twice


def test_a_batch_failing_with_two_chunks_of_a_job_fails_it_once(tiny: BackendModel) -> None:
    clock = ManualClock()
    backend = PatchBackend(clock, fail_on=("1", 0))  # chunks 0 and 1 share the failed batch
    engine = _chunk_engine(tiny, backend, chest_batch=2)
    post_tasks = _spy_on_postprocessing(engine)
    bad = engine.submit(_prepared(1, "chest@1"))
    result = bad.result(timeout=30)
    after = engine.submit(_prepared(2, "chest@1")).result(timeout=30)
    engine.stop()
    assert all(task.exception() is None for task in post_tasks)  # nothing answered twice
    assert result.error == "inference failed: device lost"
    assert backend.calls[0] == [("1", 0), ("1", 4)]
    assert all(p[0] != "1" for call in backend.calls[1:] for p in call)  # no chunk ran after
    assert after.error is None


def test_a_prepared_input_that_cannot_be_chunked_is_refused(tiny: BackendModel) -> None:
    engine = _chunk_engine(tiny, PatchBackend(ManualClock()))
    with pytest.raises(ChunkingError, match="windows"):
        engine.submit(InferenceJob("flat", "chest@1", ROUTINE, prepared=np.zeros((1, 8, 8))))
    assert engine.pending == 0
    engine.stop()


def test_a_stat_is_preprocessed_while_the_workers_decode_routine_volumes(
    tiny: BackendModel,
) -> None:
    release = threading.Event()
    started = threading.Semaphore(0)

    def prepare(volume: object) -> tuple[np.ndarray, np.ndarray]:
        if volume != 9:  # routine volumes take "long"
            started.release()
            assert release.wait(timeout=30)
        return np.full((1, *SPATIAL), float(cast(int, volume)), np.float32), np.eye(4)

    latency = LatencyTable({tiny.ident: ModelLatency.from_mapping({1: 0.01}, 1)})
    engine = Engine(
        {tiny.ident: ModelEntry(tiny, (1, *SPATIAL), prepare=prepare)},
        [create_backend("onnxruntime", device="cpu")],
        Scheduler(latency, "edf", SchedulerConfig(max_queue_delay_s=0.0, stat_lanes=1)),
        clock=time.monotonic,
        preprocess_workers=1,
    )
    try:
        routine = [engine.submit(_job(k)) for k in (1, 2)]
        assert started.acquire(timeout=30)  # the only general worker is busy with job 1
        stat = engine.submit(_job(9, STAT))
        assert stat.result(timeout=30).error is None  # the stat worker took it
        assert not any(f.done() for f in routine)
    finally:
        release.set()
    assert all(f.result(timeout=30).error is None for f in routine)
    engine.stop()


def test_background_work_steps_aside_while_a_stat_is_under_way(tiny: BackendModel) -> None:
    """With a StatGate, routine preprocessing and CPU batches wait for a stat stage to end,
    and the stat's own preprocessing and batch are stat stages."""
    gate = StatGate(max_wait_s=30.0, linger_s=0.0)
    backend = GatedBackend()
    stat_stage_seen: list[bool] = []
    prepare_base = _engine(tiny, backend).models[tiny.ident].prepare  # the tests' prepare

    def prepare(volume: object) -> tuple[np.ndarray, np.ndarray]:
        stat_stage_seen.append(gate.busy())
        return prepare_base(volume)

    latency = LatencyTable({tiny.ident: ModelLatency.from_mapping({1: 0.01}, 1)})
    engine = Engine(
        {tiny.ident: ModelEntry(tiny, (1, *SPATIAL), prepare=prepare)},
        [backend],
        Scheduler(latency, "edf", SchedulerConfig(max_queue_delay_s=0.0, stat_lanes=1)),
        clock=time.monotonic,
        preprocess_workers=1,
        urgency=gate,
        background_yields_device=True,
    )
    try:
        held = gate.stat_stage()
        held.__enter__()  # e.g. a stat study being routed
        routine = engine.submit(_job(1))
        time.sleep(0.3)
        # Nothing ran for the routine.
        assert stat_stage_seen == []
        assert backend.batches == []
        stat = engine.submit(_job(9, STAT))
        assert backend.started.acquire(timeout=30)  # the stat runs although the gate is held
        assert backend.batches == [["9"]]
        assert stat_stage_seen == [True]
        backend.gate.release()
        assert stat.result(timeout=30).error is None
        time.sleep(0.2)
        # Still stepping aside.
        assert not routine.done()
        assert len(backend.batches) == 1
        held.__exit__(None, None, None)  # the stat study's stage ends
        assert backend.started.acquire(timeout=30)
        backend.gate.release()
        assert routine.result(timeout=30).error is None
        assert stat_stage_seen == [True, False]  # routine preprocessing: no stat stage
        assert gate.waits >= 2  # preprocessing and the device loop both waited
    finally:
        for _ in range(4):
            backend.gate.release()
        engine.stop()
