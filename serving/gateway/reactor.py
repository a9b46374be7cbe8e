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
* :class:`PromptRequestHandler` makes the server create these for every incoming association
  (after :class:`~serving.gateway.admission.GatedRequestHandler` checked the first PDU header).
* Every PDU is bounded before its buffer is allocated: before association at
  :data:`~serving.gateway.admission.ASSOCIATE_RQ_MAX_BYTES`, afterwards at the maximum length
  we advertised (``assoc.acceptor.maximum_length``, at most :data:`MAX_PDU_BYTES`); a larger
  declared length is an invalid PDU (Evt19: the association is aborted), never allocated.
* pynetdicom's standard logging handlers (a debug summary of every PDU) are not bound.
* C-STORE requests take the fast path of :mod:`serving.gateway.fast_store` when the server
  has a :data:`RawStoreHandler`: the DUL thread routes P-DATA-TF PDUs itself while the
  association is established (Sta6), the association thread calls the handler and sends the
  encoded response. Every other message, and every other state, stays with pynetdicom.

The loops are adapted from pynetdicom 3.0 (MIT licence). They override about 22 private names
of pynetdicom, so this module is fenced: ``pyproject.toml`` pins pynetdicom to
:data:`TESTED_PYNETDICOM`, the gateway's tests run every code path (negotiation, rejection,
C-STORE, C-ECHO, release, abort) through them, and :class:`~serving.gateway.dimse.DicomGateway`
uses them only while :func:`pynetdicom_is_tested` holds and ``dicom.fast_path`` is on; otherwise
it runs pynetdicom's standard server. :class:`PromptRequestHandler` (the ``request_handler`` of
:class:`~serving.gateway.admission.BoundedAssociationServer`, with the C-STORE handler set as the
server's ``raw_store_handler``) is the one entry point. This module imports only pynetdicom's
public modules, so it imports on any release.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import select
import socket
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any, cast

import pynetdicom
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.fsm import InvalidEventError
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationSocket

from serving.gateway.admission import ASSOCIATE_RQ_MAX_BYTES, GatedRequestHandler
from serving.gateway.fast_store import (
    SOP_CLASS_MISMATCH,
    STATUS_SOP_CLASS_NOT_SUPPORTED,
    DimseProtocolError,
    PDataRouter,
    StoreRequest,
    store_response_pdu,
)

__all__ = [
    "IDLE_WAIT_S",
    "TESTED_PYNETDICOM",
    "BulkSocket",
    "PromptAssociation",
    "PromptDUL",
    "PromptRequestHandler",
    "RawStoreHandler",
    "pdu_length_limit",
    "pynetdicom_is_tested",
]

#: The pynetdicom releases whose private names this module overrides and that the gateway's
#: tests ran against (a PEP 440 specifier, the same as the pin in ``pyproject.toml``).
TESTED_PYNETDICOM = ">=3.0,<3.1"
_MODE_ACCEPTOR = "acceptor"  # pynetdicom._globals.MODE_ACCEPTOR

#: The fast C-STORE handler: (association, request, transfer syntax UID) -> (status, error
#: comment or None). It runs on the association's thread; the response is sent when it returns.
RawStoreHandler = Callable[[Association, StoreRequest, str], tuple[int, str | None]]

