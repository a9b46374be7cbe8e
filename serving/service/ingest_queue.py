"""What the gateways hand to the ingest thread: typed messages in arrival order.

The gateway's callbacks run on association (or HTTP) threads and must stay cheap: they put one
message on this queue and return, and the ingest thread (:meth:`Coordinator.run_ingest
<serving.service.coordinator.Coordinator.run_ingest>`) records the messages in batches. Two
kinds exist:

- :class:`Stored`: an instance is durable in the spool (and about to be acknowledged);
- :class:`Released`: the association (or STOW-RS request) that carried instances of these
  studies ended. It is queued behind that association's instances, so it is applied after them.

Both carry ``at``, the monotonic time of the event (seconds): quiet periods count from it, so a
busy ingest thread never lengthens one.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from serving.gateway.spool import StoredInstance


@dataclass(frozen=True)
class Stored:
    """An instance made durable by the spool.

    Attributes:
        instance: The spooled instance (its header, if the gateway parsed one, and path).
        at: When it was acknowledged, monotonic seconds.
    """

    instance: StoredInstance
    at: float


@dataclass(frozen=True)
class Released:
    """The association (or STOW-RS request) that carried these studies ended.

    Attributes:
        study_uids: Study Instance UIDs it carried, each once, in first-seen order.
        at: When it ended, monotonic seconds.
    """

    study_uids: tuple[str, ...]
    at: float


IngestMessage = Stored | Released
"""One message of the ingest queue."""


class IngestQueue:
    """The gateways' messages, taken in batches by one ingest thread.

    Args:
        mono: Monotonic clock, seconds (stamps the messages and times the batch linger).
    """

    def __init__(self, mono: Callable[[], float]) -> None:
        self.mono = mono
        self._queue: queue.Queue[IngestMessage] = queue.Queue()

    def stored(self, instance: StoredInstance) -> None:
        """Queue a durably stored instance, acknowledged now."""
        self._queue.put(Stored(instance, self.mono()))

    def released(self, study_uids: Sequence[str]) -> None:
        """Queue the end of the association that carried ``study_uids`` (duplicates dropped)."""
        self._queue.put(Released(tuple(dict.fromkeys(study_uids)), self.mono()))

    def empty(self) -> bool:
        """Nothing waits to be taken."""
        return self._queue.empty()

    def take(
        self, *, batch: int = 64, linger_s: float = 0.05, wait_s: float = 0.2
    ) -> list[IngestMessage]:
        """The next batch of messages, in arrival order; empty after ``wait_s`` without any.

        After the first message it waits up to ``linger_s`` (seconds) for more, so a stream of
        C-STOREs is recorded a few instances per transaction instead of one. A
        :class:`Released` ends the batch at once (the release applies to what came before it),
        and so does reaching ``batch`` messages.
        """
        try:
            first = self._queue.get(timeout=wait_s)
        except queue.Empty:
            return []
        items = [first]
        until = self.mono() + linger_s
        while len(items) < batch and isinstance(items[-1], Stored):
            remaining = until - self.mono()
            try:
                if remaining > 0:
                    items.append(self._queue.get(timeout=remaining))
                else:
                    items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return items
