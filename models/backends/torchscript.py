"""Torch backend: TorchScript models on CPU or CUDA."""

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


def is_available() -> bool:
    """True when ``torch`` imports."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


class TorchScriptBackend:
    """Runs TorchScript models with ``torch.jit``.

    Args:
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
    """

    name = "torchscript"

    def __init__(self, device: str = "auto") -> None:
        if not is_available():
            raise BackendUnavailable("Torch backend unavailable", install="torch")
        import torch

        if device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable(
                "Torch backend: no CUDA device", install="a CUDA build of torch"
            )
        self.device = torch.device(
            "cuda" if device in ("cuda", "auto") and torch.cuda.is_available() else "cpu"
        )
        self._modules: dict[str, Any] = {}

    def load(self, model: BackendModel) -> None:
        """Load the TorchScript module for ``model`` (once)."""
        if model.ident in self._modules:
            return
        if model.torchscript is None:
            raise BackendError(f"{model.ident}: package has no TorchScript weights")
        import torch

        try:
            module = torch.jit.load(str(model.torchscript), map_location=self.device)
        except Exception as error:  # torch.jit.load fails with any type (RuntimeError, ValueError)
            raise BackendError(f"{model.ident}: torch cannot load the model") from error
        module.eval()
        log.info("%s: TorchScript runs on %s", model.ident, self.device)
        self._modules[model.ident] = module

    def infer(
        self, model: BackendModel, batch: np.ndarray, context: RequestContext
    ) -> Mapping[str, np.ndarray]:
        """Run one batch; outputs by name (a tuple output maps onto the manifest's order)."""
        import torch

        self.load(model)
        data = torch.from_numpy(check_batch(model, batch)).to(self.device)
        try:
            with torch.inference_mode():
                raw = self._modules[model.ident](data)
        except Exception as error:  # the scripted model's own code may raise any type
            raise BackendError(
                f"{model.ident}: inference failed (request {context.request_id})"
            ) from error
        tensors = raw if isinstance(raw, tuple | list) else (raw,)
        if len(tensors) != len(model.output_names):
            raise BackendError(f"{model.ident}: model returned {len(tensors)} outputs")
        return {
            name: t.detach().float().cpu().numpy()
            for name, t in zip(model.output_names, tensors, strict=True)
        }

    def healthy(self) -> bool:
        """An in-process runtime is healthy once imported."""
        return True

    def close(self) -> None:
        """Drop loaded modules."""
        self._modules.clear()
