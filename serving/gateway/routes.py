"""The HTTP port's route table: every endpoint declared with its method, path and role.

A :class:`Route` names the method, a path pattern (``/studies/{uid}``: a ``{name}`` matches one
non-empty path segment), the handler and the :class:`Role` a caller will need. Routes are
declared in tables beside their handlers (``STOW_ROUTES`` in ``stow.py``, ``REST_ROUTES`` in
``serving/service/rest.py``) with unbound handlers, so they can be listed without a running
server; a :class:`RouteTable` binds each to the object that serves it and answers a request:
the matching endpoint, or 404 (no such path) or 405 with the methods the path allows.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from email.message import Message
from enum import StrEnum
from io import BytesIO
from typing import Any, Generic, TypeVar

from serving.gateway.multipart import Readable

__all__ = [
    "Endpoint",
    "Request",
    "Resolved",
    "Response",
    "Role",
    "Route",
    "RouteTable",
    "plain_response",
]

Owner = TypeVar("Owner")
_PARAMETER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class Role(StrEnum):
    """What a caller must be to use a route (access control builds on it).

    ``ingest`` is a sender of images, not a reader: it is not above or below ``viewer``.
    """

    PUBLIC = "public"
    """Anyone who reaches the port: liveness only."""
    VIEWER = "viewer"
    """Reads the worklist, studies, tasks, outbox, audit trail and metrics."""
    INGEST = "ingest"
    """Sends images (STOW-RS): a modality, PACS or router, not a person."""
    OPERATOR = "operator"
    """Changes operational state (retries deliveries, releases quarantine)."""
    ADMIN = "admin"
    """Changes configuration, rules and models."""


@dataclass(frozen=True)
class Request:
    """One HTTP request, as a handler sees it.

    Attributes:
        method: ``GET``, ``POST``, ...
        target: The request target as sent (path and query).
        path: The path without query or trailing slash (``/`` for the root).
        params: Values of the route's ``{name}`` segments.
        query: Query parameters, the last value of each.
        headers: The request headers.
        body: The unread request body (read it with the headers' framing).
        client: The client's address.
    """

    method: str
    target: str
    path: str
    params: Mapping[str, str] = field(default_factory=dict)
    query: Mapping[str, str] = field(default_factory=dict)
    headers: Message = field(default_factory=Message)
    body: Readable = field(default_factory=BytesIO)
    client: str = ""


@dataclass(frozen=True)
class Response:
    """An HTTP answer.

    Attributes:
        status: HTTP status code.
        content_type: The Content-Type header.
        body: The body, sent with its Content-Length.
        headers: Further headers (name, value).
        close_connection: Close after answering (the request body was not fully read).
    """

    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    close_connection: bool = False


def plain_response(status: int, message: str, **extra: Any) -> Response:
    """A ``text/plain`` answer of one line."""
    return Response(status, "text/plain; charset=utf-8", (message + "\n").encode(), **extra)


@dataclass(frozen=True)
class Route(Generic[Owner]):
    """One declared endpoint.

    Attributes:
        method: The HTTP method.
        path: The path pattern; ``{name}`` matches one non-empty segment.
        role: The role a caller will need.
        handler: Answers a request, given the object that serves the route.
        summary: One line for the docs.
    """

    method: str
    path: str
    role: Role
    handler: Callable[[Owner, Request], Response]
    summary: str

    def under(self, prefix: str) -> Route[Owner]:
        """The same route mounted below ``prefix`` (``/dicomweb``)."""
        return replace(self, path=prefix.rstrip("/") + self.path)


@dataclass(frozen=True)
class Endpoint:
    """A route bound to the object that serves it."""

    route: Route[Any]
    pattern: re.Pattern[str]
    serve: Callable[[Request], Response]


@dataclass(frozen=True)
class Resolved:
    """What a request resolves to: an endpoint and its parameters, or the methods allowed on
    the path (empty: no such path, 404; else 405)."""

    endpoint: Endpoint | None
    params: dict[str, str]
    allowed: tuple[str, ...] = ()


def _compile(path: str) -> re.Pattern[str]:
    if not path.startswith("/"):
        raise ValueError(f"route path {path!r} must start with /")
    pattern, last = "", 0
    for found in _PARAMETER.finditer(path):
        pattern += re.escape(path[last : found.start()]) + f"(?P<{found.group(1)}>[^/]+)"
        last = found.end()
    return re.compile(pattern + re.escape(path[last:]))


def _bind(route: Route[Owner], owner: Owner) -> Callable[[Request], Response]:
    handler = route.handler

    def serve(request: Request) -> Response:
        return handler(owner, request)

    return serve


class RouteTable:
    """The routes served on one port, each (method, path) once."""

    def __init__(self) -> None:
        self._endpoints: list[Endpoint] = []

    def add(self, routes: Iterable[Route[Owner]], owner: Owner, *, prefix: str = "") -> None:
        """Serve ``routes`` (mounted below ``prefix``) with ``owner``'s handlers.

        Raises:
            ValueError: A (method, path) already in the table, or a malformed path.
        """
        added: list[Endpoint] = []
        known = {(e.route.method, e.route.path) for e in self._endpoints}
        for route in routes:
            mounted = route.under(prefix) if prefix else route
            key = (mounted.method, mounted.path)
            if key in known:
                raise ValueError(f"route {mounted.method} {mounted.path} is declared twice")
            known.add(key)
            added.append(Endpoint(mounted, _compile(mounted.path), _bind(route, owner)))
        self._endpoints += added  # all or none

    @property
    def routes(self) -> tuple[Route[Any], ...]:
        """Every route, in the order added."""
        return tuple(e.route for e in self._endpoints)

    def resolve(self, method: str, path: str) -> Resolved:
        """The endpoint for ``method path`` (path without query or trailing slash)."""
        allowed: list[str] = []
        for endpoint in self._endpoints:
            found = endpoint.pattern.fullmatch(path)
            if found is None:
                continue
            if endpoint.route.method == method:
                return Resolved(endpoint, found.groupdict())
            if endpoint.route.method not in allowed:
                allowed.append(endpoint.route.method)
        return Resolved(None, {}, tuple(allowed))
