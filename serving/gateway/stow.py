"""DICOMweb STOW-RS (PS3.18 10.5) on the standard library's threading HTTP server.

``POST {base}/studies`` and ``POST {base}/studies/{StudyInstanceUID}`` take
``multipart/related; type="application/dicom"`` bodies. Each part is stored through the spool
on its own, so one bad part never loses the good ones. The answer is ``application/dicom+json``:

* 200: every instance stored; 202: some failed; 409: all failed;
* 400: malformed request (no boundary, broken framing, bad study UID, no parts);
* 411: neither Content-Length nor chunked coding; 413: body over the limit; 415: not
  multipart/related of application/dicom.

Failure reasons (0008,1197): 0xC000 cannot understand (not DICOM, truncated, bad identity),
0xA900 the instance does not match the study addressed in the URL, 0xA700 spool out of space,
0x0110 processing failure (unexpected; details in our log). ``GET {base}/health`` answers 200.

Every request is dispatched through the port's :class:`~serving.gateway.routes.RouteTable`:
:data:`STOW_ROUTES` below ``base_path`` and any other routes given (the REST API shares the
port). An unknown path is 404, a known path with another method 405 with ``Allow``.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BufferedReader
from types import TracebackType
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

from serving.gateway.budget import MemoryBudget, OverBudget
from serving.gateway.deadlines import SocketDeadlines
from serving.gateway.errors import InvalidInstance, MalformedRequest, OutOfResources, StudyMismatch
from serving.gateway.multipart import (
    DEFAULT_MEMORY_BODY_BYTES,
    Body,
    BodyPart,
    parse_media_type,
    receive_body,
    split_multipart,
)
from serving.gateway.routes import Request, Response, Role, Route, RouteTable, plain_response
from serving.gateway.spool import InstanceSource, Spool, StoredInstance, is_valid_uid

__all__ = [
    "FAILURE_CANNOT_UNDERSTAND",
    "FAILURE_OUT_OF_RESOURCES",
    "FAILURE_PROCESSING",
    "FAILURE_STUDY_MISMATCH",
    "STOW_ROUTES",
    "FailedInstance",
    "StowResponse",
    "StowServer",
    "StowSummary",
]

LOGGER = logging.getLogger(__name__)

FAILURE_CANNOT_UNDERSTAND = 0xC000
FAILURE_STUDY_MISMATCH = 0xA900
FAILURE_OUT_OF_RESOURCES = 0xA700
FAILURE_PROCESSING = 0x0110
DICOM_JSON = "application/dicom+json"
GIB = 1024**3


@dataclass(frozen=True)
class FailedInstance:
    """A part that was not stored: why (FailureReason code and text) and what, when known."""

    part_index: int
    failure_reason: int
    reason: str
    sop_instance_uid: str | None = None


@dataclass(frozen=True)
class StowSummary:
    """One STOW-RS request, reported to ``on_request_done`` once answered."""

    request_id: str
    address: str
    study_instance_uid: str | None
    stored: list[StoredInstance]
    failed: list[FailedInstance]
    http_status: int


@dataclass(frozen=True)
class StowResponse:
    """An HTTP answer: status, content type and body."""

    http_status: int
    content_type: str
    body: bytes
    stored: list[StoredInstance] = field(default_factory=list)
    failed: list[FailedInstance] = field(default_factory=list)


def _ignore(_: Any) -> None:
    return None


def _uid_attribute(uid: str) -> dict[str, Any]:
    return {"vr": "UI", "Value": [uid]}


def _response_dataset(stored: list[StoredInstance], failed: list[FailedInstance]) -> bytes:
    """The Store Instances Response Module (PS3.18 10.5.3.2) as DICOM JSON."""
    dataset: dict[str, Any] = {}
    if stored:
        references = [
            {
                "00081150": _uid_attribute(s.sop_class_uid),
                "00081155": _uid_attribute(s.sop_instance_uid),
            }
            for s in stored
        ]
        dataset["00081199"] = {"vr": "SQ", "Value": references}
    if failed:
        items = []
        for failure in failed:
            item: dict[str, Any] = {"00081197": {"vr": "US", "Value": [failure.failure_reason]}}
            # The reason in words, as a C-STORE response's Error Comment (LO: 64 characters):
            # PS3.18 has no text attribute in the Failed SOP Sequence, and a sender that knows
            # only the code cannot tell a missing UID from a file that is not DICOM at all.
            item["00000902"] = {"vr": "LO", "Value": [failure.reason[:64]]}
            if failure.sop_instance_uid:
                item["00081155"] = _uid_attribute(failure.sop_instance_uid)
            items.append(item)
        dataset["00081198"] = {"vr": "SQ", "Value": items}
    return json.dumps(dataset).encode()


def _plain(http_status: int, message: str) -> StowResponse:
    return StowResponse(http_status, "text/plain; charset=utf-8", (message + "\n").encode())


class StowServer:
    """A STOW-RS endpoint that writes every received instance to the spool.

    Args:
        spool: Where instances are stored durably before the response is sent.
        host: Interface to listen on.
        port: TCP port; 0 picks a free one (read it back from :attr:`port` after start).
        on_stored: Called on the request's thread after each durable store; exceptions are
            logged, never turned into a failure (the instance is already safe).
        on_request_done: Called once per POST with its :class:`StowSummary`, before the HTTP
            answer is written.
        max_body_bytes: Largest accepted request body in bytes (default 2 GiB).
        memory_body_bytes: Bodies up to this size (bytes) are held in memory, larger ones in
            a temporary file.
        base_path: URL prefix of the DICOMweb service.
        header_timeout_s: Seconds a request has for its request line and headers, from the
            connection's accept (first request) or from its first byte (later ones); a slow or
            silent client is disconnected after it.
        idle_timeout_s: Seconds a kept-alive connection may wait for its next request, and the
            longest one read or write of a body or answer may stall.
        routes: The port's route table with the other routes it serves (the REST API); the
            STOW-RS routes are added to it. Default: a table of the STOW-RS routes alone.
        budget: The in-flight memory budget shared with the DIMSE gateway: a request holds
            what its body may keep in memory, and each part its bytes while it is spooled.
            A request that does not fit is answered 503 with ``Retry-After: retry_after_s``
            (seconds) before its body is read; a part that does not fit fails with ``0xA700``.
    """

    def __init__(
        self,
        spool: Spool,
        *,
        host: str = "0.0.0.0",
        port: int = 8080,
        on_stored: Callable[[StoredInstance], None] = _ignore,
        on_request_done: Callable[[StowSummary], None] = _ignore,
        max_body_bytes: int = 2 * GIB,
        memory_body_bytes: int = DEFAULT_MEMORY_BODY_BYTES,
        base_path: str = "/dicomweb",
        routes: RouteTable | None = None,
        header_timeout_s: float = 10.0,
        idle_timeout_s: float = 60.0,
        budget: MemoryBudget | None = None,
        retry_after_s: int = 5,
    ) -> None:
        if min(header_timeout_s, idle_timeout_s) <= 0:
            raise ValueError("header_timeout_s and idle_timeout_s must be positive")
        self.spool = spool
        self.budget = budget if budget is not None else MemoryBudget()
        self.retry_after_s = retry_after_s
        self.header_timeout_s = header_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.deadlines = SocketDeadlines("http")
        self.host = host
        self.max_body_bytes = max_body_bytes
        self.memory_body_bytes = memory_body_bytes
        self.base_path = base_path.rstrip("/")
        self._requested_port = port
        self._on_stored = on_stored
        self._on_request_done = on_request_done
        self.routes = routes if routes is not None else RouteTable()
        self.routes.add(STOW_ROUTES, self, prefix=self.base_path)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The TCP port we listen on (the bound one once started, also when 0 was asked)."""
        if self._server is None:
            return self._requested_port
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Start serving on a background thread; returns at once."""
        if self._server is not None:
            raise RuntimeError("the STOW-RS server is already running")
        server = ThreadingHTTPServer((self.host, self._requested_port), _StowRequestHandler)
        server.daemon_threads = True
        server.stow = self  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="stow-rs", daemon=True)
        self._thread.start()
        LOGGER.info("STOW-RS listening on %s:%d%s/studies", self.host, self.port, self.base_path)

    def stop(self) -> None:
        """Stop serving and close the socket; requests in flight finish on their threads."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            self.deadlines.stop()
            self.deadlines = SocketDeadlines("http")
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> StowServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def health(self, request: Request) -> Response:
        """``GET {base}/health``: the STOW-RS endpoint is up."""
        return Response(200, "application/json", b'{"status": "ok"}')

    def post_studies(self, request: Request) -> Response:
        """``POST {base}/studies[/{study}]``: store every part, report, then answer."""
        study_uid = request.params.get("study")
        request_id = uuid.uuid4().hex
        held = self._body_reservation(request.headers.get("Content-Length"))
        if not self.budget.try_reserve(held):
            LOGGER.warning(
                "STOW request %s from %s refused: in-flight memory budget exhausted",
                request_id,
                request.client,
            )
            return Response(
                503,
                "text/plain; charset=utf-8",
                b"in-flight memory budget exhausted; retry later\n",
                headers=(("Retry-After", str(self.retry_after_s)),),
                close_connection=True,  # the body was not read
            )
        try:
            response, close = self._receive(request, study_uid, request_id, held)
        finally:
            self.budget.release(held)
        summary = StowSummary(
            request_id,
            request.client,
            study_uid,
            response.stored,
            response.failed,
            response.http_status,
        )
        self._request_done(summary)  # before answering: the client sees a settled state
        return Response(
            response.http_status, response.content_type, response.body, close_connection=close
        )

    def _body_reservation(self, content_length: str | None) -> int:
        """Bytes a request's body may hold in memory: its length up to the in-memory limit."""
        if content_length is not None and content_length.strip().isdigit():
            return min(int(content_length), self.memory_body_bytes)
        return self.memory_body_bytes

    def _receive(
        self, request: Request, study_uid: str | None, request_id: str, held_bytes: int = 0
    ) -> tuple[StowResponse, bool]:
        """The answer, and whether to close the connection (the body was not fully read)."""
        headers = request.headers
        try:  # headers first: a refused request is not worth reading
            boundary = self.request_boundary(headers.get("Content-Type"), study_uid)
            with receive_body(
                request.body,
                content_length=headers.get("Content-Length"),
                transfer_encoding=headers.get("Transfer-Encoding"),
                max_bytes=self.max_body_bytes,
                memory_bytes=self.memory_body_bytes,
            ) as body:
                answer = self.store_body(
                    body,
                    boundary,
                    study_uid=study_uid,
                    address=request.client,
                    request_id=request_id,
                    held_bytes=held_bytes,
                )
                return answer, False
        except MalformedRequest as exc:  # the body was not (fully) read: drop the connection
            return _plain(exc.http_status, exc.reason), True

    def store_body(
        self,
        body: Body,
        boundary: str,
        *,
        study_uid: str | None,
        address: str,
        request_id: str,
        held_bytes: int = 0,
    ) -> StowResponse:
        """Store every part of a multipart body and build the answer (no HTTP involved).

        ``held_bytes``: what the request already holds of the memory budget (its body); a
        request holding all of it is never refused for its own parts.
        """
        try:
            parts = split_multipart(body, boundary)
            if not parts:
                raise MalformedRequest("the multipart body has no parts")
        except MalformedRequest as exc:
            return _plain(exc.http_status, exc.reason)
        source = InstanceSource(None, address, "stow", request_id)
        stored: list[StoredInstance] = []
        failed: list[FailedInstance] = []
        for index, part in enumerate(parts, start=1):
            outcome = self._store_part(index, part, body, source, study_uid, held_bytes)
            if isinstance(outcome, StoredInstance):
                stored.append(outcome)
            else:
                failed.append(outcome)
        status = 200 if not failed else 409 if not stored else 202
        return StowResponse(status, DICOM_JSON, _response_dataset(stored, failed), stored, failed)

    def request_boundary(self, content_type: str | None, study_uid: str | None) -> str:
        """Check the request line and headers; return the multipart boundary.

        Raises:
            MalformedRequest: 400 for a bad study UID or no boundary, 415 for a media type
                other than multipart/related of application/dicom.
        """
        if study_uid is not None and not is_valid_uid(study_uid):
            raise MalformedRequest("the Study Instance UID in the URL is not a valid UID")
        if not content_type:
            raise MalformedRequest("Content-Type is missing", http_status=415)
        media_type = parse_media_type(content_type)
        if media_type.essence != "multipart/related":
            raise MalformedRequest(
                f"Content-Type must be multipart/related, got {media_type.essence}",
                http_status=415,
            )
        part_type = media_type.parameters.get("type", "application/dicom").lower()
        if part_type != "application/dicom":
            raise MalformedRequest(
                f"only type=application/dicom is accepted, got {part_type}", http_status=415
            )
        boundary = media_type.parameters.get("boundary")
        if not boundary:
            raise MalformedRequest("Content-Type has no multipart boundary")
        return boundary

    def _store_part(
        self,
        index: int,
        part: BodyPart,
        body: Body,
        source: InstanceSource,
        study_uid: str | None,
        held_bytes: int = 0,
    ) -> StoredInstance | FailedInstance:
        try:
            media_type = part.media_type
        except MalformedRequest as exc:
            return FailedInstance(index, FAILURE_CANNOT_UNDERSTAND, exc.reason)
        if media_type is not None and media_type.essence != "application/dicom":
            reason = f"part is {media_type.essence}, not application/dicom"
            return FailedInstance(index, FAILURE_CANNOT_UNDERSTAND, reason)
        try:
            content = part.content(body)
            with self.budget.reserve(len(content), own_bytes=held_bytes):
                stored = self.spool.store(content, source, expected_study_uid=study_uid)
            del content
        except OverBudget as exc:
            LOGGER.warning("STOW request %s: %s", source.association_id, exc)
            return FailedInstance(
                index, FAILURE_OUT_OF_RESOURCES, "in-flight memory budget exhausted"
            )
        except StudyMismatch as exc:
            return FailedInstance(index, FAILURE_STUDY_MISMATCH, exc.reason, exc.sop_instance_uid)
        except InvalidInstance as exc:
            return FailedInstance(
                index, FAILURE_CANNOT_UNDERSTAND, exc.reason, exc.sop_instance_uid
            )
        except OutOfResources as exc:
            LOGGER.error("STOW request %s: %s", source.association_id, exc)
            return FailedInstance(index, FAILURE_OUT_OF_RESOURCES, "spool out of space")
        # Disk or a bug: this part fails with a DICOMweb status; the other parts go on.
        except Exception:
            LOGGER.exception(
                "STOW request %s: storing part %d failed", source.association_id, index
            )
            return FailedInstance(index, FAILURE_PROCESSING, "internal error storing the instance")
        try:
            self._on_stored(stored)
        except Exception:  # the instance is safe on disk: report, don't fail the part
            LOGGER.exception("on_stored failed in STOW request %s", source.association_id)
        return stored

    def _request_done(self, summary: StowSummary) -> None:
        """Log one answered STOW request and report it to ``on_request_done`` (its errors are
        logged, never raised); the request handler calls it before answering."""
        LOGGER.info(
            "STOW request %s from %s: %d stored, %d failed, HTTP %d",
            summary.request_id,
            summary.address,
            len(summary.stored),
            len(summary.failed),
            summary.http_status,
        )
        for failure in summary.failed:
            LOGGER.debug(
                "STOW request %s part %d: %s",
                summary.request_id,
                failure.part_index,
                failure.reason,
            )
        try:
            self._on_request_done(summary)
        # The request is answered and its instances stored: the callback's failure is logged.
        except Exception:
            LOGGER.exception("on_request_done failed for STOW request %s", summary.request_id)


