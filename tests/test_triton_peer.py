"""statlane's Triton backend against a real Triton server on loopback.

Same input, same output as ONNX Runtime in-process (gRPC and HTTP), and the task's class
reaches the server as a request priority: a stat request overtakes routine ones already queued.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from models.backends import BackendModel, RequestContext, create_backend
from models.backends.triton import TritonBackend
from models.manifest import load_manifest
from router.vocabulary import PriorityClass
from tests.model_factory import CLASSES, INPUT_NAME, OUTPUT_NAME, SPATIAL, build_package
from tests.triton_peer import triton_server

pytestmark = [pytest.mark.peers, pytest.mark.slow]


def _spec(model: BackendModel, *, max_batch: int, extra_delay_s: float = 0.0) -> dict[str, object]:
    return {
        "name": model.name,
        "version": model.version,
        "onnx": str(model.onnx),
        "input": {"name": INPUT_NAME, "shape": [1, *SPATIAL]},
        "outputs": [{"name": OUTPUT_NAME, "shape": [CLASSES]}],
        "max_batch": max_batch,
        "max_queue_delay_us": 0,
        "extra_delay_s": extra_delay_s,
    }


def test_triton_backend_matches_onnxruntime_over_grpc_and_http(tmp_path: Path) -> None:
    folder = build_package(tmp_path)
    model = BackendModel.from_package(load_manifest(folder), folder)
    batch = np.random.default_rng(0).normal(size=(3, 1, *SPATIAL)).astype(np.float32)
    context = RequestContext("parity", PriorityClass.ROUTINE, timeout_s=30.0)
    expected = create_backend("onnxruntime", device="cpu").infer(model, batch, context)
    with triton_server([_spec(model, max_batch=4)], tmp_path) as peer:
        for protocol, url in (("grpc", peer.grpc_url), ("http", peer.http_url)):
            backend = TritonBackend(url, protocol)
            assert backend.healthy()
            backend.load(model)
            got = backend.infer(model, batch, context)
            np.testing.assert_allclose(
                got[OUTPUT_NAME], expected[OUTPUT_NAME], rtol=1e-5, atol=1e-5
            )
            backend.close()


def test_stat_request_overtakes_queued_routine_requests(tmp_path: Path) -> None:
    folder = build_package(tmp_path)
    model = BackendModel.from_package(load_manifest(folder), folder)
    one = np.zeros((1, 1, *SPATIAL), np.float32)
    order: list[str] = []
    lock = threading.Lock()
    first_done = threading.Event()

    def send(backend_url: str, label: str, priority: PriorityClass) -> None:
        backend = TritonBackend(backend_url, "grpc")
        backend.infer(model, one, RequestContext(label, priority, timeout_s=60.0))
        with lock:
            order.append(label)
        first_done.set()
        backend.close()

    # One instance, batch size 1, 1 s per request: requests queue up at the server, and the
    # stat request has a whole request's time to connect and arrive, even on a loaded machine.
    with triton_server([_spec(model, max_batch=1, extra_delay_s=1.0)], tmp_path) as peer:
        routine = [
            threading.Thread(
                target=send, args=(peer.grpc_url, f"routine-{k}", PriorityClass.ROUTINE)
            )
            for k in range(6)
        ]
        for thread in routine:
            thread.start()
        assert first_done.wait(timeout=60)  # one routine done: the other five are queued
        stat = threading.Thread(target=send, args=(peer.grpc_url, "stat", PriorityClass.STAT))
        stat.start()
        for thread in [*routine, stat]:
            thread.join(timeout=120)
    assert len(order) == 7
    position = order.index("stat")
    # FIFO would finish it last (position 6); with priority it runs right after the request
    # in service when it arrived (position 1 or 2).
    assert position <= 2, order
