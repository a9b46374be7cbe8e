"""The service's worklist: the router's ranking, safe to share between the service's threads.

The coordinator adds studies, the results threads record AI outcomes, the REST server and the
signal publisher read the orders: one lock makes each call atomic.
"""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any

from router.result import Mode
from router.worklist import AIStatus, Row, Worklist, WorklistEntry


class SharedWorklist(Worklist):
    """A :class:`~router.worklist.Worklist` whose every call holds one lock."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lock = threading.RLock()

    def __len__(self) -> int:
        with self._lock:
            return super().__len__()

    @property
    def entries(self) -> tuple[WorklistEntry, ...]:
        """The studies on the worklist."""
        with self._lock:
            return super().entries

    def add(self, entry: WorklistEntry) -> None:
        """Add a study (see :meth:`Worklist.add`)."""
        with self._lock:
            super().add(entry)

    def remove(self, study_uid: str) -> WorklistEntry:
        """Remove a study (see :meth:`Worklist.remove`)."""
        with self._lock:
            return super().remove(study_uid)

    def update_ai(
        self,
        study_uid: str,
        status: AIStatus | str,
        critical_positive: bool = False,
        summary: str = "",
    ) -> WorklistEntry:
        """Record an AI outcome (see :meth:`Worklist.update_ai`)."""
        with self._lock:
            return super().update_ai(study_uid, status, critical_positive, summary)

    def native_order(self) -> list[Row]:
        """Native order (see :meth:`Worklist.native_order`)."""
        with self._lock:
            return super().native_order()

    def ai_order(self, now: datetime | None = None, *, include_shadow: bool = False) -> list[Row]:
        """AI order (see :meth:`Worklist.ai_order`)."""
        with self._lock:
            return super().ai_order(now, include_shadow=include_shadow)

    def published_order(self, mode: Mode | str, now: datetime | None = None) -> list[Row]:
        """Published order (see :meth:`Worklist.published_order`)."""
        with self._lock:
            return super().published_order(mode, now)
