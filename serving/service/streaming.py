"""Volumes decoded while their series is still arriving.

The gateway's callback only queues a stored instance here; one background thread decodes it
into the series' :class:`~preprocessing.streaming.SeriesAssembler`. When the study completes,
the task's preprocessing takes the ready volume instead of reading every file again (the
streaming tail is ~6% of a batch load in ``benchmarks/preprocess``). A volume is handed out
only when the assembler holds exactly the instances the task asks for; otherwise the caller
falls back to :func:`preprocessing.series.load_series`, so streaming can only save time, never
change a result.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import OrderedDict
from collections.abc import Sequence

from preprocessing.errors import PreprocessingError
from preprocessing.streaming import SeriesAssembler
from preprocessing.volume import Volume

log = logging.getLogger(__name__)

_STOP = ("", "")


class StreamingVolumes:
    """Decodes instances per series in the background; hands out complete volumes.

    Args:
        max_series: Series kept in memory at once; the least recently fed is dropped beyond it.
        max_instances: Series longer than this are not streamed (memory), bytes-free fallback.
        modalities: Modalities worth streaming (cross-sectional series).
    """

    def __init__(
        self,
        *,
        max_series: int = 8,
        max_instances: int = 1200,
        modalities: Sequence[str] = ("CT", "MR", "PT"),
    ) -> None:
        self.max_series = max_series
        self.max_instances = max_instances
        self.modalities = frozenset(modalities)
        self._series: OrderedDict[str, tuple[SeriesAssembler, set[str]]] = OrderedDict()
        self._failed: set[str] = set()
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[str, str]] = queue.Queue()
        self._idle = threading.Condition(self._lock)
        self._pending = 0
        self._thread = threading.Thread(target=self._run, name="stream-decode", daemon=True)
        self._thread.start()

    def offer(self, series_uid: str, modality: str, path: str) -> None:
        """Queue a stored instance for decoding (cheap; called on the gateway's thread)."""
        if modality not in self.modalities:
            return
        with self._lock:
            if series_uid in self._failed:
                return
            self._pending += 1
        self._queue.put((series_uid, path))

    def take(self, series_uid: str, paths: Sequence[str], timeout_s: float = 5.0) -> Volume | None:
        """The series' volume if exactly ``paths`` were decoded, else None (load from disk).

        Waits up to ``timeout_s`` for queued instances of the series to be decoded first.
        """
        with self._idle:
            self._idle.wait_for(lambda: self._pending == 0, timeout=timeout_s)
            entry = self._series.pop(series_uid, None)
        if entry is None:
            return None
        assembler, decoded = entry
        if decoded != {str(p) for p in paths}:
            return None
        try:
            return assembler.volume()
        except PreprocessingError:
            return None  # the batch loader raises the same typed error with full context

    def discard(self, series_uids: Sequence[str]) -> int:
        """Drop what was decoded of these series (no task will take it); how many were held.

        Instances of them still queued are decoded into a new entry, which the next
        ``discard`` or newer series remove.
        """
        dropped = 0
        with self._lock:
            for series_uid in series_uids:
                if self._series.pop(series_uid, None) is not None:
                    dropped += 1
        return dropped

    @property
    def held_series(self) -> int:
        """Series whose decoded slices are held now."""
        with self._lock:
            return len(self._series)

    def stop(self) -> None:
        """Stop the decoding thread."""
        self._queue.put(_STOP)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            series_uid, path = self._queue.get()
            if (series_uid, path) == _STOP:
                return
            try:
                self._decode(series_uid, path)
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()

    def _decode(self, series_uid: str, path: str) -> None:
        with self._lock:
            entry = self._series.get(series_uid)
            if entry is None:
                entry = (SeriesAssembler(series_uid), set())
                self._series[series_uid] = entry
                while len(self._series) > self.max_series:
                    self._series.popitem(last=False)
            self._series.move_to_end(series_uid)
        assembler, decoded = entry
        if len(decoded) >= self.max_instances:
            self._give_up(series_uid)
            return
        try:
            assembler.add(path)
        except Exception:  # undecodable here: the batch loader will report it properly
            log.debug("streaming decode failed; the series will be loaded from disk", exc_info=True)
            self._give_up(series_uid)
            return
        decoded.add(path)

    def _give_up(self, series_uid: str) -> None:
        with self._lock:
            self._series.pop(series_uid, None)
            self._failed.add(series_uid)
