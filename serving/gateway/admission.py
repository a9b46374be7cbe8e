"""What a DICOM connection must show before it costs us anything: bounded before trusted.

Both DICOM servers (the fast path and pynetdicom's standard server) accept connections through
the classes here, which use only pynetdicom's public extension points (``AE.make_server`` with a
``server_class`` and a ``request_handler``) and the standard library's ``socketserver`` hooks:

* :class:`BoundedAssociationServer` refuses a connection at ``accept`` when its source address
  already holds ``max_connections_per_address`` connections (closed at once, nothing read).
* :class:`GatedRequestHandler` arms the connection's association deadline
  (``association_timeout_s``: a connection not associated by then is shut down, whatever it
  sends meanwhile) and then *peeks* at the first PDU header without reading it: anything but an
  A-ASSOCIATE-RQ (type 0x01) of at most :data:`ASSOCIATE_RQ_MAX_BYTES` closes the connection at
  once, before pynetdicom allocates or reads anything. Only then does pynetdicom see the
  connection. Reads on the socket time out after ``idle_timeout_s`` of silence mid-PDU.

The association limit is counted by :class:`~serving.gateway.dimse.DicomGateway` only for
callers that passed the AE title check, so silent or unknown connections cannot lock out a
modality.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import socketserver
import threading
import time
from dataclasses import dataclass
from typing import Any

from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from serving.gateway.deadlines import SocketDeadlines

__all__ = [
    "ASSOCIATE_RQ_MAX_BYTES",
    "BoundedAssociationServer",
    "ConnectionLimits",
    "GatedRequestHandler",
    "check_associate_header",
]

LOGGER = logging.getLogger(__name__)

#: Largest A-ASSOCIATE-RQ PDU accepted, in bytes (its length field; the 6-byte header aside).
#: A request proposing 128 presentation contexts with a dozen transfer syntaxes each is about
#: 40 KiB; anything larger is refused before a byte of it is read.
ASSOCIATE_RQ_MAX_BYTES = 64 * 1024
_A_ASSOCIATE_RQ = 0x01
_HEADER_BYTES = 6
_PEEK_RETRY_S = 0.01  # wait between peeks while fewer than 6 header bytes have arrived


@dataclass(frozen=True)
class ConnectionLimits:
    """Per-connection bounds of the DICOM listener.

    Attributes:
        association_timeout_s: Seconds from accept to an established association.
        idle_timeout_s: Seconds a read may wait for the peer in the middle of a PDU.
        max_connections_per_address: Open connections one source address may hold.
    """

    association_timeout_s: float = 5.0
    idle_timeout_s: float = 60.0
    max_connections_per_address: int = 8


def check_associate_header(header: bytes) -> str | None:
    """Why the first PDU header of a connection is refused (None: an acceptable
    A-ASSOCIATE-RQ header). ``header`` is the first 6 bytes."""
    if len(header) < _HEADER_BYTES:
        return "connection closed before an association request"
    if header[0] != _A_ASSOCIATE_RQ:
        return f"PDU type 0x{header[0]:02X} before association"
    length = int.from_bytes(header[2:6], "big")
    if length > ASSOCIATE_RQ_MAX_BYTES:
        return f"association request of {length} bytes (at most {ASSOCIATE_RQ_MAX_BYTES})"
    return None


def _peek_header(sock: socket.socket, timeout_s: float) -> bytes:
    """The first 6 bytes waiting on ``sock``, left unread (fewer: closed or timed out)."""
    deadline = time.monotonic() + timeout_s
    header = b""
    while len(header) < _HEADER_BYTES:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return header
        readable, _, _ = select.select([sock], [], [], remaining)
        if not readable:
            return header
        peeked = sock.recv(_HEADER_BYTES, socket.MSG_PEEK)
        if not peeked:  # closed by the peer
            return peeked
        if len(peeked) < _HEADER_BYTES:  # a partial header stays readable: do not spin
            time.sleep(_PEEK_RETRY_S)
        header = peeked
    return header


class BoundedAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with a per-address connection limit and deadlines.

    Set :attr:`limits` before serving. :meth:`shutdown` stops the deadline watchdog too.
    """

    limits: ConnectionLimits = ConnectionLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deadlines = SocketDeadlines("dicom")
        self._by_address: dict[str, list[socket.socket]] = {}
        self._count_lock = threading.Lock()
        #: Connections refused at accept by the per-address limit.
        self.refused_connections = 0

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """``socketserver`` hook, in the accept loop: False closes the connection at once."""
        address = str(client_address[0]) if isinstance(client_address, tuple) else "?"
        with self._count_lock:
            open_ = [s for s in self._by_address.get(address, []) if s.fileno() >= 0]
            if len(open_) >= self.limits.max_connections_per_address:
                self._by_address[address] = open_
                self.refused_connections += 1
                refused = True
            else:
                open_.append(request)
                self._by_address[address] = open_
                refused = False
            for key in [k for k, v in self._by_address.items() if not v]:
                del self._by_address[key]
        if refused:
            LOGGER.warning(
                "DICOM connection from %s refused: %d connections open from that address",
                address,
                self.limits.max_connections_per_address,
            )
        return not refused

    def shutdown(self) -> None:
        """Stop serving and close the listening socket (as pynetdicom's, without the AE's
        private server list: these servers are not started through ``AE.start_server``)."""
        socketserver.BaseServer.shutdown(self)
        self.server_close()
        self.deadlines.stop()


class GatedRequestHandler(RequestHandler):
    """Hands a connection to pynetdicom only after its first PDU header was checked."""

    server: BoundedAssociationServer

    def handle(self) -> None:
        """Arm the association deadline, check the first header, then start the association."""
        sock: socket.socket = self.request
        limits = self.server.limits
        address = str(self.client_address[0])
        self.server.deadlines.arm(sock, limits.association_timeout_s, "DICOM association")
        try:
            sock.settimeout(limits.idle_timeout_s)
            reason = check_associate_header(_peek_header(sock, limits.association_timeout_s))
        except OSError as exc:
            reason = f"connection failed before association ({exc.strerror or exc})"
        if reason is not None:
            self.server.deadlines.clear(sock)
            LOGGER.warning("DICOM connection from %s closed: %s", address, reason)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
            return
        super().handle()
