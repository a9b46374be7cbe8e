"""Inference backends behind one interface, registered lazily.

``available_backends()`` says which can run here and, for those that cannot, what to install;
``create_backend(name, ...)`` builds one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from models.backends import onnxruntime as _ort
from models.backends import torchscript as _torch
from models.backends import triton as _triton
from models.backends.base import (
    Backend,
    BackendError,
    BackendModel,
    BackendUnavailable,
    RequestContext,
)


@dataclass(frozen=True)
class BackendInfo:
    """Registry entry: whether a backend can run here and, if not, what to install."""

    name: str
    available: bool
    install: str
    description: str


_ENTRIES: dict[str, tuple[Callable[[], bool], str, str, Callable[..., Any]]] = {
    "onnxruntime": (
        _ort.is_available,
        _ort.INSTALL,
        "ONNX Runtime: CPU, CUDA and TensorRT execution providers",
        lambda **kw: _ort.OnnxRuntimeBackend(**kw),
    ),
    "torchscript": (
        _torch.is_available,
        "torch",
        "TorchScript on CPU or CUDA",
        lambda **kw: _torch.TorchScriptBackend(**kw),
    ),
    "triton": (
        _triton.is_available,
        _triton.INSTALL,
        "Triton Inference Server over gRPC or HTTP, with priorities and deadlines",
        lambda **kw: _triton.TritonBackend(**kw),
    ),
}


def available_backends() -> list[BackendInfo]:
    """Every known backend, with availability and install hints."""
    return [
        BackendInfo(name, check(), install, description)
        for name, (check, install, description, _) in _ENTRIES.items()
    ]


def create_backend(name: str, **options: Any) -> Backend:
    """Build backend ``name`` with its options (``device=``, ``url=``, ``protocol=``...).

    Raises:
        BackendUnavailable: Unknown name, or the backend cannot run here (says what to install).
    """
    entry = _ENTRIES.get(name)
    if entry is None:
        raise BackendUnavailable(f"unknown backend {name!r}; known: {', '.join(_ENTRIES)}")
    check, install, _, factory = entry
    if not check():
        raise BackendUnavailable(f"backend {name} unavailable", install=install)
    backend: Backend = factory(**options)
    return backend


__all__ = [
    "Backend",
    "BackendError",
    "BackendInfo",
    "BackendModel",
    "BackendUnavailable",
    "RequestContext",
    "available_backends",
    "create_backend",
]