_P_DATA_TF = 0x04
#: Largest PDU the fast path ever accepts, in bytes: the ceiling of what may be advertised, and
#: the bound when nothing was (a maximum length of 0). A larger declared length is refused
#: rather than allocated.
MAX_PDU_BYTES = 64 * 1024 * 1024
_STA_AWAITING_REQUEST = "Sta2"  # transport open, awaiting A-ASSOCIATE-RQ
_STA_AWAITING_CLOSE = "Sta13"  # A-ABORT sent or received, awaiting the transport close
#: Events of the local user's primitives (PS3.8 9.2.1): A-ASSOCIATE request, accept and reject,
#: P-DATA, A-RELEASE request and response, A-ABORT.
_LOCAL_PRIMITIVE_EVENTS = frozenset({"Evt1", "Evt7", "Evt8", "Evt9", "Evt11", "Evt14", "Evt15"})
_PDU_TYPES = (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07)

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
    """An :class:`AssociationSocket` that reads each PDU into one pre-sized buffer, and sends
    whole PDUs under a lock (fast-path responses go out from the association's thread, every
    other PDU from the DUL's)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._send_lock = threading.Lock()

    def send(self, bytestream: bytes) -> None:
        """Send one whole PDU; a failure queues Evt17 (connection closed), as pynetdicom."""
        with self._send_lock:
            super().send(bytestream)

    def recv(self, nr_bytes: int) -> bytearray:
        """Read exactly ``nr_bytes`` (fewer only if the peer closed the connection).

        Raises:
            OSError: ``nr_bytes`` is above :data:`MAX_PDU_BYTES` (never allocated); the DUL
                treats it as a broken connection.
        """
        if nr_bytes > MAX_PDU_BYTES:
            raise OSError(f"refusing to read {nr_bytes} bytes (at most {MAX_PDU_BYTES})")
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

    def _read_pdu_data(self) -> None:
        """Read one PDU, bounded by :func:`pdu_length_limit` before anything is allocated; a
        P-DATA-TF of an established association with a fast C-STORE handler is routed here,
        everything else goes through pynetdicom's state machine (as its ``_read_pdu_data``)."""
        state = self.state_machine.current_state
        limit = pdu_length_limit(state, self.assoc.acceptor.maximum_length or 0)
        sock = cast(BulkSocket, self.socket)
        try:
            header = sock.recv(6)
            length = int.from_bytes(header[2:6], "big") if len(header) == 6 else -1
            if length >= 0 and (header[0] not in _PDU_TYPES or length > limit):
                # READ_PDU_EXC_C, or a length above what we accept in this state
                LOGGER.error(
                    "Invalid PDU header in %s: type 0x%02X, %d bytes (at most %d)",
                    state,
                    header[0],
                    length,
                    limit,
                )
                self.event_queue.put("Evt19")
                return
            body = sock.recv(length) if length >= 0 else bytearray()
        except (OSError, TimeoutError):  # READ_PDU_EXC_A/D: reset or timed out mid-PDU
            LOGGER.error("Connection closed before the entire PDU was received")
            self.event_queue.put("Evt17")
            return
        if len(body) != length:  # READ_PDU_EXC_B/E: closed by the peer (or a short header)
            LOGGER.error("The received PDU is shorter than expected")
            self.event_queue.put("Evt17")
            return
        handler = getattr(self.assoc, "raw_store_handler", None)
        if header[0] != _P_DATA_TF or handler is None or state != "Sta6":
            self._decode_standard(header + body)
            return
        try:
            self._router().feed(body)
        except DimseProtocolError as exc:  # READ_PDU_EXC_F: pynetdicom aborts on Evt19
            LOGGER.error("Invalid P-DATA-TF PDU: %s", exc)
            self.event_queue.put("Evt19")

    def _decode_standard(self, pdu_bytes: bytearray) -> None:
        """pynetdicom's handling of a PDU already read whole (as ``_read_pdu_data``)."""
        try:
            pdu, event = self._decode_pdu(pdu_bytes)
        # As pynetdicom's own reader: any decoding error of peer bytes aborts the association.
        except Exception as exc:
            LOGGER.error("Unable to decode the received PDU data")
            LOGGER.exception(exc)
            self.event_queue.put("Evt19")
            return
        self.event_queue.put(event)
        self._recv_pdu.put(pdu)

    def _router(self) -> PDataRouter:
        router = cast(PDataRouter | None, getattr(self, "_fast_router", None))
        if router is None:
            dimse = self.assoc.dimse

            def to_pynetdicom(context_id: int, pdv: bytes) -> None:
                primitive = P_DATA()
                primitive.presentation_data_value_list.append((context_id, pdv))
                try:
                    dimse.receive_primitive(primitive)  # what pynetdicom's DT-2 does
                # pynetdicom's DIMSE decoder raises whatever a malformed command set makes
                # pydicom and its tables raise (AttributeError without a Command Field, KeyError
                # for an unknown one): all are the peer's protocol error, and abort.
                except Exception as exc:
                    raise DimseProtocolError(
                        f"undecodable DIMSE message ({type(exc).__name__})"
                    ) from exc

            def completed(request: StoreRequest) -> None:
                dimse.msg_queue.put((request.context_id, request))  # type: ignore[arg-type]

            router = PDataRouter(completed, to_pynetdicom, lambda: dimse.message is not None)
            self._fast_router = router
        return router

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
                    self._abort_without_state_machine()
                    return
                try:
                    event = self.event_queue.get(block=False)
                except queue.Empty:
                    sleep = True
                    continue
                if not self._do_action(event):
                    return
                sleep = False
        finally:
            self._wake_writer.close()
            self._wake_reader.close()

    def _do_action(self, event: str) -> bool:
        """Run ``event`` through the state machine; False once the association was aborted.

        pynetdicom's DUL lets an event the state table does not list, or an action that fails
        on what the peer sent, end its thread with the exception. A local primitive can race an
        abort: the peer's invalid PDU moves the machine to Sta13 (awaiting transport close)
        while the association thread is still answering, say with its A-ASSOCIATE accept
        (Evt7). There it is dropped with its primitive, as nothing is sent in Sta13. Any other
        invalid event, and an action that raises (an A-ASSOCIATE-RQ proposing an even
        presentation context ID fails pynetdicom's conversion to a primitive), aborts the
        association instead.
        """
        state = self.state_machine.current_state
        try:
            self.state_machine.do_action(event)
        except InvalidEventError:
            if state == _STA_AWAITING_CLOSE and event in _LOCAL_PRIMITIVE_EVENTS:
                # The event stands for the primitive at the head of to_provider_queue (the
                # action would have taken it): drop both, or the event comes back every loop.
                with contextlib.suppress(queue.Empty):
                    self.to_provider_queue.get(block=False)
                LOGGER.debug("%s dropped while awaiting the transport close", event)
                return True
            LOGGER.error("%s is invalid in %s, aborting association", event, state)
        # pynetdicom's actions raise what its PDU and primitive classes raise for a value the
        # peer sent that they refuse (ValueError, TypeError, ...): a protocol error, abort.
        except Exception as exc:  # noqa: BLE001
            LOGGER.error(
                "%s in %s failed (%s: %s), aborting association",
                event,
                state,
                type(exc).__name__,
                exc,
            )
        else:
            return True
        self._abort_without_state_machine()
        return False

    def _abort_without_state_machine(self) -> None:
        """Send an A-ABORT and stop both reactors (pynetdicom's DUL.run on an exception)."""
        abort_pdu = A_ABORT_RQ()
        abort_pdu.source = 0x02
        abort_pdu.reason_diagnostic = 0x00
        with contextlib.suppress(OSError):  # the peer may be gone already
            cast(AssociationSocket, self.socket).send(abort_pdu.encode())
        self.assoc.is_aborted = True
        self.assoc.is_established = False
        self.assoc._kill = True
        self._kill_thread = True


