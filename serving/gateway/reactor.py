"""Event-driven reactors for pynetdicom's acceptor associations.

pynetdicom runs every association on two threads that *poll*: the DUL thread sleeps 1 ms
whenever it finds nothing to do, and the association thread sleeps 1 ms on every loop before it
looks for a decoded DIMSE message. A C-STORE therefore waits up to ~1 ms for its request to be
noticed and up to ~1 ms more for its response to be sent; storescu sends the next instance only
after that response, so on a 512x512 CT those waits alone are about half of the gateway's time
per instance (``benchmarks/ingest``: 210 instances/s against dcmtk storescp's 876).

The subclasses here keep pynetdicom's state machine, codecs and events, and change only how the
two threads wait:

* :class:`PromptDUL` blocks in ``select`` on the peer's socket *and* a wake-up socket pair that
  is signalled whenever the association puts a primitive (say a C-STORE response) on the DUL's
  queues: received data and outgoing responses are handled at once, and an idle association
  costs no CPU. Timers (ARTIM, idle) are checked at least every :data:`IDLE_WAIT_S`.
* :class:`PromptAssociation` blocks on the DIMSE message queue instead of sleeping.
* :class:`BulkSocket` reads a PDU with ``recv_into`` into one buffer instead of 4 KiB
  ``recv`` calls joined together (a 512 KiB slice was ~128 calls and copies).
* :class:`PromptRequestHandler` makes the server create these for every incoming association.
* pynetdicom's standard logging handlers (a debug summary of every PDU) are not bound.

The loops are adapted from pynetdicom 3.0 (MIT licence); ``pyproject.toml`` pins pynetdicom to
3.0.x because they override its private methods, and the gateway's tests run every code path
(negotiation, rejection, C-STORE, C-ECHO, release, abort) through them.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import select
import socket
import threading
from datetime import datetime
from typing import Any, cast

from pynetdicom import evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.transport import AssociationSocket, RequestHandler

__all__ = [
    "IDLE_WAIT_S",
    "BulkSocket",
    "PromptAssociation",
    "PromptDUL",
    "PromptRequestHandler",
]

LOGGER = logging.getLogger(__name__)

#: Longest a reactor blocks without an event, in seconds: the resolution of pynetdicom's ARTIM
#: and idle timers and of a local kill request. Data and queued primitives wake it at once.
IDLE_WAIT_S = 0.01
_RECV_CHUNK = 1 << 20  # bytes per recv_into call (bounded so one call never holds a huge view)


class _WakingQueue(queue.Queue[Any]):
    """A queue that signals the DUL's wake-up socket whenever something is put on it."""

    def __init__(self, wake: Any) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake()


class BulkSocket(AssociationSocket):
    """An :class:`AssociationSocket` that reads each PDU into one pre-sized buffer."""

    def recv(self, nr_bytes: int) -> bytearray:
        """Read exactly ``nr_bytes`` (fewer only if the peer closed the connection)."""
        sock = cast(socket.socket, self.socket)
        buffer = bytearray(nr_bytes)
        view = memoryview(buffer)
        received = 0
        while received < nr_bytes:
            count = sock.recv_into(view[received:], min(nr_bytes - received, _RECV_CHUNK))
            if not count:  # closed by the peer: return what arrived, as pynetdicom does
                view.release()
                del buffer[received:]
                return buffer
            received += count
        view.release()
        return buffer


