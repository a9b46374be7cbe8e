"""HTTP request bodies for STOW-RS: receiving them, and splitting ``multipart/related``.

:func:`receive_body` reads a body sent with Content-Length or chunked transfer coding (Orthanc
and most DICOMweb clients stream STOW-RS chunked) and keeps large ones on disk. The body is
``bytes`` or an ``mmap`` of that file, so a large upload is never copied whole:
:func:`split_multipart` (RFC 2046 section 5.1, RFC 2387) returns parts as byte offsets and each
one is sliced out on its own.
"""

from __future__ import annotations

import contextlib
import mmap
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from email.message import Message
from email.utils import collapse_rfc2231_value
from typing import BinaryIO, Protocol

from serving.gateway.errors import MalformedRequest

__all__ = [
    "Body",
    "BodyPart",
    "MediaType",
    "parse_media_type",
    "receive_body",
    "split_multipart",
]

Body = bytes | mmap.mmap

# RFC 2046 section 5.1.1 allows 70 characters, but Orthanc's STOW-RS client sends 73 (two
# UUIDs): be liberal in what we accept, with a bound.
MAX_BOUNDARY_CHARS = 200
MAX_PART_HEADER_BYTES = 16 * 1024
DEFAULT_MEMORY_BODY_BYTES = 64 * 1024**2
_MAX_CHUNK_LINE_BYTES = 4096
_COPY_CHUNK_BYTES = 1024**2
_CRLF = b"\r\n"


@dataclass(frozen=True)
class MediaType:
    """A parsed ``Content-Type``: lower-case ``type/subtype`` and parameters (lower-case names)."""

    essence: str
    parameters: Mapping[str, str]


@dataclass(frozen=True)
class BodyPart:
    """One part of a multipart body: its headers (lower-case names) and content offsets."""

    headers: Mapping[str, str]
    start: int
    end: int

    @property
    def media_type(self) -> MediaType | None:
        """The part's ``Content-Type``, None when absent."""
        value = self.headers.get("content-type")
        return None if value is None else parse_media_type(value)

    def content(self, body: Body) -> bytes:
        """The part's bytes, copied out of ``body``."""
        return body[self.start : self.end]


def parse_media_type(value: str) -> MediaType:
    """Parse a ``Content-Type`` header value, quoted parameters included.

    Raises:
        MalformedRequest: The value has no ``type/subtype``.
    """
    message = Message()
    message["content-type"] = value
    params = message.get_params(header="content-type", unquote=True) or []
    essence = str(params[0][0]).strip().lower() if params else ""
    if essence.count("/") != 1 or not all(essence.split("/")):
        raise MalformedRequest(f"Content-Type {value[:80]!r} is not a media type", http_status=415)
    parameters = {
        str(name).strip().lower(): collapse_rfc2231_value(raw).strip() for name, raw in params[1:]
    }
    return MediaType(essence, parameters)


def _parse_headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    last = None
    for line in block.decode("latin-1").split("\r\n"):
        if line[:1] in (" ", "\t") and last is not None:  # folded continuation line
            headers[last] += " " + line.strip()
            continue
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise MalformedRequest(f"malformed part header line {line[:80]!r}")
        last = name.strip().lower()
        headers[last] = value.strip()
    return headers


def _find_delimiter(body: Body, delimiter: bytes, start: int) -> int:
    """Offset of the next real delimiter: CRLF, --boundary, then "--" or blanks and CRLF."""
    while True:
        found = body.find(delimiter, start)
        if found < 0:
            raise MalformedRequest("multipart body ends before its closing boundary")
        after = found + len(delimiter)
        tail = body[after : after + 2]
        if tail == b"--":
            return found
        line_end = body.find(_CRLF, after, after + 256)
        if line_end >= 0 and not body[after:line_end].strip(b" \t"):
            return found
        start = found + 1  # the boundary text is only a prefix of other content


