"""The MLLP order listener: a threaded server answering every HL7 v2 message with one reply.

The server answers every frame on a connection with exactly one framed reply, in order;
whatever the handler does (raise, return something we cannot encode) the peer gets an AR NAK
and the server keeps serving. Framing, character sets and the client are in
:mod:`serving.mllp`.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from types import TracebackType

from serving.gateway.hl7_orders import APPLICATION_INTERNAL_ERROR, DATA_TYPE_ERROR, build_ack
from serving.mllp import (
    DEFAULT_MAX_MESSAGE_BYTES,
    END_BLOCK,
    RECV_BYTES,
    START_BLOCK,
    MllpDecoder,
    MllpError,
    MllpFrameTooLarge,
    decode_hl7,
    frame,
    hl7_codec,
)

logger = logging.getLogger(__name__)

DEFAULT_PORT = 2575
DEFAULT_IDLE_TIMEOUT_S = 300.0
DEFAULT_FRAME_TIMEOUT_S = 10.0
_STOP_JOIN_S = 5.0
_DRAIN_S = 2.0
_DRAIN_MAX_BYTES = 1024 * 1024


def _utc_now() -> datetime:
    return datetime.now(UTC)


class _TcpServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True  # MllpServer.stop() closes and joins connections itself

    def __init__(self, address: tuple[str, int], owner: MllpServer) -> None:
        self.owner = owner
        super().__init__(address, _Connection)


class _Connection(socketserver.BaseRequestHandler):
    server: _TcpServer

    def handle(self) -> None:
        self.server.owner.serve_connection(self.request, self.client_address)


class MllpServer:
    """Threaded MLLP listener: one thread per connection, one reply per message, in order.

    Args:
        handler: Message text → reply text (an ACK); called on connection threads. An exception
            becomes an AR NAK ("application internal error") and is logged by type only.
        host: Address to listen on.
        port: TCP port; 0 picks a free one (read it from ``port`` after ``start``).
        max_message_bytes: Largest accepted payload; a larger frame gets an AR NAK and the
            connection is closed.
        idle_timeout_s: Seconds a connection may stay silent between messages before it is
            closed.
        frame_timeout_s: Seconds a message may take from its first byte to its end block, and
            a new connection to its first message; bytes outside a frame count as an
            unfinished message, so an unframed or trickling peer is closed after it.
        clock: Wall-clock time for MSH-7 of the NAKs the server writes itself.
        monotonic: Monotonic seconds for the timeouts (injected by tests).
    """

    def __init__(
        self,
        handler: Callable[[str], str],
        *,
        host: str = "0.0.0.0",
        port: int = DEFAULT_PORT,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
        frame_timeout_s: float = DEFAULT_FRAME_TIMEOUT_S,
        clock: Callable[[], datetime] = _utc_now,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be 0-65535, got {port}")
        if max_message_bytes <= 0 or min(idle_timeout_s, frame_timeout_s) <= 0:
            raise ValueError(
                "max_message_bytes, idle_timeout_s and frame_timeout_s must be positive"
            )
        self._handler = handler
        self._host = host
        self._port = port
        self._max_message_bytes = max_message_bytes
        self._idle_timeout_s = idle_timeout_s
        self._frame_timeout_s = frame_timeout_s
        self._clock = clock
        self._monotonic = monotonic
        self._server: _TcpServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._stopping = False

    @property
    def port(self) -> int:
        """The port listened on: the bound one once started (useful with port 0)."""
        return self._server.server_address[1] if self._server else self._port

    def start(self) -> None:
        """Bind and serve in a background thread; returns once connections are accepted."""
        if self._server is not None:
            raise RuntimeError("MLLP server already started")
        self._stopping = False
        try:
            self._server = _TcpServer((self._host, self._port), self)
        except OSError as exc:
            raise MllpError(
                f"cannot listen for MLLP on {self._host}:{self._port}: {exc.strerror or exc}"
            ) from exc
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"mllp-{self.port}",
            daemon=True,
        )
        self._thread.start()
        logger.info("MLLP listening on %s:%d", self._host, self.port)

    def stop(self) -> None:
        """Stop accepting, close open connections (after the message in hand) and wait."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            self._stopping = True
            connections = dict(self._connections)
        for connection, thread in connections.items():
            with contextlib.suppress(OSError):  # already closed by the peer
                connection.shutdown(socket.SHUT_RDWR)
            thread.join(_STOP_JOIN_S)
        if self._thread is not None:
            self._thread.join(_STOP_JOIN_S)
        logger.info("MLLP server on port %d stopped", server.server_address[1])

    def __enter__(self) -> MllpServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def serve_connection(self, connection: socket.socket, peer: tuple[str, int]) -> None:
        """Answer every message on one accepted connection until it closes (on its thread)."""
        with self._lock:
            if self._stopping:
                return
            self._connections[connection] = threading.current_thread()
        try:
            self._converse(connection, f"{peer[0]}:{peer[1]}")
        except OSError as exc:
            logger.info("MLLP connection from %s:%d lost: %s", peer[0], peer[1], exc.strerror)
        except Exception as exc:  # noqa: BLE001 - never a traceback: its text could quote the message
            logger.error("MLLP connection from %s:%d failed: %s", *peer[:2], type(exc).__name__)
        finally:
            with self._lock:
                self._connections.pop(connection, None)

    def _converse(self, connection: socket.socket, peer: str) -> None:
        decoder = MllpDecoder(self._max_message_bytes)
        # A message is due by frame_deadline (None: none unfinished, only idle_timeout_s
        # applies); a new connection owes its first message.
        frame_deadline: float | None = self._monotonic() + self._frame_timeout_s
        while True:
            wait_s = self._idle_timeout_s
            if frame_deadline is not None:
                wait_s = min(wait_s, frame_deadline - self._monotonic())
            try:
                if wait_s <= 0:
                    raise TimeoutError
                connection.settimeout(wait_s)
                data = connection.recv(RECV_BYTES)
            except TimeoutError:
                if frame_deadline is not None and self._monotonic() >= frame_deadline:
                    logger.info(
                        "MLLP connection from %s sent no complete message in %.0f s, closing",
                        peer,
                        self._frame_timeout_s,
                    )
                else:
                    logger.info("MLLP connection from %s idle, closing", peer)
                return
            if not data:
                if decoder.pending_bytes:
                    logger.warning(
                        "MLLP peer %s closed mid-frame; %d bytes dropped",
                        peer,
                        decoder.pending_bytes,
                    )
                return
            if frame_deadline is None:
                frame_deadline = self._monotonic() + self._frame_timeout_s
            try:
                for payload in decoder.feed(data):
                    connection.sendall(self._reply(payload))
                    frame_deadline = None
            except MllpFrameTooLarge as exc:
                logger.warning("MLLP peer %s: %s; closing", peer, exc)
                # Table 0357 has no "too large"; 102 (data type error) covers length errors.
                nak = build_ack(None, "AR", str(exc), self._clock(), error_code=DATA_TYPE_ERROR)
                connection.sendall(frame(nak))
                _close_after_reply(connection)
                return
            if decoder.pending_bytes and frame_deadline is None:
                frame_deadline = self._monotonic() + self._frame_timeout_s

    def _reply(self, payload: bytes) -> bytes:
        text = decode_hl7(payload)
        try:
            return frame(self._handler(text))
        except Exception as exc:  # noqa: BLE001 - the handler's failure must never end the connection
            logger.error("MLLP handler failed: %s", type(exc).__name__)
            nak = build_ack(
                text,
                "AR",
                "application internal error",
                self._clock(),
                error_code=APPLICATION_INTERNAL_ERROR,
            )
            # Inbound names echoed into the NAK may not fit the declared character set.
            codec = hl7_codec(nak) or "utf-8"
            return START_BLOCK + nak.encode(codec, errors="replace") + END_BLOCK


def _close_after_reply(connection: socket.socket) -> None:
    """Half-close, then discard what the peer still sends (bounded by _DRAIN_S of silence and
    _DRAIN_MAX_BYTES) so that our reply is read before the connection closes.

    Closing a socket with unread input makes the kernel send a reset, which can destroy the
    reply in flight.
    """
    connection.shutdown(socket.SHUT_WR)
    connection.settimeout(_DRAIN_S)
    drained = 0
    with contextlib.suppress(OSError):
        while drained < _DRAIN_MAX_BYTES and (data := connection.recv(RECV_BYTES)):
            drained += len(data)