class PromptAssociation(Association):
    """An acceptor association whose reactor waits on the DIMSE queue instead of sleeping."""

    def __init__(self, ae: Any, mode: str) -> None:
        super().__init__(ae, mode)
        #: The fast C-STORE handler (None: every C-STORE goes through pynetdicom's events).
        self.raw_store_handler: RawStoreHandler | None = None
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
            if isinstance(msg, StoreRequest):
                self._serve_fast_store(msg)
            elif msg:
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

    def _serve_fast_store(self, request: StoreRequest) -> None:
        """Answer one fast-path C-STORE (as pynetdicom's ``_serve_request`` would)."""
        if self._sent_release:
            LOGGER.warning("C-STORE request received during association release, ignoring")
            return
        context = self._accepted_cx.get(request.context_id)
        if context is None:
            LOGGER.info(
                "Received DIMSE message with invalid or rejected context ID: %d",
                request.context_id,
            )
            self.abort()
            return
        handler = cast(RawStoreHandler, self.raw_store_handler)
        comment: str | None
        if request.sop_class_uid != context.abstract_syntax:
            # PS3.4 B.2.3: the request's SOP class is not the one negotiated for the context.
            status, comment = STATUS_SOP_CLASS_NOT_SUPPORTED, SOP_CLASS_MISMATCH
        else:
            try:
                status, comment = handler(self, request, str(context.transfer_syntax[0]))
            except Exception:  # the handler maps its own errors; anything else is ours
                LOGGER.exception("C-STORE handler failed")
                status, comment = 0xC211, "internal error storing the instance"
        cast(BulkSocket, self.dul.socket).send(store_response_pdu(request, status, comment))


