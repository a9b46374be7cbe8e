"""The executor: preprocessing workers, per-device inference loops and postprocessing."""

from serving.engine.chunking import ChunkingError, ChunkSpec
from serving.engine.executor import Engine
from serving.engine.jobs import (
    EngineBusy,
    EngineStopped,
    InferenceJob,
    JobResult,
    ModelEntry,
    StageTimes,
)

__all__ = [
    "ChunkSpec",
    "ChunkingError",
    "Engine",
    "EngineBusy",
    "EngineStopped",
    "InferenceJob",
    "JobResult",
    "ModelEntry",
    "StageTimes",
]
