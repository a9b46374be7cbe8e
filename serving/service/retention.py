"""Bounded storage and memory: spool retention and returning freed heap to the system.

:class:`SpoolRetention` removes the instance files of settled studies from the spool (see
:meth:`serving.jobstore.JobStore.prunable_studies`): one ``spool-pruned`` audit event per
study (counts and bytes, no patient data), ``statlane_spool_pruned_*`` counters and the
``statlane_spool_bytes`` gauge. :class:`AllocatorTrim` calls glibc's ``malloc_trim(0)`` when
the service goes idle, so a burst's freed buffers go back to the operating system.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform
from collections.abc import Callable

from serving.gateway.spool import Spool
from serving.jobstore import JobStore
from serving.metrics import Metrics

log = logging.getLogger(__name__)

__all__ = ["AllocatorTrim", "SpoolRetention", "glibc_malloc_trim"]


class SpoolRetention:
    """Removes the instance files of studies that no longer need them.

    Args:
        spool: The spool holding the files.
        store: The job store (which studies are settled; records each prune).
        metrics: Where the counters and the spool gauge go.
        grace_s: Seconds a study stays after it settled; None keeps everything forever.
        interval_s: Least seconds between two looks for prunable studies.
        mono: Monotonic clock, seconds.
        batch: Most studies pruned per look (the look runs on the coordinator loop).
    """

    def __init__(
        self,
        spool: Spool,
        store: JobStore,
        metrics: Metrics,
        *,
        grace_s: float | None,
        interval_s: float,
        mono: Callable[[], float],
        batch: int = 10,
    ) -> None:
        self.spool = spool
        self.store = store
        self.metrics = metrics
        self.grace_s = grace_s
        self.interval_s = interval_s
        self._mono = mono
        self._batch = batch
        self._next_at: float | None = None

    def maybe_prune(self) -> int:
        """Prune if ``interval_s`` passed since the last look; studies pruned."""
        now = self._mono()
        if self._next_at is not None and now < self._next_at:
            return 0
        self._next_at = now + self.interval_s
        return self.prune_due()

    def prune_due(self) -> int:
        """Remove the files of every study prunable now (at most ``batch``); studies pruned."""
        self.metrics.set("statlane_spool_bytes", self.spool.stored_bytes)
        if self.grace_s is None:
            return 0
        pruned = 0
        for study_uid in self.store.prunable_studies(self.grace_s, limit=self._batch):
            self.prune_study(study_uid)
            pruned += 1
        self.metrics.set("statlane_spool_bytes", self.spool.stored_bytes)
        return pruned

    def prune_study(self, study_uid: str) -> tuple[int, int]:
        """Remove one study's instance files; (files removed, bytes removed). Audited."""
        removed = removed_bytes = missing = 0
        for series in self.store.series_of(study_uid):
            for row in self.store.instances_of(series.series_instance_uid):
                size = self.spool.remove(row.path)
                if size:
                    removed += 1
                    removed_bytes += size
                else:
                    missing += 1
        self.store.record_spool_prune(study_uid, removed, removed_bytes)
        self.store.audit(
            "spool-pruned",
            study_uid=study_uid,
            detail={"instances": removed, "bytes": removed_bytes, "already_absent": missing},
        )
        self.metrics.inc("statlane_spool_pruned_instances_total", removed)
        self.metrics.inc("statlane_spool_pruned_bytes_total", removed_bytes)
        log.info("spool: study %s pruned (%d files, %d bytes)", study_uid, removed, removed_bytes)
        return removed, removed_bytes


def glibc_malloc_trim() -> Callable[[], int] | None:
    """glibc's ``malloc_trim(0)`` as a function, or None off Linux/glibc."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int

    def call() -> int:
        return int(trim(0))

    return call


class AllocatorTrim:
    """Return freed heap to the system when the service goes idle, at most every
    ``interval_s`` seconds.

    Args:
        enabled: False switches it off (also off where glibc is absent).
        interval_s: Least seconds between two trims.
        mono: Monotonic clock, seconds.
        trim: The trim function (default: glibc's ``malloc_trim(0)``; injected in tests).
    """

    def __init__(
        self,
        *,
        enabled: bool,
        interval_s: float,
        mono: Callable[[], float],
        trim: Callable[[], int] | None = None,
    ) -> None:
        self._trim = (trim or glibc_malloc_trim()) if enabled else None
        self.interval_s = interval_s
        self._mono = mono
        self._last_at: float | None = None
        self._busy_since_trim = True
        self.trims = 0

    @property
    def available(self) -> bool:
        """Whether trims run at all."""
        return self._trim is not None

    def note_busy(self) -> None:
        """Something ran since the last trim (a task finished, instances arrived)."""
        self._busy_since_trim = True

    def idle(self) -> bool:
        """The service is idle now: trim if it was busy since the last trim and ``interval_s``
        passed; True if it trimmed."""
        if self._trim is None or not self._busy_since_trim:
            return False
        now = self._mono()
        if self._last_at is not None and now - self._last_at < self.interval_s:
            return False
        self._last_at = now
        self._busy_since_trim = False
        self._trim()
        self.trims += 1
        return True
