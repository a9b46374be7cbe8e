"""Background Python work steps aside while a stat study is being routed, built or delivered.

The service's stages are Python threads sharing one interpreter lock, and the GIL has no
priorities: a stat CT head's SR is built as slowly as the routine chest CT's SEG next to it
makes it. The engine already preempts background inference at chunk boundaries; this does
the same for the Python stages around it.

- A stat thread wraps each critical stage (routing a stat study, turning its result into the
  SR, delivering its items) in :meth:`StatGate.stat_stage`.
- A background thread calls :meth:`StatGate.step_aside` between its steps (routing a routine
  study, building a result object, sending a routine delivery). It returns at once when no stat
  stage is under way; otherwise it waits until none is, and until ``linger_s`` has passed since
  the last one ended, as a stat study's next stage usually starts a few milliseconds after its
  previous one.
- A wait never lasts longer than ``max_wait_s``, so a stream of stat studies slows background
  work but never starves it.

Only whole steps are deferred, never interrupted; nothing is lost or reordered.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["StatGate"]


class StatGate:
    """Lets stat stages run without background Python work competing for the interpreter.

    Args:
        max_wait_s: Longest one :meth:`step_aside` waits (seconds).
        linger_s: How long after the last stat stage ends background work still waits
            (seconds).
        clock: Monotonic clock (seconds); waiting itself uses the condition's real timeout.
    """

    def __init__(
        self,
        *,
        max_wait_s: float = 1.0,
        linger_s: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_wait_s < 0 or linger_s < 0:
            raise ValueError("max_wait_s and linger_s must be >= 0 (seconds)")
        self.max_wait_s = max_wait_s
        self.linger_s = linger_s
        self._clock = clock
        self._changed = threading.Condition()
        self._active = 0
        self._last_end = -float("inf")
        self.waits = 0  # step_aside calls that waited (metrics)
        self.waited_s = 0.0  # their total wait (seconds)

    @contextmanager
    def stat_stage(self) -> Iterator[None]:
        """Mark a critical stat stage under way for the duration of the ``with`` block."""
        with self._changed:
            self._active += 1
        try:
            yield
        finally:
            with self._changed:
                self._active -= 1
                if self._active == 0:
                    self._last_end = self._clock()
                self._changed.notify_all()

    def busy(self) -> bool:
        """Whether background work would wait now."""
        with self._changed:
            return self._holding(self._clock())

    def step_aside(self) -> float:
        """Wait while a stat stage is under way (at most ``max_wait_s``); seconds waited."""
        with self._changed:
            started = now = self._clock()
            if not self._holding(now):
                return 0.0
            until = started + self.max_wait_s
            while self._holding(now) and now < until:
                if self._active:
                    timeout = until - now
                else:
                    timeout = min(until, self._last_end + self.linger_s) - now
                self._changed.wait(timeout=max(timeout, 0.0))
                now = self._clock()
            waited = now - started
            self.waits += 1
            self.waited_s += waited
            return waited

    def totals(self) -> tuple[int, float]:
        """How many :meth:`step_aside` calls waited, and their total wait (seconds)."""
        with self._changed:
            return self.waits, self.waited_s

    def _holding(self, now: float) -> bool:
        return self._active > 0 or now < self._last_end + self.linger_s
