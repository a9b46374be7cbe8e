"""One interface for every inference backend (ONNX Runtime, TorchScript, Triton).

A backend receives tensors and an opaque request id, never patient data. It loads models by
:class:`BackendModel` (paths and tensor names taken from a verified package), runs a batch, and
reports whether it is healthy. Each backend module declares ``is_available()`` and, when it is
not, the package to install, the way pydicom's pixel decoders do.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from models.manifest import Manifest, verify_weights
from router.vocabulary import PriorityClass


class BackendError(RuntimeError):
    """A backend failed to load or run a model; the message names the model, never a patient."""


class BackendUnavailable(BackendError):
    """The backend cannot be used: not installed, no device, or its server is unreachable.

    Attributes:
        install: What to install (pip package or Debian package), when that is the cause.
    """

    def __init__(self, message: str, *, install: str | None = None) -> None:
        self.install = install
        super().__init__(f"{message}; install {install}" if install else message)


@dataclass(frozen=True)
class BackendModel:
    """What a backend needs to load one model version.

    Attributes:
        ident: ``name@version``.
        name: Model name (the Triton model name).
        version: Integer version.
        onnx: Path of the ONNX file, if the package has one.
        torchscript: Path of the TorchScript file, if the package has one.
        input_name: Name of the single input tensor.
        output_names: Names of the output tensors.
        max_batch: Largest batch the model accepts.
    """

    ident: str
    name: str
    version: int
    onnx: Path | None
    torchscript: Path | None
    input_name: str
    output_names: tuple[str, ...]
    max_batch: int

    @classmethod
    def from_package(cls, manifest: Manifest, folder: Path) -> BackendModel:
        """Verify the package's weights (sha256) and describe it for a backend.

        Raises:
            WeightsMismatchError: A weight file is missing or altered.
        """
        verify_weights(manifest, folder)
        weights = manifest.weights
        return cls(
            ident=manifest.ident,
            name=manifest.name,
            version=manifest.version,
            onnx=folder / weights.onnx.path if weights.onnx else None,
            torchscript=folder / weights.torchscript.path if weights.torchscript else None,
            input_name=manifest.input.name,
            output_names=tuple(o.name for o in manifest.outputs),
            max_batch=manifest.runtime.max_batch,
        )


@dataclass(frozen=True)
class RequestContext:
    """Scheduling context passed along with a batch (no patient data).

    Attributes:
        request_id: Opaque id (the batch id), for tracing.
        priority: Most urgent class in the batch.
        timeout_s: Time left before the most urgent deadline, seconds (None: no limit).
    """

    request_id: str
    priority: PriorityClass = PriorityClass.ROUTINE
    timeout_s: float | None = None


class Backend(Protocol):
    """A loaded inference runtime."""

    name: str

    def load(self, model: BackendModel) -> None:
        """Prepare ``model`` to run (idempotent)."""
        ...

    def infer(
        self, model: BackendModel, batch: np.ndarray, context: RequestContext
    ) -> Mapping[str, np.ndarray]:
        """Run one batch ``(N, C, *spatial)`` float32; outputs by name, batch axis first."""
        ...

    def healthy(self) -> bool:
        """True when the backend can take requests now."""
        ...

    def close(self) -> None:
        """Release sessions and connections."""
        ...


def check_batch(model: BackendModel, batch: np.ndarray) -> np.ndarray:
    """Validate a batch's dtype and size and make it contiguous float32.

    Raises:
        BackendError: Empty batch or more items than the model's max batch.
    """
    if batch.ndim < 3 or batch.shape[0] < 1:
        raise BackendError(f"{model.ident}: batch must be (N, C, ...) with N >= 1")
    if batch.shape[0] > model.max_batch:
        raise BackendError(
            f"{model.ident}: batch of {batch.shape[0]} exceeds max batch {model.max_batch}"
        )
    return np.ascontiguousarray(batch, dtype=np.float32)
