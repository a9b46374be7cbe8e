"""Run one model package in-process on the serving runtime's own backends and chunking.

``statlane infer``, ``models profile``, ``models evaluate``, the benchmarks and the service's
engine share one inference layer: a :class:`~models.backends.base.Backend` (ONNX Runtime or
TorchScript, built by :func:`models.backends.create_backend`) and the sliding-window code of
:mod:`models.chunking`. A volume larger than a chunked model's ``roi_size`` runs here as
patch batches merged with the declared blend mode, exactly as the engine runs it chunk by chunk.

Weights are checked against the manifest's sha256 *before* any runtime parses them
(:meth:`BackendModel.from_package`), so an altered package is refused, never executed.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from models.backends import BackendUnavailable, create_backend
from models.backends.base import Backend, BackendError, BackendModel, RequestContext
from models.chunking import ChunkingError, ChunkSpec, sliding_window
from models.manifest import BackendKind, Manifest
from preprocessing.volume import Volume

FloatArray = npt.NDArray[np.float32]
_REQUESTS = itertools.count()


class RunnerError(RuntimeError):
    """A model could not be loaded or run; the message names the model (``name@version``)."""


class BackendUnavailableError(RunnerError):
    """The requested backend is not installed or the package has no weights for it."""


class InputShapeError(RunnerError, ValueError):
    """A batch does not match the manifest's input shape."""


@dataclass(frozen=True)
class PreparedInput:
    """A volume made ready for the model.

    Attributes:
        array: ``(1, C, *spatial)`` float32, the model input with its batch axis.
        affine_ras: 4x4 voxel index → RAS mm of the model grid (from the pipeline's MetaTensor).
    """

    array: FloatArray
    affine_ras: npt.NDArray[np.float64]


def to_model_layout(tensor: np.ndarray, input_shape: tuple[int, ...] | list[int]) -> FloatArray:
    """Pipeline output ``(C, X, Y, Z)`` → model input ``(1, C, *spatial)``.

    A 2D model (input ``[-1, C, X, Y]``) takes the single slice of a radiograph volume
    ``(C, X, Y, 1)``.
    """
    array = np.asarray(tensor, dtype=np.float32)
    spatial = len(input_shape) - 2
    if spatial == 2 and array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    return np.ascontiguousarray(array[None])


