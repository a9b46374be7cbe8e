"""What a destination receives (``Payload``), what it promises (``Destination``) and the factory.

A destination delivers one payload synchronously and either returns (the peer took it) or
raises ``DeliveryError`` saying whether a retry may help. Retries, backoff and dead letters
belong to the outbox, not to destinations.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

PayloadKind = Literal["dicom", "hl7", "fhir", "json"]

DEFAULT_CONTENT_TYPES: dict[str, str] = {
    "dicom": "application/dicom",
    "hl7": "x-application/hl7-v2+er7",
    "fhir": "application/fhir+json",
    "json": "application/json",
}


@dataclass(frozen=True)
class Payload:
    """One thing to deliver.

    Attributes:
        kind: ``dicom`` (a Part 10 file), ``hl7`` (an ER7 message), ``fhir`` (a Bundle) or
            ``json`` (a webhook document).
        path: The DICOM Part 10 file (``dicom`` only).
        body: The content: ``str`` (HL7 ER7, JSON text), ``bytes`` (a Part 10 file, encoded
            text) or ``dict`` (JSON / FHIR resource).
        content_type: MIME type; the kind's default when empty.
    """

    kind: PayloadKind
    path: Path | None = None
    body: str | bytes | dict[str, Any] | None = None
    content_type: str = field(default="")

    def __post_init__(self) -> None:
        if self.kind not in DEFAULT_CONTENT_TYPES:
            raise ValueError(
                f"payload kind {self.kind!r} is not one of {sorted(DEFAULT_CONTENT_TYPES)}"
            )
        if (self.path is None) == (self.body is None):
            raise ValueError(f"{self.kind} payload needs exactly one of path or body")
        if self.path is not None:
            if self.kind != "dicom":
                raise ValueError(f"{self.kind} payload takes a body, not a path")
            object.__setattr__(self, "path", Path(self.path))
        if self.kind == "dicom" and isinstance(self.body, str | dict):
            raise ValueError("dicom payload body must be the bytes of a Part 10 file")
        if not self.content_type:
            object.__setattr__(self, "content_type", DEFAULT_CONTENT_TYPES[self.kind])

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


def close_destination(destination: Destination) -> None:
    """Let go of what a destination keeps open (kept DICOM associations); errors are logged."""
    close = getattr(destination, "close", None)
    if close is None:
        return
    try:
        close()
    except Exception:  # shutting down: nothing to retry, nothing lost (the outbox is durable)
        logging.getLogger(__name__).warning("closing destination %s failed", destination.name)


def build_destination(config: Mapping[str, Any]) -> Destination:
    """A destination from one configuration mapping.

    Examples: ``{"type": "dicom", "ae_title": "PACS", "host": "10.0.0.5", "port": 104}``,
    ``{"type": "stow", "url": "https://pacs/dicom-web"}``, ``{"type": "fhir", "url": ...}``,
    ``{"type": "webhook", "url": ...}``, ``{"type": "mllp", "host": ..., "port": ...}``,
    ``{"type": "folder", "path": "./var/results"}``. Optional keys: ``name``, ``timeout_s``,
    ``headers`` (HTTP types), ``calling_ae`` and ``keep_open_s`` (dicom). Raises
    ``ValueError`` naming the unknown type, a missing key or an unexpected one.
    """
    kind = config.get("type")
    builder = _BUILDERS.get(str(kind))
    if builder is None:
        raise ValueError(f"unknown destination type {kind!r}; expected one of {sorted(_BUILDERS)}")
    required, optional, build = builder
    missing = [key for key in required if key not in config]
    if missing:
        raise ValueError(f"{kind} destination is missing {', '.join(missing)}")
    unexpected = sorted(set(config) - {"type", *required, *optional})
    if unexpected:
        raise ValueError(f"{kind} destination does not take {', '.join(unexpected)}")
    options = {key: config[key] for key in (*required, *optional) if key in config}
    return build(options)


# Concrete modules are imported inside the builders: they import Payload from here, and a
# configuration without a DICOM destination never pays for importing pynetdicom. Each builder
# gets the checked keys only, renamed where the configuration says "url"/"path".
def _dicom(options: dict[str, Any]) -> Destination:
    from router.delivery.dicom import DicomStoreDestination

    return DicomStoreDestination(**options)


def _stow(options: dict[str, Any]) -> Destination:
    from router.delivery.stow import StowRsDestination

    return StowRsDestination(options.pop("url"), **options)


def _fhir(options: dict[str, Any]) -> Destination:
    from router.delivery.http import FHIR_JSON, HttpJsonDestination

    return HttpJsonDestination(options.pop("url"), content_type=FHIR_JSON, **options)


def _webhook(options: dict[str, Any]) -> Destination:
    from router.delivery.http import HttpJsonDestination

    return HttpJsonDestination(options.pop("url"), **options)


def _mllp(options: dict[str, Any]) -> Destination:
    from router.delivery.mllp import MllpDestination

    return MllpDestination(**options)


def _folder(options: dict[str, Any]) -> Destination:
    from router.delivery.folder import FolderDestination

    return FolderDestination(Path(options.pop("path")), **options)


_Builder = Callable[[dict[str, Any]], Destination]
_HTTP_OPTIONAL = ("name", "timeout_s", "headers")
# type -> (required keys, optional keys, builder)
_BUILDERS: dict[str, tuple[tuple[str, ...], tuple[str, ...], _Builder]] = {
    "dicom": (
        ("ae_title", "host", "port"),
        ("name", "timeout_s", "calling_ae", "keep_open_s"),
        _dicom,
    ),
    "stow": (("url",), _HTTP_OPTIONAL, _stow),
    "fhir": (("url",), _HTTP_OPTIONAL, _fhir),
    "webhook": (("url",), _HTTP_OPTIONAL, _webhook),
    "mllp": (("host", "port"), ("name", "timeout_s"), _mllp),
    "folder": (("path",), ("name",), _folder),
}
