"""What a destination receives (``Payload``), what it promises (``Destination``), the one error
it raises (``DeliveryError``) and how DICOM storage statuses map onto that error.

A destination delivers one payload synchronously and either returns (the peer took it) or
raises ``DeliveryError`` saying whether a retry may help. Retries, backoff and dead letters
belong to the outbox, not to destinations.
"""

from __future__ import annotations

import json
import logging
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from router.vocabulary import DeliveryKind

DICOM_CONTENT_TYPE = "application/dicom"
HL7_CONTENT_TYPE = "x-application/hl7-v2+er7"
FHIR_CONTENT_TYPE = "application/fhir+json"
JSON_CONTENT_TYPE = "application/json"


def default_content_type(kind: DeliveryKind) -> str:
    """The MIME type a payload of ``kind`` is sent as unless it says otherwise."""
    if kind.is_dicom:
        return DICOM_CONTENT_TYPE
    if kind is DeliveryKind.HL7:
        return HL7_CONTENT_TYPE
    if kind is DeliveryKind.FHIR:
        return FHIR_CONTENT_TYPE
    return JSON_CONTENT_TYPE


@dataclass(frozen=True)
class Payload:
    """One thing to deliver.

    Attributes:
        kind: What it is: a DICOM object (``sr``, ``gsps``, ``sc``, ``seg``: a Part 10 file),
            ``hl7`` (an ER7 message), ``fhir`` (a Bundle) or a JSON signal (``webhook``,
            ``worklist``). A string is read as a ``DeliveryKind``.
        path: The DICOM Part 10 file (DICOM kinds only).
        body: The content: ``str`` (HL7 ER7, JSON text), ``bytes`` (a Part 10 file, encoded
            text) or ``dict`` (JSON / FHIR resource).
        content_type: MIME type; the kind's default when empty.
    """

    kind: DeliveryKind
    path: Path | None = None
    body: str | bytes | dict[str, Any] | None = None
    content_type: str = field(default="")

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "kind", DeliveryKind(self.kind))
        except ValueError:
            known = sorted(k.value for k in DeliveryKind)
            raise ValueError(f"payload kind {self.kind!r} is not one of {known}") from None
        if (self.path is None) == (self.body is None):
            raise ValueError(f"{self.kind} payload needs exactly one of path or body")
        if self.path is not None:
            if not self.kind.is_dicom:
                raise ValueError(f"{self.kind} payload takes a body, not a path")
            object.__setattr__(self, "path", Path(self.path))
        if self.kind.is_dicom and isinstance(self.body, str | dict):
            raise ValueError(f"{self.kind} payload body must be the bytes of a Part 10 file")
        if not self.content_type:
            object.__setattr__(self, "content_type", default_content_type(self.kind))

    def data(self) -> bytes:
        """The content as bytes: the file read from disk, text as UTF-8, a dict as JSON."""
        if self.path is not None:
            return self.path.read_bytes()
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode("utf-8")
        return json.dumps(self.body, separators=(",", ":"), sort_keys=True).encode("utf-8")


@runtime_checkable
class Destination(Protocol):
    """Somewhere results go: a PACS, a DICOMweb server, a FHIR server, a webhook, a folder."""

    name: str

    def deliver(self, payload: Payload) -> None:
        """Deliver ``payload`` or raise ``DeliveryError``."""
        ...


@runtime_checkable
class Probeable(Protocol):
    """A destination that can say whether it answers, without delivering anything.

    Every built-in destination is one: DICOM C-ECHO, HTTP ``OPTIONS``, an MLLP TCP connect, a
    writable folder.
    """

    name: str

    def probe(self) -> None:
        """Return when the peer answers; raise ``DeliveryError`` saying why it does not."""
        ...


def probe_timeout_s(timeout_s: float) -> float:
    """A probe's timeout (seconds): the destination's own, at most 5 s (probes are frequent)."""
    return min(timeout_s, PROBE_TIMEOUT_CAP_S)


PROBE_TIMEOUT_CAP_S = 5.0
"""Longest wait of one health probe, seconds."""


class DeliveryError(Exception):
    """A payload did not reach its destination.

    Args:
        retryable: True when the same payload may succeed later unchanged (connection refused,
            timeout, HTTP 408/425/429/5xx, DIMSE out of resources ``0xA7xx``/``0x0213``, a
            transiently rejected association, no MLLP ACK or an ``AR``): the outbox retries it
            within its retry window. False when retrying cannot help (HTTP 3xx/4xx otherwise,
            DIMSE failure statuses refusing the object, an association rejected permanently,
            an ``AE`` ACK, unreadable content): the outbox moves it to the dead letters at once.
        message: One line saying what went wrong, with the destination and the status the peer
            answered; never patient names or IDs.
    """

    def __init__(self, retryable: bool, message: str) -> None:
        super().__init__(message)
        self.retryable = bool(retryable)
        self.message = message

    def __str__(self) -> str:
        kind = "retryable" if self.retryable else "permanent"
        return f"{self.message} ({kind})"


class Urgency(Protocol):
    """Stat priority across the service's threads (the service's ``StatGate``)."""

    def stat_stage(self) -> AbstractContextManager[None]:
        """Mark stat work under way for the duration of the ``with`` block."""
        ...

    def step_aside(self) -> float:
        """Wait (bounded) while stat work is under way; seconds waited."""
        ...


def close_destination(destination: Destination) -> None:
    """Let go of what a destination keeps open (kept DICOM associations); errors are logged."""
    close = getattr(destination, "close", None)
    if close is None:
        return
    try:
        close()
    except Exception:  # noqa: BLE001 - shutting down: nothing to retry, nothing lost (the outbox is durable)
        logging.getLogger(__name__).warning("closing destination %s failed", destination.name)


def storage_status_retryable(status: int) -> bool:
    """Whether a failed DICOM storage status (DIMSE C-STORE or STOW-RS FailureReason) is transient.

    ``0xA7xx`` (out of resources) and ``0x0213`` (resource limitation) clear when the peer frees
    space; every other failure (``0xA9xx`` dataset does not match SOP class, ``0xCxxx`` cannot
    understand, ``0x0122`` SOP class not supported, ``0x0124`` not authorised ...) will be
    answered the same way again.
    """
    return 0xA700 <= status <= 0xA7FF or status == 0x0213


def storage_status_ok(status: int) -> bool:
    """Success (``0x0000``) or a warning (``0x0001``, ``0xBxxx``): the instance was stored."""
    return status in (0x0000, 0x0001) or 0xB000 <= status <= 0xBFFF
