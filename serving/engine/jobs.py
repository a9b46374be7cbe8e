"""Records of the executor: a job in, a result with per-stage timestamps out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.backends.base import BackendModel
from models.chunking import ChunkSpec
from models.domain import DomainVerdict
from router.vocabulary import PriorityClass


class EngineBusy(RuntimeError):
    """The engine's bounded queues are full: the caller should hold the job and retry."""


class EngineStopped(RuntimeError):
    """The engine was stopped; no job is accepted or will complete."""


@dataclass(frozen=True)
class ModelEntry:
    """What the engine needs to run one model version.

    Attributes:
        backend_model: Paths and tensor names for the backends (weights already verified).
        input_shape: One prepared input's shape without the batch axis, e.g. ``(1, 64, 64, 32)``.
        prepare: Volume → model input ``(C, *spatial)`` float32 and its RAS affine; runs in a
            preprocessing worker.
        postprocess: Raw outputs of one item (batch axis removed) and the affine → findings.
        chunking: Sliding-window patches (``runtime.chunking`` of the manifest, see
            :meth:`ChunkSpec.from_manifest`); None runs every input whole.
    """

    backend_model: BackendModel
    input_shape: tuple[int, ...]
    prepare: Any
    postprocess: Any = None
    chunking: ChunkSpec | None = None

    @property
    def item_shape(self) -> tuple[int, ...]:
        """Shape of one batch item sent to the backend: a patch ``(C, *roi_size)`` when
        chunked, else the whole input."""
        if self.chunking is None:
            return self.input_shape
        return self.chunking.item_shape(self.input_shape)


@dataclass(frozen=True)
class InferenceJob:
    """One study's inference request (no patient data: an opaque id and a volume).

    Attributes:
        job_id: Opaque unique id.
        model: ``name@version``.
        priority: Inference priority class.
        deadline_s: Absolute deadline on the engine's clock; None → the class default.
        volume: The assembled volume to preprocess, or None when ``prepared`` is given.
        prepared: A model-ready input ``(C, *spatial)``: skips preprocessing.
        affine_ras: Affine of ``prepared`` (RAS mm), for postprocessing measurements.
    """

    job_id: str
    model: str
    priority: PriorityClass
    deadline_s: float | None = None
    volume: Any = None
    prepared: np.ndarray | None = None
    affine_ras: np.ndarray | None = None


@dataclass
class StageTimes:
    """When a job passed each stage, seconds on the engine's clock.

    ``ready_s`` (preprocessing done, task handed to the scheduler) → ``done_s`` is the latency
    the scheduling benchmark reports; ``received_s`` → ``done_s`` includes preprocessing. A
    chunked job runs in several batches: ``batch_started_s`` is when its first chunk's batch
    started, ``inferred_s`` when its last chunk's batch finished.
    """

    received_s: float = 0.0
    preprocess_started_s: float | None = None
    ready_s: float | None = None
    batch_started_s: float | None = None
    inferred_s: float | None = None
    done_s: float | None = None


@dataclass(frozen=True)
class JobResult:
    """The outcome of a job.

    Attributes:
        job_id: The job.
        model: ``name@version`` that ran.
        outputs: Raw outputs of this item by name (batch axis removed); None on error.
        findings: Postprocessed findings (empty when the entry has no postprocess).
        error: One-line reason when the job failed (preprocessing, backend), else None.
        deadline_missed: Finished after its deadline.
        batch_size: Size of the batch it ran in (of its last chunk's batch, when chunked).
        times: Per-stage timestamps.
        chunks: Sliding-window patches its input was split into (1: run whole).
        not_applicable: The input is outside the model's declared domain: no inference ran,
            ``outputs`` is None and ``error`` None (see :mod:`models.domain`).
    """

    job_id: str
    model: str
    outputs: dict[str, np.ndarray] | None
    findings: list[Any] = field(default_factory=list)
    error: str | None = None
    deadline_missed: bool = False
    batch_size: int = 0
    times: StageTimes = field(default_factory=StageTimes)
    chunks: int = 1
    not_applicable: DomainVerdict | None = None