class PromptDUL(DULServiceProvider):
    """pynetdicom's DUL provider, blocking on its socket and queues instead of sleeping."""

    def __init__(self, assoc: Association) -> None:
        super().__init__(assoc)
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)
        self.to_provider_queue = _WakingQueue(self._wake)
        self.event_queue = _WakingQueue(self._wake)

    def _wake(self) -> None:
        if threading.get_ident() == self.ident:  # the reactor queued it itself: it is awake
            return
        # OSError: buffer full (already signalled) or closed (reactor gone); both are fine.
        with contextlib.suppress(OSError):
            self._wake_writer.send(b"\0")

    def _wait_for_work(self) -> None:
        """Block until the peer sent data, a primitive was queued, or IDLE_WAIT_S passed."""
        readers: list[Any] = [self._wake_reader]
        peer = getattr(self.socket, "socket", None)
        if peer is not None and peer.fileno() >= 0:
            readers.append(peer)
        try:
            ready, _, _ = select.select(readers, [], [], IDLE_WAIT_S)
        except (OSError, ValueError):  # the peer socket closed under us: poll on the next loop
            return
        if self._wake_reader in ready:
            with contextlib.suppress(OSError):  # a wake-up is one byte; a few at most pile up
                self._wake_reader.recv(4096)

    def run_reactor(self) -> None:
        """pynetdicom's DUL loop with :meth:`_wait_for_work` in place of ``time.sleep``."""
        self._idle_timer.start()
        sleep = False
        try:
            while True:
                if not self.assoc._dul_ready.is_set():
                    self.assoc._dul_ready.set()
                    sleep = True
                if sleep:
                    self._wait_for_work()
                if self._kill_thread:
                    break
                if self.artim_timer.expired:
                    self.event_queue.put("Evt18")
                try:
                    if self._process_recv_primitive():
                        pass
                    elif self._is_transport_event():
                        self._idle_timer.restart()
                except Exception as exc:  # as pynetdicom: abort without the state machine
                    LOGGER.error("Exception in DUL.run(), aborting association")
                    LOGGER.exception(exc)
                    abort_pdu = A_ABORT_RQ()
                    abort_pdu.source = 0x02
                    abort_pdu.reason_diagnostic = 0x00
                    cast(AssociationSocket, self.socket).send(abort_pdu.encode())
                    self.assoc.is_aborted = True
                    self.assoc.is_established = False
                    self.assoc._kill = True
                    self._kill_thread = True
                    return
                try:
                    event = self.event_queue.get(block=False)
                except queue.Empty:
                    sleep = True
                    continue
                self.state_machine.do_action(event)
                sleep = False
        finally:
            self._wake_writer.close()
            self._wake_reader.close()


class PromptAssociation(Association):
    """An acceptor association whose reactor waits on the DIMSE queue instead of sleeping."""

    def __init__(self, ae: Any, mode: str) -> None:
        super().__init__(ae, mode)
        self.dul = PromptDUL(self)
        # Timeouts are copied onto the DUL's timers when set; set them again on the new DUL.
        self.acse_timeout = self.ae.acse_timeout
        self.network_timeout = self.ae.network_timeout

    def _bind_defaults(self) -> None:
        """Intervention handlers only: pynetdicom's standard notification handlers format a
        debug summary of every PDU and DIMSE message (~5% of the gateway's CPU per instance),
        which statlane never logs (its own log names AE titles and counts, not messages)."""
        for event in evt._INTERVENTION_EVENTS:
            self.bind(event, evt.get_default_handler(event))

    def _run_reactor(self) -> None:
        """pynetdicom's acceptor loop, blocking up to IDLE_WAIT_S for the next message."""
        self._is_paused = False
        messages = self.dimse.msg_queue
        while not self._kill:
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False
            try:
                context_id, msg = messages.get(timeout=IDLE_WAIT_S)
            except queue.Empty:
                context_id, msg = None, None
            if msg:
                self._serve_request(msg, cast(int, context_id))
            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                LOGGER.info("Association Released")
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return
            if self.acse.is_aborted():
                LOGGER.info(
                    "Association Aborted%s",
                    " (A-P-ABORT)" if self.acse.is_aborted("a-p-abort") else "",
                )
                self.dul.receive_pdu(wait=False)  # so EVT_ACSE_RECV fires for subscribers
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return
            if not self.dul.is_alive():
                self.kill()
                return
            if self.dul.idle_timer_expired():
                LOGGER.error("Network timeout reached")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return


class PromptRequestHandler(RequestHandler):
    """Creates a :class:`PromptAssociation` on a :class:`BulkSocket` for each connection."""

    def _create_association(self) -> Association:
        # As pynetdicom's RequestHandler._create_association, with our classes.
        from copy import deepcopy

        assoc = PromptAssociation(self.ae, MODE_ACCEPTOR)
        assoc._server = self.server
        assoc.name = f"AcceptorThread@{datetime.now():%Y%m%d%H%M%S}"
        assoc.set_socket(BulkSocket(assoc, client_socket=cast(socket.socket, self.request)))
        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = self.server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        assoc.acceptor.supported_contexts = deepcopy(self.server.contexts)
        assoc.requestor.address_info = self.remote
        handlers = self.server._handlers
        for event in handlers:
            if event.is_intervention and handlers[event]:
                assoc.bind(event, *handlers[event])
            elif isinstance(event, evt.NotificationEvent):
                for handler in cast(list[Any], handlers[event]):
                    assoc.bind(event, handler[0], handler[1])
        return assoc
