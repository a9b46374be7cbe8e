"""STOW-RS (DICOMweb store) to ``{base_url}/studies``, one instance per request.

Answers (PS3.18 §10.5.3): 200 every instance stored; 202 stored with warnings or some failed
(the response's FailedSOPSequence says which); 409 none stored. A failed instance is retryable
only for an out-of-resources reason (``0xA7xx``), as for C-STORE.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

from serving.delivery.base import (
    DeliveryError,
    Payload,
    probe_timeout_s,
    storage_status_retryable,
)
from serving.delivery.http import HttpAnswer, check_url, post, probe_url, public_url

DICOM_JSON = "application/dicom+json"
FAILED_SOP_SEQUENCE = "00081198"
FAILURE_REASON = "00081197"
REFERENCED_SOP_INSTANCE_UID = "00081155"


class StowRsDestination:
    """STOW-RS client.

    Args:
        base_url: The DICOMweb service root, e.g. ``http://pacs:8042/dicom-web``.
        timeout_s: Connect and read timeout, seconds.
        headers: Extra headers, e.g. authorisation (never logged).
        name: Destination name; ``stow:<base_url>`` by default.
    """

    def __init__(
        self,
        base_url: str,
        timeout_s: float = 60.0,
        headers: Mapping[str, str] | None = None,
        name: str = "",
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.base_url = check_url(base_url).rstrip("/")
        self.timeout_s = float(timeout_s)
        self.headers = dict(headers or {})
        self.headers.setdefault("Accept", DICOM_JSON)
        self.name = name or f"stow:{public_url(self.base_url)}"

    def probe(self) -> None:
        """``OPTIONS {base_url}/studies``; ``DeliveryError`` unless answered below 500."""
        probe_url(
            f"{self.base_url}/studies",
            headers=self.headers,
            timeout_s=probe_timeout_s(self.timeout_s),
            where=self.name,
        )

    def deliver(self, payload: Payload) -> None:
        """POST the instance as ``multipart/related; type="application/dicom"``."""
        if not payload.kind.is_dicom:
            raise DeliveryError(
                False, f"{self.name}: STOW-RS takes dicom payloads, not {payload.kind}"
            )
        try:
            instance = payload.data()
        except OSError as exc:
            raise DeliveryError(False, f"{self.name}: cannot read the instance ({exc})") from exc
        body, content_type = multipart_related([instance])
        answer = post(
            f"{self.base_url}/studies",
            body,
            content_type,
            headers=self.headers,
            timeout_s=self.timeout_s,
            where=self.name,
        )
        self._check(answer)

    def _check(self, answer: HttpAnswer) -> None:
        if answer.status == 200 or not answer.body:
            return
        try:
            document = json.loads(answer.body)
        except ValueError:
            return  # a 202 without a readable body: the server said it took the request
        failures = failed_instances(document)
        if failures:
            uid, reason = failures[0]
            raise DeliveryError(
                storage_status_retryable(reason),
                f"{self.name}: STOW-RS did not store {uid or 'the instance'}, "
                f"failure reason 0x{reason:04X}",
            )


def multipart_related(parts: list[bytes]) -> tuple[bytes, str]:
    """A ``multipart/related; type="application/dicom"`` body and its content type."""
    boundary = f"statlane-{uuid.uuid4().hex}"
    chunks: list[bytes] = []
    for part in parts:
        chunks += [
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(),
            part,
            b"\r\n",
        ]
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f'multipart/related; type="application/dicom"; boundary={boundary}'


def failed_instances(document: Any) -> list[tuple[str, int]]:
    """``(SOP Instance UID, FailureReason)`` for each entry of a STOW-RS FailedSOPSequence."""
    if isinstance(document, list):  # some servers wrap the response dataset in a list
        document = document[0] if document else {}
    if not isinstance(document, dict):
        return []
    items = document.get(FAILED_SOP_SEQUENCE, {}).get("Value", [])
    failures = []
    for item in items:
        uid = _first(item, REFERENCED_SOP_INSTANCE_UID)
        reason = _first(item, FAILURE_REASON)
        failures.append((str(uid or ""), int(reason) if reason is not None else 0xC000))
    return failures


def _first(item: Any, tag: str) -> Any:
    values = item.get(tag, {}).get("Value", []) if isinstance(item, dict) else []
    return values[0] if values else None
