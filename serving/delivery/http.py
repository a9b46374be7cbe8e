"""HTTP POST delivery (urllib, no extra dependency): webhook JSON and FHIR REST.

``post`` is shared with STOW-RS. Status classes: 2xx delivered; 408, 425, 429 and 5xx are
transient (retryable); 3xx and every other 4xx will be answered the same way again (a redirect
is refused rather than followed, because urllib would turn a redirected POST into a GET and
drop the body; configure the final URL).
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import Message
from typing import Any

from serving.delivery.base import FHIR_CONTENT_TYPE, DeliveryError, Payload, probe_timeout_s

FHIR_JSON = FHIR_CONTENT_TYPE
RETRYABLE_HTTP = frozenset({408, 425, 429})


@dataclass(frozen=True)
class HttpAnswer:
    """A 2xx answer: status code, content type and body."""

    status: int
    content_type: str
    body: bytes


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Message,
        newurl: str,
    ) -> urllib.request.Request | None:
        return None  # urllib then raises HTTPError with the 3xx status


_OPENER = urllib.request.build_opener(_NoRedirect)


def check_url(url: str) -> str:
    """``url`` if it is an absolute http(s) URL; ``ValueError`` otherwise."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"destination URL {url!r} must be an absolute http(s) URL")
    return url


def public_url(url: str) -> str:
    """``url`` without user info or query, for names and messages (no secrets in logs)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def post(
    url: str,
    data: bytes,
    content_type: str,
    *,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = 30.0,
    where: str = "",
) -> HttpAnswer:
    """POST ``data`` and return the 2xx answer, or raise ``DeliveryError``.

    Args:
        url: Target URL.
        data: Request body.
        content_type: Its ``Content-Type``.
        headers: Extra headers (authorisation, ``Accept``).
        timeout_s: Connect and read timeout, seconds.
        where: Destination name to start error messages with.
    """
    request = urllib.request.Request(url, data=data, method="POST")
    for key, value in (headers or {}).items():
        request.add_header(key, value)
    request.add_header("Content-Type", content_type)
    where = where or public_url(url)
    try:
        with _OPENER.open(request, timeout=timeout_s) as response:
            return HttpAnswer(
                int(response.status), response.headers.get("Content-Type", ""), response.read()
            )
    except urllib.error.HTTPError as exc:
        status = int(exc.code)
        detail = _safe_detail(exc.read())
        retryable = status >= 500 or status in RETRYABLE_HTTP
        raise DeliveryError(retryable, f"{where}: HTTP {status} {exc.reason}{detail}") from exc
    except (OSError, http.client.HTTPException) as exc:  # URLError, refused, reset, timeout
        reason = getattr(exc, "reason", exc)
        raise DeliveryError(True, f"{where}: cannot reach the server ({reason})") from exc


def probe_url(
    url: str, *, headers: Mapping[str, str] | None = None, timeout_s: float = 5.0, where: str = ""
) -> int:
    """``OPTIONS url``: the HTTP status when the server answers below 500, else ``DeliveryError``.

    Any answer below 500 (even 401, 404 or 405) means a server is there and handling requests;
    a 5xx, a refused connection or a timeout means it is not (yet) able to take deliveries.
    """
    request = urllib.request.Request(url, method="OPTIONS")
    for key, value in (headers or {}).items():
        request.add_header(key, value)
    where = where or public_url(url)
    try:
        with _OPENER.open(request, timeout=timeout_s) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        status = int(exc.code)
        if status < 500:
            return status
        raise DeliveryError(True, f"{where}: probe answered HTTP {status}") from exc
    except (OSError, http.client.HTTPException) as exc:  # URLError, refused, reset, timeout
        reason = getattr(exc, "reason", exc)
        raise DeliveryError(True, f"{where}: cannot reach the server ({reason})") from exc


def _safe_detail(body: bytes) -> str:
    """The enumerated issue codes of a FHIR OperationOutcome answer, else nothing.

    Free text from the server (diagnostics, HTML error pages) can echo the payload, which holds
    patient data, so it never goes into an error message that the outbox logs.
    """
    try:
        document = json.loads(body)
    except ValueError:
        return ""
    if not isinstance(document, dict) or document.get("resourceType") != "OperationOutcome":
        return ""
    codes = [
        str(issue.get("code"))
        for issue in document.get("issue", [])
        if isinstance(issue, dict) and str(issue.get("code", "")).replace("-", "").isalpha()
    ]
    return f" (OperationOutcome issues: {', '.join(codes)})" if codes else ""


class HttpJsonDestination:
    """POST JSON to a webhook, or a FHIR transaction Bundle to a FHIR server's base URL.

    Args:
        url: Webhook URL, or the FHIR base URL (a transaction Bundle is POSTed to the base).
        content_type: Sent ``Content-Type``; the payload's own when None (``application/json``
            for ``json``, ``application/fhir+json`` for ``fhir``). FHIR destinations fix it to
            ``application/fhir+json`` and ask for the same in ``Accept``.
        timeout_s: Connect and read timeout, seconds.
        headers: Extra headers, e.g. ``{"Authorization": "Bearer ..."}`` (never logged).
        name: Destination name; ``webhook:<url>`` or ``fhir:<url>`` by default.
    """

    def __init__(
        self,
        url: str,
        *,
        content_type: str | None = None,
        timeout_s: float = 30.0,
        headers: Mapping[str, str] | None = None,
        name: str = "",
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.url = check_url(url)
        self.content_type = content_type
        self.timeout_s = float(timeout_s)
        self.headers = dict(headers or {})
        if content_type == FHIR_JSON:
            self.headers.setdefault("Accept", FHIR_JSON)
        kind = "fhir" if content_type == FHIR_JSON else "webhook"
        self.name = name or f"{kind}:{public_url(url)}"

    def probe(self) -> None:
        """``OPTIONS`` on the URL; ``DeliveryError`` unless the server answers below 500."""
        probe_url(
            self.url,
            headers=self.headers,
            timeout_s=probe_timeout_s(self.timeout_s),
            where=self.name,
        )

    def deliver(self, payload: Payload) -> None:
        """POST the payload's JSON; returns on any 2xx answer."""
        if not payload.kind.is_json:
            raise DeliveryError(
                False, f"{self.name}: takes json or fhir payloads, not {payload.kind}"
            )
        data = payload.data()
        if isinstance(payload.body, str | bytes):
            try:
                json.loads(data)
            except ValueError as exc:
                raise DeliveryError(
                    False, f"{self.name}: payload is not valid JSON ({exc})"
                ) from exc
        post(
            self.url,
            data,
            self.content_type or payload.content_type,
            headers=self.headers,
            timeout_s=self.timeout_s,
            where=self.name,
        )