class ModelRunner:
    """One loaded model version on one in-process backend.

    Args:
        manifest: The package's validated manifest.
        folder: The version folder holding the manifest and weight files.
        backend: ``onnxruntime`` or ``torchscript``.
        device: ``cpu``, ``cuda`` or ``auto`` (the GPU when the backend finds one).
        engine_backend: An already built backend to load the model on (shared by several
            runners, as the engine shares one per device); default builds one.

    Raises:
        WeightsMismatchError: A weight file is missing or altered (checked before loading).
        BackendUnavailableError: Unknown backend, not installed, or no weights for it.
    """

    def __init__(
        self,
        manifest: Manifest,
        folder: Path,
        backend: str = "onnxruntime",
        device: str = "cpu",
        *,
        engine_backend: Backend | None = None,
    ) -> None:
        self.manifest = manifest
        self.folder = Path(folder)
        self.device = device
        try:
            self.backend = BackendKind(backend)
        except ValueError:
            raise BackendUnavailableError(f"unknown backend {backend!r}") from None
        if self.backend is BackendKind.TRITON:
            raise BackendUnavailableError(
                f"{manifest.ident}: backend triton is served remotely, not in-process"
            )
        self.model = BackendModel.from_package(manifest, self.folder)
        weights = manifest.weights
        entry = weights.onnx if self.backend is BackendKind.ONNXRUNTIME else weights.torchscript
        if entry is None:
            raise BackendUnavailableError(
                f"{manifest.ident}: package has no {self.backend.value} weights"
            )
        try:
            self.engine_backend = engine_backend or create_backend(backend, device=device)
            self.engine_backend.load(self.model)
        except BackendUnavailable as error:
            raise BackendUnavailableError(f"{manifest.ident}: {error}") from error
        except BackendError as error:
            raise RunnerError(str(error)) from error
        self.chunking = ChunkSpec.from_manifest(manifest)
        self._pipeline = manifest.pipeline()

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The manifest's input shape, leading ``-1`` batch axis."""
        return tuple(self.manifest.input.shape)

    def preprocess(self, volume: Volume) -> PreparedInput:
        """Apply the manifest's pipeline; the result carries the model grid's RAS affine (mm)."""
        tensor = self._pipeline(volume)
        array = to_model_layout(tensor.detach().cpu().numpy(), self.input_shape)
        self._check(array)
        return PreparedInput(array, np.asarray(tensor.affine, dtype=np.float64))

    def prepare(self, volume: Volume) -> FloatArray:
        """``preprocess(volume).array``: the ``(1, C, *spatial)`` input, ready for :meth:`run`."""
        return self.preprocess(volume).array

    def _check(self, batch: np.ndarray) -> None:
        """A batch must be ``(N, C, *spatial)``: the input's spatial size exactly, or any size
        of the same rank for a chunked model (it runs as sliding-window patches)."""
        expected = self.input_shape[1:]
        fits = batch.ndim == len(self.input_shape) and batch.shape[1] == expected[0]
        if self.chunking is None:
            fits = fits and tuple(batch.shape[1:]) == expected
        if not fits:
            wanted = ", ".join(str(n) for n in expected)
            if self.chunking is not None:
                wanted = f"{expected[0]}, any {len(expected) - 1}D size"
            raise InputShapeError(
                f"{self.manifest.ident}: input shape {tuple(batch.shape)} does not match "
                f"(batch, {wanted})"
            )
        if batch.shape[0] < 1:
            raise InputShapeError(f"{self.manifest.ident}: empty batch")

    def _infer(self, batch: FloatArray) -> Mapping[str, np.ndarray]:
        """One backend call of at most ``max_batch`` items."""
        context = RequestContext(f"local-{next(_REQUESTS)}")
        try:
            return self.engine_backend.infer(self.model, batch, context)
        except BackendError as error:
            raise RunnerError(str(error)) from error

    def _run_whole(self, batch: FloatArray) -> dict[str, FloatArray]:
        step = self.model.max_batch
        parts = [self._infer(batch[i : i + step]) for i in range(0, batch.shape[0], step)]
        return {
            name: np.concatenate([np.asarray(p[name], dtype=np.float32) for p in parts])
            for name in self.model.output_names
        }

    def predict(self, item: np.ndarray) -> dict[str, FloatArray]:
        """Outputs ``{name: (C_out, *spatial)}`` of one input ``(C, *spatial)``.

        A chunked model runs the input as sliding-window patches, ``sw_batch_size`` (at most
        ``max_batch``) per backend call, merged with the declared blend mode; a patch-sized
        input runs whole.
        """
        array = np.ascontiguousarray(item, dtype=np.float32)
        self._check(array[None])
        spec = self.chunking
        if spec is None or tuple(array.shape[1:]) == spec.roi_size:
            return {name: value[0] for name, value in self._run_whole(array[None]).items()}
        chunking = self.manifest.runtime.chunking
        assert chunking is not None
        size = max(1, min(chunking.sw_batch_size, self.model.max_batch))
        try:
            return sliding_window(array, spec, self._infer, batch_size=size)
        except ChunkingError as error:
            raise InputShapeError(f"{self.manifest.ident}: {error}") from error

    def run(self, batch: np.ndarray) -> dict[str, FloatArray]:
        """Run a batch ``(N, C, *spatial)``; returns raw outputs by manifest output name.

        Raises:
            InputShapeError: ``batch`` does not match the input spec.
            RunnerError: The backend failed.
        """
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        self._check(batch)
        spec = self.chunking
        if spec is None or tuple(batch.shape[2:]) == spec.roi_size:
            return self._run_whole(batch)
        items = [self.predict(item) for item in batch]
        return {name: np.stack([o[name] for o in items]) for name in self.model.output_names}