def split_multipart(body: Body, boundary: str) -> list[BodyPart]:
    """Split a multipart body into parts; the preamble and epilogue are ignored.

    Raises:
        MalformedRequest: Bad boundary, no delimiter, unterminated headers, or a body that
            ends before its closing delimiter (a truncated upload).
    """
    if not 1 <= len(boundary) <= MAX_BOUNDARY_CHARS or not boundary.isascii():
        raise MalformedRequest(
            f"multipart boundary must be 1-{MAX_BOUNDARY_CHARS} ASCII characters"
        )
    dash_boundary = b"--" + boundary.encode("ascii")
    delimiter = _CRLF + dash_boundary
    if body[: len(dash_boundary)] == dash_boundary:
        position = 0
    else:
        found = body.find(delimiter)
        if found < 0:
            raise MalformedRequest("multipart body does not contain its boundary")
        position = found + len(_CRLF)
    parts: list[BodyPart] = []
    while True:
        position += len(dash_boundary)
        if body[position : position + 2] == b"--":
            return parts  # close delimiter
        line_end = body.find(_CRLF, position)
        if line_end < 0 or body[position:line_end].strip(b" \t"):
            raise MalformedRequest("malformed multipart boundary line")
        header_start = line_end + len(_CRLF)
        if body[header_start : header_start + 2] == _CRLF:
            header_end, content_start = header_start, header_start + 2
        else:
            limit = header_start + MAX_PART_HEADER_BYTES
            header_end = body.find(_CRLF + _CRLF, header_start, limit)
            if header_end < 0:
                raise MalformedRequest(f"part {len(parts) + 1} headers are not terminated")
            content_start = header_end + 4
        content_end = _find_delimiter(body, delimiter, content_start)
        headers = _parse_headers(body[header_start:header_end]) if header_end > header_start else {}
        parts.append(BodyPart(headers, content_start, content_end))
        position = content_end + len(_CRLF)


class Readable(Protocol):
    """The part of a socket file a body is read from."""

    def read(self, size: int, /) -> bytes: ...

    def readline(self, size: int, /) -> bytes: ...


class _BodySink:
    """Collects a body in memory up to ``memory_bytes``, then in an anonymous temporary file."""

    def __init__(self, memory_bytes: int) -> None:
        self._memory = bytearray()
        self._memory_bytes = memory_bytes
        self._file: BinaryIO | None = None
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self._file is None and self.size <= self._memory_bytes:
            self._memory += chunk
            return
        if self._file is None:
            self._file = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())
            self._file.write(self._memory)
            self._memory = bytearray()
        self._file.write(chunk)

    @contextlib.contextmanager
    def body(self) -> Iterator[Body]:
        if self._file is None:
            yield bytes(self._memory)
            return
        self._file.flush()
        with mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            yield mapped

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _copy(stream: Readable, sink: _BodySink, length: int) -> int:
    """Copy up to ``length`` bytes from ``stream``; return how many arrived."""
    copied = 0
    while copied < length:
        chunk = stream.read(min(_COPY_CHUNK_BYTES, length - copied))
        if not chunk:
            break
        sink.write(chunk)
        copied += len(chunk)
    return copied


def _read_chunked(stream: Readable, sink: _BodySink, max_bytes: int) -> None:
    """Decode chunked transfer coding (RFC 9112 section 7.1); trailers are read and ignored."""
    while True:
        line = stream.readline(_MAX_CHUNK_LINE_BYTES)
        if not line.endswith(b"\n"):
            raise MalformedRequest("the chunked body ends early")
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise MalformedRequest("malformed chunk size line") from None
        if size < 0:
            raise MalformedRequest("malformed chunk size line")
        if size == 0:
            break
        if sink.size + size > max_bytes:
            raise MalformedRequest(f"body over the {max_bytes} byte limit", http_status=413)
        if _copy(stream, sink, size) < size or stream.readline(3) not in (b"\r\n", b"\n"):
            raise MalformedRequest("the chunked body ends early")
    while stream.readline(_MAX_CHUNK_LINE_BYTES) not in (b"\r\n", b"\n", b""):
        pass


@contextlib.contextmanager
def receive_body(
    stream: Readable,
    *,
    content_length: str | None,
    transfer_encoding: str | None,
    max_bytes: int,
    memory_bytes: int = DEFAULT_MEMORY_BODY_BYTES,
) -> Iterator[Body]:
    """Read a request body; bodies over ``memory_bytes`` are kept in a temporary file.

    Raises:
        MalformedRequest: 411 without Content-Length or chunked coding, 413 over
            ``max_bytes``, 400 when the body ends early or its chunk framing is broken.
    """
    sink = _BodySink(memory_bytes)
    try:
        if transfer_encoding and "chunked" in transfer_encoding.lower():
            _read_chunked(stream, sink, max_bytes)
        elif content_length is not None and content_length.strip().isdigit():
            length = int(content_length)
            if length > max_bytes:
                raise MalformedRequest(
                    f"body of {length} bytes is over the {max_bytes} byte limit", http_status=413
                )
            if _copy(stream, sink, length) < length:
                raise MalformedRequest("the body is shorter than its Content-Length")
        else:
            raise MalformedRequest("Content-Length or chunked coding is required", http_status=411)
        with sink.body() as body:
            yield body
    finally:
        sink.close()
