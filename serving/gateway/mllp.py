"""MLLP, the HL7 v2 minimal lower layer protocol: framing, a threaded server and a one-shot client.

A frame is 0x0B, the message bytes, 0x1C 0x0D. The server answers every frame on a connection
with exactly one framed reply, in order; whatever the handler does (raise, return something we
cannot encode) the peer gets an AR NAK and the server keeps serving. Text is UTF-8 unless MSH-18
declares another character set; undecodable bytes fall back to ISO 8859-1 rather than failing.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from types import TracebackType

from serving.gateway.hl7_orders import (
    ACK_CODES,
    APPLICATION_INTERNAL_ERROR,
    DATA_TYPE_ERROR,
    Er7Message,
    MalformedMessage,
    build_ack,
)

logger = logging.getLogger(__name__)

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
DEFAULT_PORT = 2575
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
DEFAULT_IDLE_TIMEOUT_S = 300.0
_RECV_BYTES = 65536
_STOP_JOIN_S = 5.0
_DRAIN_S = 2.0
_DRAIN_MAX_BYTES = 1024 * 1024
# MSH-18 values (HL7 table 0211) → Python codecs; anything unknown is read as UTF-8.
_CHARSETS = {
    "ASCII": "ascii",
    "UNICODE UTF-8": "utf-8",
    "UTF-8": "utf-8",
    **{f"8859/{n}": f"iso8859-{n}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 15)},
}


class MllpError(OSError):
    """An MLLP exchange failed: connection refused or lost, timeout, or a reply not framed."""


class MllpFrameTooLarge(MllpError):
    """A frame grew past the configured maximum message size."""


def hl7_codec(message: str | bytes) -> str | None:
    """The Python codec named by MSH-18 of ``message`` (its first segment), or None."""
    if isinstance(message, bytes):  # MSH is ASCII in every HL7 character set we read
        message = message[:4096].removeprefix(b"\xef\xbb\xbf").decode("latin-1")
    head = message[:4096].lstrip("\ufeff\x0b \t\r\n")
    first = head.replace("\n", "\r").split("\r", 1)[0]
    if not first.startswith("MSH") or len(first) < 8:
        return None
    fields = first.split(first[3])
    if len(fields) < 18 or not fields[1]:
        return None
    charset = fields[17].split(fields[1][1:2] or "~")[0].split(fields[1][0])[0]
    return _CHARSETS.get(charset.strip().upper())


def decode_hl7(payload: bytes) -> str:
    """Message text from frame bytes: MSH-18's character set, else UTF-8, else ISO 8859-1."""
    for codec in (hl7_codec(payload), "utf-8"):
        if codec:
            try:
                return payload.decode(codec)
            except UnicodeDecodeError:
                continue
    return payload.decode("latin-1")


def frame(message: str) -> bytes:
    """Frame one message, encoded in MSH-18's character set (UTF-8 when none is declared).

    Raises UnicodeEncodeError (a ValueError) when the text does not fit the declared set.
    """
    return START_BLOCK + message.encode(hl7_codec(message) or "utf-8") + END_BLOCK


def ack_code(ack_text: str) -> str:
    """MSA-1 of an acknowledgement (AA, AE, AR, CA, CE or CR); MllpError if there is none."""
    try:
        code = Er7Message.parse(ack_text).value("MSA", 1).strip().upper()
    except MalformedMessage as exc:
        raise MllpError(f"reply is not an HL7 acknowledgement: {exc.reason}") from exc
    if code not in ACK_CODES:
        raise MllpError(f"reply is not an HL7 acknowledgement (MSA-1 is {code!r})")
    return code


