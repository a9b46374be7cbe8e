"""Backends: same input, same output on every runtime; honest about what is missing or down."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest

from models.backends import (
    BackendError,
    BackendModel,
    BackendUnavailable,
    RequestContext,
    available_backends,
    create_backend,
)
from models.backends.triton import PRIORITY_LEVEL, TritonBackend, timeout_us
from models.manifest import WeightsMismatchError, load_manifest
from router.vocabulary import PriorityClass
from tests.model_factory import SPATIAL, build_package

CONTEXT = RequestContext("batch-1", PriorityClass.STAT, timeout_s=30.0)


@pytest.fixture
def tiny(tmp_path: Path) -> BackendModel:
    folder = build_package(tmp_path)
    return BackendModel.from_package(load_manifest(folder), folder)


def test_registry_lists_every_backend_with_install_hints() -> None:
    entries = {b.name: b for b in available_backends()}
    assert set(entries) == {"onnxruntime", "torchscript", "triton"}
    assert entries["onnxruntime"].available
    assert entries["torchscript"].available
    assert all(b.install for b in entries.values())
    with pytest.raises(BackendUnavailable, match="unknown backend"):
        create_backend("tensorflow")


@pytest.mark.parametrize("batch_size", [1, 3])
def test_onnxruntime_and_torchscript_agree(tiny: BackendModel, batch_size: int) -> None:
    rng = np.random.default_rng(batch_size)
    batch = rng.normal(size=(batch_size, 1, *SPATIAL)).astype(np.float32)
    ort = create_backend("onnxruntime", device="cpu")
    ts = create_backend("torchscript", device="cpu")
    a = ort.infer(tiny, batch, CONTEXT)
    b = ts.infer(tiny, batch, CONTEXT)
    assert set(a) == set(b) == set(tiny.output_names)
    for name in a:
        assert a[name].shape[0] == batch_size
        np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-5)


def test_oversized_batch_is_refused(tiny: BackendModel) -> None:
    ort = create_backend("onnxruntime", device="cpu")
    batch = np.zeros((tiny.max_batch + 1, 1, *SPATIAL), np.float32)
    with pytest.raises(BackendError, match="exceeds max batch"):
        ort.infer(tiny, batch, CONTEXT)


def test_tampered_weights_never_reach_a_backend(tmp_path: Path) -> None:
    folder = build_package(tmp_path)
    onnx = folder / "model.onnx"
    data = bytearray(onnx.read_bytes())
    data[-1] ^= 0xFF
    onnx.write_bytes(bytes(data))
    with pytest.raises(WeightsMismatchError, match="sha256"):
        BackendModel.from_package(load_manifest(folder), folder)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_triton_down_is_a_typed_unavailable(tiny: BackendModel, protocol: str) -> None:
    backend = TritonBackend(f"127.0.0.1:{_closed_port()}", protocol, network_timeout_s=2.0)
    assert backend.healthy() is False
    with pytest.raises(BackendUnavailable, match="unreachable"):
        backend.load(tiny)
    with pytest.raises(BackendUnavailable, match="unreachable"):
        backend.infer(tiny, np.zeros((1, 1, *SPATIAL), np.float32), CONTEXT)


def test_triton_priority_and_deadline_mapping() -> None:
    assert PRIORITY_LEVEL[PriorityClass.STAT] < PRIORITY_LEVEL[PriorityClass.URGENT]
    assert PRIORITY_LEVEL[PriorityClass.URGENT] < PRIORITY_LEVEL[PriorityClass.ROUTINE]
    assert timeout_us(RequestContext("r", timeout_s=1.5)) == 1_500_000
    assert timeout_us(RequestContext("r", timeout_s=0.0)) == 1_000
    assert timeout_us(RequestContext("r")) is None
