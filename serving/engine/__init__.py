"""The executor: preprocessing workers, per-device inference loops and postprocessing."""

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
    "Engine",
    "EngineBusy",
    "EngineStopped",
    "InferenceJob",
    "JobResult",
    "ModelEntry",
    "StageTimes",
]