class PromptRequestHandler(GatedRequestHandler):
    """Creates a :class:`PromptAssociation` on a :class:`BulkSocket` for each connection that
    passed the gate of :class:`~serving.gateway.admission.GatedRequestHandler`."""

    def _create_association(self) -> Association:
        # As pynetdicom's RequestHandler._create_association, with our classes.
        from copy import deepcopy

        assoc = PromptAssociation(self.ae, _MODE_ACCEPTOR)
        assoc._server = self.server
        assoc.name = f"AcceptorThread@{datetime.now():%Y%m%d%H%M%S}"
        assoc.set_socket(BulkSocket(assoc, client_socket=cast(socket.socket, self.request)))
        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = self.server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        assoc.acceptor.supported_contexts = deepcopy(self.server.contexts)
        assoc.raw_store_handler = getattr(self.server, "raw_store_handler", None)
        assoc.requestor.address_info = self.remote
        handlers = self.server._handlers
        for event in handlers:
            if event.is_intervention and handlers[event]:
                assoc.bind(event, *handlers[event])
            elif isinstance(event, evt.NotificationEvent):
                for handler in cast(list[Any], handlers[event]):
                    if not _is_standard_log_handler(handler[0]):
                        assoc.bind(event, handler[0], handler[1])
        return assoc


def _is_standard_log_handler(handler: Callable[..., Any]) -> bool:
    """True for pynetdicom's standard notification handlers, which the server binds for every
    association (``LOG_HANDLER_LEVEL``): they format a debug summary of each PDU and DIMSE
    message whatever the log level, and raise on some malformed ones (a bad A-ASSOCIATE-RJ
    result, a C-STORE-RQ without its UIDs). :meth:`PromptAssociation._bind_defaults` leaves
    them out; so does this."""
    return getattr(handler, "__module__", "") == "pynetdicom._handlers" and getattr(
        handler, "__name__", ""
    ).startswith("standard_")


def pdu_length_limit(state: str, advertised: int) -> int:
    """Largest PDU length (bytes, the header's length field) accepted in DUL ``state``:
    :data:`~serving.gateway.admission.ASSOCIATE_RQ_MAX_BYTES` while an A-ASSOCIATE-RQ is
    awaited, else the maximum length we ``advertised`` (0: none) within :data:`MAX_PDU_BYTES`.

    Non-P-DATA PDUs of an association (release, abort) are a few bytes, well inside it.
    """
    if state == _STA_AWAITING_REQUEST:
        return ASSOCIATE_RQ_MAX_BYTES
    if advertised <= 0:
        return MAX_PDU_BYTES
    return min(advertised, MAX_PDU_BYTES)


def pynetdicom_is_tested(version: str | None = None) -> bool:
    """True if ``version`` (default: the installed pynetdicom) is in :data:`TESTED_PYNETDICOM`."""
    try:
        return SpecifierSet(TESTED_PYNETDICOM).contains(
            version or pynetdicom.__version__, prereleases=True
        )
    except InvalidVersion:
        return False
