"""Worklist ranking: native and AI orders, red flags, the maximum-wait cap, and rank signals."""

from router.worklist.ranking import (
    AIStatus,
    Label,
    Row,
    UnknownStudyError,
    Worklist,
    WorklistEntry,
    WorklistError,
    worklist_json,
)
from router.worklist.signals import (
    RankChange,
    rank_changes,
    signal_payload,
)

__all__ = [
    "AIStatus",
    "Label",
    "RankChange",
    "Row",
    "UnknownStudyError",
    "Worklist",
    "WorklistEntry",
    "WorklistError",
    "rank_changes",
    "signal_payload",
    "worklist_json",
]
