"""ONNX Runtime backend: CPU provider always; CUDA and TensorRT providers when present.

The provider actually used is logged once per model (one line), so an operator can see whether
the GPU runs or the CPU fallback does.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from models.backends.base import (
    BackendError,
    BackendModel,
    BackendUnavailable,
    RequestContext,
    check_batch,
)

log = logging.getLogger(__name__)
INSTALL = "onnxruntime (CPU) or onnxruntime-gpu (CUDA/TensorRT), not both"
_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def is_available() -> bool:
    """True when the ``onnxruntime`` module imports."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def providers_for(device: str, available: list[str]) -> list[str]:
    """Execution providers to request, best first, for ``device`` (``cpu``, ``cuda``, ``auto``)."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    wanted = [p for p in _PREFERENCE if p in available]
    return wanted or ["CPUExecutionProvider"]


class OnnxRuntimeBackend:
    """Runs ONNX models with ONNX Runtime.

    Args:
        device: ``auto`` (GPU providers when present), ``cpu`` or ``cuda``.
        intra_op_threads: Threads per session; 0 lets ONNX Runtime decide.
    """

    name = "onnxruntime"

    def __init__(self, device: str = "auto", intra_op_threads: int = 0) -> None:
        if not is_available():
            raise BackendUnavailable("ONNX Runtime backend unavailable", install=INSTALL)
        self.device = device
        self.intra_op_threads = intra_op_threads
        self._sessions: dict[str, Any] = {}

    def load(self, model: BackendModel) -> None:
        """Create the session for ``model`` (once)."""
        if model.ident in self._sessions:
            return
        if model.onnx is None:
            raise BackendError(f"{model.ident}: package has no ONNX weights")
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.intra_op_threads
        options.log_severity_level = 3
        wanted = providers_for(self.device, ort.get_available_providers())
        if self.device == "cuda" and "CUDAExecutionProvider" not in wanted:
            raise BackendUnavailable(
                "ONNX Runtime has no CUDA provider here", install="onnxruntime-gpu"
            )
        try:
            session = ort.InferenceSession(str(model.onnx), options, providers=wanted)
        except Exception as error:  # onnxruntime raises its own errors with no common base
            raise BackendError(f"{model.ident}: ONNX Runtime cannot load the model") from error
        used = session.get_providers()[0]
        if used != wanted[0]:
            log.warning("%s: %s unavailable, running on %s", model.ident, wanted[0], used)
        else:
            log.info("%s: ONNX Runtime runs on %s", model.ident, used)
        self._sessions[model.ident] = session

    def infer(
        self, model: BackendModel, batch: np.ndarray, context: RequestContext
    ) -> Mapping[str, np.ndarray]:
        """Run one batch; outputs by name."""
        self.load(model)
        data = check_batch(model, batch)
        try:
            outputs = self._sessions[model.ident].run(
                list(model.output_names), {model.input_name: data}
            )
        except Exception as error:  # onnxruntime raises its own errors with no common base
            raise BackendError(
                f"{model.ident}: inference failed (request {context.request_id})"
            ) from error
        return dict(zip(model.output_names, outputs, strict=True))

    def healthy(self) -> bool:
        """An in-process runtime is healthy once imported."""
        return True

    def close(self) -> None:
        """Drop all sessions."""
        self._sessions.clear()