class MllpDecoder:
    """Incremental MLLP deframer: feed it bytes as they arrive, get back complete payloads.

    Bytes outside a frame are discarded (counted in ``discarded_bytes``); a start block inside an
    unfinished frame means the sender gave up on it, so the partial frame is discarded too.
    """

    def __init__(self, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        if max_message_bytes <= 0:
            raise ValueError(f"max_message_bytes must be positive, got {max_message_bytes}")
        self.max_message_bytes = max_message_bytes
        self.discarded_bytes = 0
        self._buffer = bytearray()  # inside a frame: the payload so far, without 0x0B
        self._in_frame = False
        self._scanned = 0  # payload bytes already searched for block characters

    @property
    def pending_bytes(self) -> int:
        """Bytes of an unfinished frame."""
        return len(self._buffer) if self._in_frame else 0

    def feed(self, data: bytes) -> Iterator[bytes]:
        """Add received bytes; iterate the payloads they complete, in order.

        Raises MllpFrameTooLarge (while iterating) when a payload exceeds the maximum; the frame
        is dropped and the decoder waits for the next start block.
        """
        self._buffer += data
        return iter(self._next_payload, None)

    def _next_payload(self) -> bytes | None:
        buffer = self._buffer
        while True:
            if not self._in_frame:
                start = buffer.find(START_BLOCK)
                self.discarded_bytes += len(buffer) if start < 0 else start
                del buffer[: len(buffer) if start < 0 else start + 1]
                if start < 0:
                    return None
                self._in_frame, self._scanned = True, 0
            end = buffer.find(END_BLOCK, self._scanned)
            restart = buffer.find(START_BLOCK, self._scanned, len(buffer) if end < 0 else end)
            if restart >= 0:
                self.discarded_bytes += restart
                del buffer[: restart + 1]
                self._scanned = 0
                continue
            size = len(buffer) if end < 0 else end
            if size > self.max_message_bytes:
                self.discarded_bytes += len(buffer)
                buffer.clear()
                self._in_frame = False
                raise MllpFrameTooLarge(f"MLLP frame larger than {self.max_message_bytes} bytes")
            if end < 0:
                self._scanned = max(len(buffer) - 1, 0)  # a trailing 0x1C may await its 0x0D
                return None
            payload = bytes(buffer[:end])
            del buffer[: end + len(END_BLOCK)]
            self._in_frame = False
            return payload


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
        idle_timeout_s: Seconds a connection may stay silent before it is closed.
        clock: Wall-clock time for MSH-7 of the NAKs the server writes itself.
    """

    def __init__(
        self,
        handler: Callable[[str], str],
        *,
        host: str = "0.0.0.0",
        port: int = DEFAULT_PORT,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be 0-65535, got {port}")
        if max_message_bytes <= 0 or idle_timeout_s <= 0:
            raise ValueError("max_message_bytes and idle_timeout_s must be positive")
        self._handler = handler
        self._host = host
        self._port = port
        self._max_message_bytes = max_message_bytes
        self._idle_timeout_s = idle_timeout_s
        self._clock = clock
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
        except Exception as exc:  # never a traceback: its text could quote the message
            logger.error("MLLP connection from %s:%d failed: %s", *peer[:2], type(exc).__name__)
        finally:
            with self._lock:
                self._connections.pop(connection, None)

    def _converse(self, connection: socket.socket, peer: str) -> None:
        connection.settimeout(self._idle_timeout_s)
        decoder = MllpDecoder(self._max_message_bytes)
        while True:
            try:
                data = connection.recv(_RECV_BYTES)
            except TimeoutError:
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
            try:
                for payload in decoder.feed(data):
                    connection.sendall(self._reply(payload))
            except MllpFrameTooLarge as exc:
                logger.warning("MLLP peer %s: %s; closing", peer, exc)
                # Table 0357 has no "too large"; 102 (data type error) covers length errors.
                nak = build_ack(None, "AR", str(exc), self._clock(), error_code=DATA_TYPE_ERROR)
                connection.sendall(frame(nak))
                _close_after_reply(connection)
                return

    def _reply(self, payload: bytes) -> bytes:
        text = decode_hl7(payload)
        try:
            return frame(self._handler(text))
        except Exception as exc:  # the handler's failure must never end the connection
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
        while drained < _DRAIN_MAX_BYTES and (data := connection.recv(_RECV_BYTES)):
            drained += len(data)


def send_message(host: str, port: int, message: str, *, timeout_s: float = 10.0) -> str:
    """Send one framed message and return the text of the framed acknowledgement.

    ``timeout_s`` bounds the connect and, separately, the wait for the whole reply (seconds).
    Raises MllpError on refusal, timeout, a closed connection or a reply that is not a frame.
    """
    data = frame(message)
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as connection:
            connection.sendall(data)
            deadline = time.monotonic() + timeout_s
            decoder = MllpDecoder()
            while True:
                connection.settimeout(max(deadline - time.monotonic(), 1e-3))
                chunk = connection.recv(_RECV_BYTES)
                if not chunk:
                    raise MllpError(f"{host}:{port} closed the connection without a reply")
                for payload in decoder.feed(chunk):
                    return decode_hl7(payload)
                if decoder.discarded_bytes:
                    raise MllpError(f"reply from {host}:{port} is not an MLLP frame")
    except MllpError:
        raise
    except TimeoutError as exc:
        raise MllpError(f"no MLLP reply from {host}:{port} within {timeout_s:g} s") from exc
    except ConnectionRefusedError as exc:
        raise MllpError(f"{host}:{port} refused the MLLP connection") from exc
    except OSError as exc:
        raise MllpError(f"MLLP exchange with {host}:{port} failed: {exc.strerror or exc}") from exc
