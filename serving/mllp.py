"""MLLP, the HL7 v2 minimal lower layer protocol: framing, character sets, the one-shot client
and reading acknowledgements. Used in both directions: the order listener
(:mod:`serving.gateway.mllp`) and the result destination (:mod:`serving.delivery.mllp`).

A frame is 0x0B, the message bytes, 0x1C 0x0D. Text is UTF-8 unless MSH-18 declares another
character set; undecodable bytes fall back to ISO 8859-1 rather than failing.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

from serving.gateway.hl7_orders import ACK_CODES, Er7Message, MalformedMessage

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
RECV_BYTES = 65536
"""Bytes asked of one ``recv`` call."""
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


def ack_error_code(ack_text: str) -> str:
    """The HL7 error code (table 0357, digits only) of an acknowledgement's ERR segments.

    ERR-3.1 (v2.5 and later), else ERR-1.4.1 (v2.4 and earlier), of the first ERR segment that
    has a numeric one; "" when there is none or the text is not an HL7 message. Only the code:
    MSA-3 and ERR free text can quote the message, which holds patient data.
    """
    try:
        message = Er7Message.parse(ack_text)
    except MalformedMessage:
        return ""
    subcomponent = message.encoding.subcomponent
    for fields in message.segments:
        if fields[0] != "ERR":
            continue
        segment = Er7Message([fields], message.encoding)
        legacy = segment.value("ERR", 1, 4).split(subcomponent)[0]
        for code in (segment.value("ERR", 3), legacy):
            if code.isdigit():
                return code
    return ""


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
                chunk = connection.recv(RECV_BYTES)
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
