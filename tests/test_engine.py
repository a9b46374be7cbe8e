"""The executor: stages, batching, priorities, backpressure and failures (real threads, no sleeps).

A controllable backend blocks the device until the test releases it, so ordering is shown
deterministically instead of with timing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from models.manifest import load_manifest
from serving.backends import BackendModel, RequestContext, create_backend
from serving.engine import Engine, EngineBusy, InferenceJob, ModelEntry
from serving.scheduler import (
    LatencyTable,
    ModelLatency,
    PriorityClass,
    Scheduler,
    SchedulerConfig,
)
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


def _engine(tiny: BackendModel, backend: object, max_batch: int = 4, **kw: object) -> Engine:
    latency = LatencyTable({tiny.ident: ModelLatency.from_mapping({1: 0.01, 4: 0.02}, max_batch)})
    config = SchedulerConfig(max_queue_delay_s=0.0)
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


def _job(label: int, priority: PriorityClass = ROUTINE, **kw: object) -> InferenceJob:
    return InferenceJob(f"job-{label}", "tiny-ct@1", priority, volume=label, **kw)


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
        np.testing.assert_allclose(
            result.outputs[OUTPUT_NAME], direct[OUTPUT_NAME][k], rtol=1e-5, atol=1e-6
        )
        t = result.times
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