STOW_ROUTES: tuple[Route[StowServer], ...] = (
    Route("GET", "/health", Role.PUBLIC, StowServer.health, "STOW-RS endpoint liveness"),
    Route("POST", "/studies", Role.INGEST, StowServer.post_studies, "Store instances (STOW-RS)"),
    Route(
        "POST",
        "/studies/{study}",
        Role.INGEST,
        StowServer.post_studies,
        "Store instances of one study (STOW-RS)",
    ),
)
"""The DICOMweb routes, below ``base_path``."""


class _StowRequestHandler(BaseHTTPRequestHandler):
    """HTTP plumbing only: dispatch through the route table, answer; the logic is elsewhere."""

    protocol_version = "HTTP/1.1"
    server_version = "statlane-stow"

    @property
    def stow(self) -> StowServer:
        return self.server.stow  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:
        LOGGER.debug("%s " + format, self.address_string(), *args)

    def setup(self) -> None:
        super().setup()
        self._requests_read = 0

    def handle_one_request(self) -> None:
        """One request, with its request line and headers bounded by ``header_timeout_s``
        (a deadline on the whole phase, so trickled bytes do not extend it) and every later
        read or write by ``idle_timeout_s``."""
        stow = self.stow
        connection = self.connection
        connection.settimeout(stow.idle_timeout_s)
        if self._requests_read:  # kept alive: the next request may take idle_timeout_s
            try:
                waiting = cast(BufferedReader, self.rfile).peek(1)
            except OSError:  # TimeoutError included: idle for idle_timeout_s
                waiting = b""
            if not waiting:
                self.close_connection = True
                return
        self._requests_read += 1
        stow.deadlines.arm(connection, stow.header_timeout_s, "HTTP request header")
        try:
            super().handle_one_request()
        finally:
            stow.deadlines.clear(connection)

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        self.stow.deadlines.clear(self.connection)  # headers read in time; the body is not bound
        url = urlsplit(self.path)
        path = url.path.rstrip("/") or "/"
        resolved = self.stow.routes.resolve(self.command, path)
        reads_body = self.command != "GET"
        if resolved.endpoint is None:
            if resolved.allowed:
                allow = (("Allow", ", ".join(resolved.allowed)),)
                response = plain_response(405, "method not allowed", headers=allow)
            else:
                response = plain_response(404, "not found")
            if reads_body:  # the body is left unread
                self.close_connection = True
            self._answer(response)
            return
        request = Request(
            method=self.command,
            target=self.path,
            path=path,
            params=resolved.params,
            query={k: v[-1] for k, v in parse_qs(url.query).items()},
            headers=self.headers,
            body=self.rfile,
            client=self.client_address[0],
        )
        try:
            response = resolved.endpoint.serve(request)
        # Any handler error becomes one 500 answer, never a dropped connection.
        except Exception:
            LOGGER.exception("%s %s failed", self.command, resolved.endpoint.route.path)
            response = plain_response(500, "internal error", close_connection=reads_body)
        if response.close_connection:
            self.close_connection = True
        self._answer(response)

    def _answer(self, response: Response) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers:
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(response.body)
