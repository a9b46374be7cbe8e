"""One budget for the instance data the gateways hold in memory before it is spooled.

A C-STORE data set and a STOW-RS request body are held whole while they are written; many
peers sending at once would grow the heap without bound. Each holder reserves its bytes first
(:meth:`MemoryBudget.reserve`); over the budget the reservation is refused at once (never
waits, never grows): the DIMSE gateway answers ``0xA700`` (out of resources) and STOW-RS HTTP
503 with ``Retry-After``, and the peer sends again later.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from serving.gateway.errors import GatewayError

__all__ = ["DEFAULT_BUDGET_BYTES", "MemoryBudget", "OverBudget"]

DEFAULT_BUDGET_BYTES = 2 * 1024**3


class OverBudget(GatewayError):
    """Holding more instance data would exceed the in-flight memory budget."""

    def __init__(self, *, needed_bytes: int, in_use_bytes: int, budget_bytes: int) -> None:
        self.needed_bytes = needed_bytes
        self.in_use_bytes = in_use_bytes
        self.budget_bytes = budget_bytes
        super().__init__(
            f"in-flight memory budget exhausted: {in_use_bytes} of {budget_bytes} bytes held, "
            f"{needed_bytes} more needed"
        )


class MemoryBudget:
    """Bytes of received instance data held at once, against a limit; thread-safe.

    One reservation larger than the whole budget is allowed while nothing else is held, so an
    instance larger than the budget is still taken when the service is otherwise idle.

    Args:
        budget_bytes: The most bytes held at once (> 0).
    """

    def __init__(self, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> None:
        if budget_bytes <= 0:
            raise ValueError(f"budget_bytes must be > 0, got {budget_bytes}")
        self.budget_bytes = budget_bytes
        self._in_use = 0
        self._refused = 0
        self._lock = threading.Lock()

    @property
    def in_use_bytes(self) -> int:
        """Bytes reserved now."""
        with self._lock:
            return self._in_use

    @property
    def refused(self) -> int:
        """Reservations refused since start."""
        with self._lock:
            return self._refused

    def try_reserve(self, size_bytes: int, *, own_bytes: int = 0) -> bool:
        """Reserve ``size_bytes`` if they fit (or nothing else is held); False if refused.

        ``own_bytes``: bytes the caller holds already (a request's body while it stores one
        of its parts): a caller holding everything reserved is never refused.
        """
        size_bytes = max(size_bytes, 0)
        with self._lock:
            others = self._in_use - own_bytes
            if others > 0 and self._in_use + size_bytes > self.budget_bytes:
                self._refused += 1
                return False
            self._in_use += size_bytes
            return True

    def release(self, size_bytes: int) -> None:
        """Give back a reservation made with :meth:`try_reserve`."""
        with self._lock:
            self._in_use = max(self._in_use - max(size_bytes, 0), 0)

    @contextmanager
    def reserve(self, size_bytes: int, *, own_bytes: int = 0) -> Iterator[None]:
        """Hold ``size_bytes`` for the ``with`` block (``own_bytes`` as for
        :meth:`try_reserve`).

        Raises:
            OverBudget: They do not fit; nothing is reserved.
        """
        if not self.try_reserve(size_bytes, own_bytes=own_bytes):
            raise OverBudget(
                needed_bytes=size_bytes,
                in_use_bytes=self.in_use_bytes,
                budget_bytes=self.budget_bytes,
            )
        try:
            yield
        finally:
            self.release(size_bytes)
