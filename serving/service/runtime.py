"""The service's inference runtime: registry models loaded into one engine on one backend.

Preprocessing happens inside the engine's priority-ordered workers: a job carries a
:class:`SeriesSource` that loads the series from the spool there (so a stat study's volume is
read before a routine one's), and keeps the source volume's geometry and the model grid's
affine so results can be placed back on the source images.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.backends import create_backend
from models.backends.base import Backend, BackendModel
from models.chunking import ChunkSpec
from models.domain import (
    DomainVerdict,
    OutOfDomainError,
    check_domain,
    input_is_unusable,
    unusable_series,
)
from models.manifest import Manifest
from models.postprocess import postprocess
from models.registry import Registry
from models.runner import to_model_layout
from preprocessing.series import load_series
from preprocessing.volume import Volume
from router.vocabulary import PriorityClass
from serving.engine import Engine, ModelEntry
from serving.engine.executor import Urgency
from serving.scheduler import LatencyTable, ModelLatency, Scheduler, SchedulerConfig
from serving.scheduler.policies import make_policy

log = logging.getLogger(__name__)

# Used when a manifest carries no latency profile (an imported model not profiled yet).
_UNPROFILED_S = 1.0


@dataclass
class SeriesSource:
    """A series to preprocess, loaded lazily in a preprocessing worker.

    Attributes:
        paths: Instance files of the series in the spool.
        volume: Filled by the worker: the source volume (geometry for placing results).
        affine_ras: Filled by the worker: the model grid's voxel → RAS mm affine.
        domain: Filled by the worker: the series checked against the model's domain.
    """

    paths: Sequence[str]
    volume: Volume | None = None
    affine_ras: np.ndarray | None = None
    domain: DomainVerdict | None = None
    loader: Callable[[Sequence[str]], Volume] = field(default=load_series)

    def load(self) -> Volume:
        """Load (once) and return the source volume."""
        if self.volume is None:
            self.volume = self.loader(self.paths)
        return self.volume

    def release(self) -> None:
        """Drop the loaded volume (its voxels) once the task's result is handled; the geometry
        the results needed was taken before. A later :meth:`load` reads it again."""
        self.volume = None


def _prepare_for(manifest: Manifest) -> Callable[[Any], tuple[np.ndarray, np.ndarray]]:
    pipeline = manifest.pipeline()
    shape = list(manifest.input.shape)
    lock = threading.Lock()

    def prepare(source: Any) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(source, SeriesSource):
            try:
                volume = source.load()
            # The loader raises many types; only the series' own faults become "not
            # applicable" (input_is_unusable), everything else is re-raised as it was.
            except Exception as error:
                if not input_is_unusable(error):
                    raise
                source.domain = unusable_series(manifest, error)
                raise OutOfDomainError(source.domain) from error
        else:
            volume = source
        if isinstance(source, SeriesSource):  # a series from the spool: is it the model's input?
            source.domain = check_domain(volume, manifest)
            if not source.domain.applicable:
                raise OutOfDomainError(source.domain)
        with lock:  # MONAI transforms keep per-instance state; one volume at a time per model
            tensor = pipeline(volume)
        array = to_model_layout(tensor.detach().cpu().numpy(), shape)[0]
        affine = np.asarray(tensor.affine, dtype=np.float64)
        if isinstance(source, SeriesSource):
            source.affine_ras = affine
        return array, affine

    return prepare


def _postprocess_for(manifest: Manifest) -> Callable[[Mapping[str, np.ndarray], Any], list[Any]]:
    def run(outputs: Mapping[str, np.ndarray], affine: Any) -> list[Any]:
        batched = {name: value[None] for name, value in outputs.items()}
        return list(postprocess(batched, manifest, np.asarray(affine, dtype=np.float64)))

    return run


def latency_of(manifest: Manifest) -> ModelLatency:
    """The scheduler's latency model from the manifest's first profile (seconds per batch)."""
    if not manifest.latency:
        log.warning(
            "%s has no latency profile; assuming %.1f s per batch", manifest.ident, _UNPROFILED_S
        )
        return ModelLatency.from_mapping({1: _UNPROFILED_S}, manifest.runtime.max_batch)
    profile = manifest.latency[0]
    return ModelLatency.from_mapping(
        {p.batch_size: p.median_s for p in profile.points}, manifest.runtime.max_batch
    )


@dataclass
class Runtime:
    """The loaded runtime: the engine and the manifests of the models it runs."""

    engine: Engine
    manifests: dict[str, Manifest]
    backend_name: str

    def stop(self) -> None:
        """Stop the engine (unfinished jobs fail with EngineStopped)."""
        self.engine.stop()


def build_runtime(
    registry: Registry,
    refs: Sequence[str],
    *,
    backend: str,
    device: str,
    policy: str,
    deadlines_s: Mapping[PriorityClass, float],
    clock: Callable[[], float],
    preprocess_workers: int = 2,
    max_pending: int = 256,
    triton_url: str | None = None,
    max_blocking_s: float | None = None,
    stat_lanes: int = 0,
    urgency: Urgency | None = None,
) -> Runtime:
    """Load ``refs`` (``name`` or ``name@version``) onto ``backend`` and start an engine.

    ``urgency`` gives stat work priority across the service's threads (see
    :class:`~serving.engine.executor.Engine`); background batches step aside for it only
    when the backend computes on this machine's CPU.

    Raises:
        PackageNotFoundError: A model is not in the registry.
        WeightsMismatchError: A weight file does not match its manifest.
        BackendUnavailable: The backend cannot run here (the message says what to install).
    """
    options: dict[str, Any] = {"device": device}
    if backend == "triton":
        options = {"url": triton_url} if triton_url else {}
    engine_backend: Backend = create_backend(backend, **options)
    entries: dict[str, ModelEntry] = {}
    manifests: dict[str, Manifest] = {}
    latency: dict[str, ModelLatency] = {}
    for ref in dict.fromkeys(refs):
        version = registry.get(ref)
        manifest = version.manifest
        backend_model = BackendModel.from_package(manifest, version.folder)
        engine_backend.load(backend_model)
        entries[manifest.ident] = ModelEntry(
            backend_model,
            tuple(manifest.input.shape[1:]),
            prepare=_prepare_for(manifest),
            postprocess=_postprocess_for(manifest),
            chunking=ChunkSpec.from_manifest(manifest),
        )
        manifests[manifest.ident] = manifest
        latency[manifest.ident] = latency_of(manifest)
    # Stat lanes are part of statlane's deadline-aware policy; the fifo and strict-priority
    # baselines keep one batch per device.
    lanes = stat_lanes if policy == "edf" else 0
    config = SchedulerConfig(deadlines_s=dict(deadlines_s), stat_lanes=lanes)
    scheduler = Scheduler(
        LatencyTable(latency), make_policy(policy, max_blocking_s=max_blocking_s), config
    )
    engine = Engine(
        entries,
        [engine_backend],
        scheduler,
        clock=clock,
        preprocess_workers=preprocess_workers,
        max_pending=max_pending,
        urgency=urgency,
        background_yields_device=_computes_on_cpu(backend, device),
    )
    log.info("runtime: %d models on %s (%s)", len(entries), backend, ", ".join(entries))
    return Runtime(engine, manifests, backend)


def _computes_on_cpu(backend: str, device: str) -> bool:
    """Whether ``backend`` on ``device`` runs its kernels on this machine's CPU cores."""
    if backend == "triton" or device == "cuda":
        return False
    if device == "cpu":
        return True
    try:  # auto: whichever accelerator the backend finds
        if backend == "onnxruntime":
            import onnxruntime as ort

            return "CUDAExecutionProvider" not in ort.get_available_providers()
        import torch

        return not torch.cuda.is_available()
    except ImportError:
        return True
