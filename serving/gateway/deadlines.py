"""Deadlines on sockets: a connection that has not reached a point in time is shut down.

A per-read socket timeout cannot bound a peer that trickles one byte every few seconds (a
slow-loris request line, an A-ASSOCIATE-RQ that never completes). :class:`SocketDeadlines`
bounds the whole phase instead: a listener arms a deadline when the phase begins (connection
accepted, request line awaited) and clears it when the phase is over (associated, headers read).
A socket still armed at its deadline is shut down for reading and writing, which wakes whichever
thread is blocked in ``recv`` on it with end-of-file, so that thread closes the connection
through its normal path. One watchdog thread serves all sockets of a listener.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable

__all__ = ["SocketDeadlines"]

LOGGER = logging.getLogger(__name__)


class SocketDeadlines:
    """Shut down sockets whose deadline passed before it was cleared.

    Args:
        name: Names the watchdog thread and the log lines (e.g. ``dicom``, ``http``).
        clock: Monotonic seconds; injected by tests.
    """

    def __init__(self, name: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self._clock = clock
        self._deadlines: dict[socket.socket, tuple[float, str]] = {}
        self._changed = threading.Condition()
        self._stopped = False
        self._thread: threading.Thread | None = None
        #: Sockets shut down because their deadline passed (a counter for tests and logs).
        self.expired = 0

    def arm(self, sock: socket.socket, seconds: float, phase: str) -> None:
        """Shut ``sock`` down unless :meth:`clear` is called within ``seconds`` (replaces an
        earlier deadline of the same socket); ``phase`` names what was awaited, for the log."""
        with self._changed:
            self._deadlines[sock] = (self._clock() + seconds, phase)
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(
                    target=self._run, name=f"deadlines-{self.name}", daemon=True
                )
                self._thread.start()
            self._changed.notify()

    def clear(self, sock: socket.socket) -> None:
        """The phase ``sock`` was armed for is over (no error if it was not armed)."""
        with self._changed:
            self._deadlines.pop(sock, None)

    def armed(self) -> int:
        """Sockets currently armed."""
        with self._changed:
            return len(self._deadlines)

    def stop(self) -> None:
        """Stop the watchdog thread; armed sockets are left as they are."""
        with self._changed:
            self._stopped = True
            self._deadlines.clear()
            self._changed.notify()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(5.0)

    def _run(self) -> None:
        while True:
            with self._changed:
                if self._stopped:
                    return
                now = self._clock()
                due = [(s, phase) for s, (at, phase) in self._deadlines.items() if at <= now]
                for sock, _ in due:
                    del self._deadlines[sock]
                if not due:
                    upcoming = min((at for at, _ in self._deadlines.values()), default=None)
                    self._changed.wait(None if upcoming is None else max(upcoming - now, 0.001))
                    continue
            for sock, phase in due:
                self.expired += 1
                peer = _peer(sock)
                LOGGER.warning("%s: %s from %s timed out, closing", self.name, phase, peer)
                # Already closed by its own thread: nothing to wake.
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def _peer(sock: socket.socket) -> str:
    try:
        address = sock.getpeername()
    except OSError:
        return "a closed connection"
    return str(address[0]) if isinstance(address, tuple) else str(address)
