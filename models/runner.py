"""Run one model package in-process: verify its weights, preprocess a volume, run a batch.

This is the plain path used by ``statlane infer``, the evaluation and the tests; the serving
runtime's backend interface builds on the same steps. Weights are checked against the manifest's
sha256 *before* any runtime parses them, so an altered package is refused, never executed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from models.manifest import BackendKind, Manifest, verify_weights
from preprocessing.volume import Volume

FloatArray = npt.NDArray[np.float32]


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
    """One loaded model version on one backend.

    Args:
        manifest: The package's validated manifest.
        folder: The version folder holding the manifest and weight files.
        backend: ``onnxruntime`` or ``torchscript``.
        device: ``cpu`` or ``cuda`` (ONNX Runtime uses its CUDA provider when present).

    Raises:
        WeightsMismatchError: A weight file is missing or altered (checked before loading).
        BackendUnavailableError: Unknown backend, or no weights for it in the package.
    """

    def __init__(
        self, manifest: Manifest, folder: Path, backend: str = "onnxruntime", device: str = "cpu"
    ) -> None:
        self.manifest = manifest
        self.folder = Path(folder)
        self.device = device
        try:
            self.backend = BackendKind(backend)
        except ValueError:
            raise BackendUnavailableError(f"unknown backend {backend!r}") from None
        verify_weights(manifest, self.folder)
        self._pipeline = manifest.pipeline()
        if self.backend is BackendKind.ONNXRUNTIME:
            self._session = self._load_onnx()
        elif self.backend is BackendKind.TORCHSCRIPT:
            self._module = self._load_torchscript()
        else:
            raise BackendUnavailableError(
                f"{manifest.ident}: backend {backend} is served remotely, not in-process"
            )

    def _load_onnx(self) -> Any:
        entry = self.manifest.weights.onnx
        if entry is None:
            raise BackendUnavailableError(f"{self.manifest.ident}: package has no ONNX weights")
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendUnavailableError(
                "onnxruntime is not installed: pip install onnxruntime"
            ) from None
        providers = ["CPUExecutionProvider"]
        if self.device.startswith("cuda") and "CUDAExecutionProvider" in (
            ort.get_available_providers()
        ):
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        return ort.InferenceSession(
            str(self.folder / entry.path), sess_options=options, providers=providers
        )

    def _load_torchscript(self) -> Any:
        entry = self.manifest.weights.torchscript
        if entry is None:
            raise BackendUnavailableError(f"{self.manifest.ident}: package has no TorchScript")
        import torch

        module = torch.jit.load(str(self.folder / entry.path), map_location=self.device)
        module.eval()
        return module

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
        expected = self.input_shape[1:]
        chunking = self.manifest.runtime.chunking
        if chunking is not None and tuple(batch.shape[2:]) == tuple(chunking.roi_size):
            expected = (expected[0], *chunking.roi_size)  # one sliding-window patch per item
        if batch.ndim != len(self.input_shape) or tuple(batch.shape[1:]) != expected:
            raise InputShapeError(
                f"{self.manifest.ident}: input shape {tuple(batch.shape)} does not match "
                f"(batch, {', '.join(str(n) for n in expected)})"
            )
        if batch.shape[0] < 1:
            raise InputShapeError(f"{self.manifest.ident}: empty batch")

    def run(self, batch: np.ndarray) -> dict[str, FloatArray]:
        """Run a batch ``(N, C, *spatial)``; returns raw outputs by manifest output name.

        Raises:
            InputShapeError: ``batch`` does not match the input spec.
        """
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        self._check(batch)
        names = [o.name for o in self.manifest.outputs]
        if self.backend is BackendKind.ONNXRUNTIME:
            results = self._session.run(names, {self.manifest.input.name: batch})
            return {n: np.asarray(r, dtype=np.float32) for n, r in zip(names, results, strict=True)}
        import torch

        with torch.inference_mode():
            out = self._module(torch.from_numpy(batch).to(self.device))
        tensors = out if isinstance(out, tuple | list) else (out,)
        return {
            n: t.detach().cpu().numpy().astype(np.float32)
            for n, t in zip(names, tensors, strict=True)
        }
