"""Triton backend: a Triton Inference Server (or fleet behind one URL) over gRPC or HTTP.

Tensors travel as binary data. The task's class becomes Triton's per-request priority (the
model's ``dynamic_batching.priority_levels``: stat 1, urgent 2, routine 3, as written by
``statlane models export-triton``) and the time left before its deadline becomes the request's
queue timeout (``allow_timeout_override`` is set in the exported queue policy). A refused
connection or a dead server is a typed :class:`BackendUnavailable`, never a raw socket error.
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
from router.vocabulary import PriorityClass

log = logging.getLogger(__name__)
INSTALL = "tritonclient[grpc,http] (pip install 'statlane[triton]')"
PRIORITY_LEVEL = {PriorityClass.STAT: 1, PriorityClass.URGENT: 2, PriorityClass.ROUTINE: 3}
"""Triton priority level per class; 1 is served first."""


def is_available() -> bool:
    """True when ``tritonclient`` with gRPC and HTTP support imports."""
    try:
        import tritonclient.grpc
        import tritonclient.http  # noqa: F401
    except ImportError:
        return False
    return True


def timeout_us(context: RequestContext) -> int | None:
    """Server-side queue timeout for the request, microseconds (at least 1 ms), or None."""
    if context.timeout_s is None:
        return None
    return max(int(context.timeout_s * 1_000_000), 1_000)


class TritonBackend:
    """Client of a Triton server.

    Args:
        url: ``host:port`` of the server (gRPC default port 8001, HTTP 8000).
        protocol: ``grpc`` or ``http``.
        network_timeout_s: Client-side limit per call, seconds.
    """

    name = "triton"

    def __init__(self, url: str, protocol: str = "grpc", network_timeout_s: float = 60.0) -> None:
        if not is_available():
            raise BackendUnavailable("Triton backend unavailable", install=INSTALL)
        if protocol not in ("grpc", "http"):
            raise ValueError(f"protocol must be grpc or http, not {protocol!r}")
        self.url = url
        self.protocol = protocol
        self.network_timeout_s = network_timeout_s
        self._client: Any = None

    # ---- connection ----------------------------------------------------------------------------

    def _module(self) -> Any:
        if self.protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
        return module

    def _connect(self) -> Any:
        if self._client is None:
            module = self._module()
            try:
                if self.protocol == "grpc":
                    self._client = module.InferenceServerClient(self.url)
                else:
                    self._client = module.InferenceServerClient(
                        self.url,
                        connection_timeout=self.network_timeout_s,
                        network_timeout=self.network_timeout_s,
                    )
            except Exception as error:  # tritonclient, socket and gevent errors: no common base
                raise BackendUnavailable(f"Triton at {self.url}: cannot connect") from error
        return self._client

    def healthy(self) -> bool:
        """True when the server answers live and ready."""
        try:
            client = self._connect()
            return bool(client.is_server_live() and client.is_server_ready())
        except Exception:  # noqa: BLE001 - any failure to answer, of any type, means not healthy
            return False

    def load(self, model: BackendModel) -> None:
        """Check that the server has ``model`` ready (models are loaded server-side)."""
        client = self._connect()
        try:
            ready = client.is_model_ready(model.name, str(model.version))
        except Exception as error:  # tritonclient, socket and gevent errors: no common base
            raise BackendUnavailable(f"Triton at {self.url}: unreachable") from error
        if not ready:
            raise BackendError(f"{model.ident}: not ready on Triton at {self.url}")

    # ---- inference -----------------------------------------------------------------------------

    def infer(
        self, model: BackendModel, batch: np.ndarray, context: RequestContext
    ) -> Mapping[str, np.ndarray]:
        """Send one batch with the context's priority and deadline; outputs by name."""
        module = self._module()
        data = check_batch(model, batch)
        request_input = module.InferInput(model.input_name, list(data.shape), "FP32")
        outputs = [module.InferRequestedOutput(name) for name in model.output_names]
        if self.protocol == "grpc":
            request_input.set_data_from_numpy(data)
            extra: dict[str, Any] = {"client_timeout": self.network_timeout_s}
        else:
            request_input.set_data_from_numpy(data, binary_data=True)
            outputs = [
                module.InferRequestedOutput(name, binary_data=True) for name in model.output_names
            ]
            extra = {}
        client = self._connect()
        try:
            result = client.infer(
                model.name,
                [request_input],
                model_version=str(model.version),
                outputs=outputs,
                request_id=context.request_id,
                priority=PRIORITY_LEVEL[context.priority],
                timeout=timeout_us(context),
                **extra,
            )
        except Exception as error:  # tritonclient, socket and gevent errors: no common base
            if _is_connection_error(error):
                raise BackendUnavailable(f"Triton at {self.url}: unreachable") from error
            raise BackendError(
                f"{model.ident}: Triton refused request {context.request_id} ({error})"
            ) from error
        return {name: np.asarray(result.as_numpy(name)) for name in model.output_names}

    def close(self) -> None:
        """Close the client connection."""
        if self._client is not None:
            try:
                self._client.close()
            finally:
                self._client = None


def _is_connection_error(error: Exception) -> bool:
    text = str(error).lower()
    markers = ("unavailable", "connection refused", "failed to connect", "connect", "socket")
    return isinstance(error, ConnectionError | OSError) or any(m in text for m in markers)
