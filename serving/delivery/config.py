"""Destination configuration: one pydantic model per destination type, told apart by ``type``,
and the factory that builds a ``Destination`` from one.

Examples (``statlane.yaml``, under ``destinations``)::

    pacs: {type: dicom, ae_title: PACS, host: 10.0.0.5, port: 104}
    dicomweb: {type: stow, url: "https://pacs/dicom-web"}
    ehr: {type: fhir, url: "https://fhir.example.org/r4"}
    worklist-hook: {type: webhook, url: "http://worklist.example.org/ai"}
    ris: {type: mllp, host: 10.0.0.9, port: 2576}
    local-folder: {type: folder, path: ./var/results}

Optional keys: ``name``, ``timeout_s`` (seconds; not for folders), ``headers`` (HTTP types),
``calling_ae`` and ``keep_open_s`` (seconds; dicom). Unknown keys are rejected. Values are
checked here as the destinations check them, so ``statlane config check`` names the line.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

from serving.delivery.base import Destination

Port = Annotated[int, Field(gt=0, lt=65536)]
TimeoutS = Annotated[float, Field(gt=0)]
AeTitle = Annotated[str, Field(min_length=1, max_length=16, pattern=r"^[^\\]*$")]


class _DestinationConfig(BaseModel):
    """Keys every destination takes.

    ``name``: the destination's name in error messages and logs; the configuration key when
    absent (``null``), the type's default name (``dicom:AE@host:port`` ...) when empty.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = None


class DicomDestinationConfig(_DestinationConfig):
    """DICOM C-STORE to a PACS (``type: dicom``); see ``DicomStoreDestination``."""

    type: Literal["dicom"]
    ae_title: AeTitle
    host: str
    port: Port
    calling_ae: AeTitle = "STATLANE"
    timeout_s: TimeoutS = 30.0
    keep_open_s: float = Field(default=5.0, ge=0)


class _HttpDestinationConfig(_DestinationConfig):
    """An HTTP destination: its URL, timeout (seconds) and extra headers (never logged)."""

    url: str
    timeout_s: TimeoutS = 30.0
    headers: dict[str, str] | None = None

    @field_validator("url")
    @classmethod
    def _absolute_http(cls, url: str) -> str:
        # Imported here: urllib's HTTP stack is loaded only when an HTTP destination is configured.
        from serving.delivery.http import check_url

        return check_url(url)


class StowDestinationConfig(_HttpDestinationConfig):
    """DICOMweb STOW-RS (``type: stow``); ``url`` is the service root."""

    type: Literal["stow"]
    timeout_s: TimeoutS = 60.0


class FhirDestinationConfig(_HttpDestinationConfig):
    """A FHIR server (``type: fhir``); ``url`` is its base, transaction Bundles are POSTed."""

    type: Literal["fhir"]


class WebhookDestinationConfig(_HttpDestinationConfig):
    """A webhook taking JSON signals (``type: webhook``)."""

    type: Literal["webhook"]


class MllpDestinationConfig(_DestinationConfig):
    """HL7 v2 over MLLP to a RIS or interface engine (``type: mllp``)."""

    type: Literal["mllp"]
    host: str
    port: Port
    timeout_s: TimeoutS = 10.0


class FolderDestinationConfig(_DestinationConfig):
    """A local folder (``type: folder``), created if missing."""

    type: Literal["folder"]
    path: Path


DestinationConfig = Annotated[
    DicomDestinationConfig
    | StowDestinationConfig
    | FhirDestinationConfig
    | WebhookDestinationConfig
    | MllpDestinationConfig
    | FolderDestinationConfig,
    Field(discriminator="type"),
]
"""One destination's configuration; ``type`` says which model applies."""

DestinationType = Literal["dicom", "stow", "fhir", "webhook", "mllp", "folder"]
DESTINATION_TYPES: tuple[DestinationType, ...] = get_args(DestinationType)
DICOM_OBJECT_TYPES: frozenset[DestinationType] = frozenset({"dicom", "stow", "folder"})
"""Destination types that take the DICOM result objects (SR, GSPS, SC, SEG)."""


def build_destination(config: DestinationConfig, name: str = "") -> Destination:
    """The destination ``config`` describes.

    ``name`` is used when the configuration gives none (``name`` absent): the configuration
    key. Concrete modules are imported here, so a configuration without a DICOM destination
    never pays for importing pynetdicom. Raises ``ValueError`` for a value the destination
    refuses.
    """
    named = name if config.name is None else config.name
    if isinstance(config, DicomDestinationConfig):
        from serving.delivery.dicom import DicomStoreDestination

        return DicomStoreDestination(
            config.ae_title,
            config.host,
            config.port,
            calling_ae=config.calling_ae,
            timeout_s=config.timeout_s,
            name=named,
            keep_open_s=config.keep_open_s,
        )
    if isinstance(config, StowDestinationConfig):
        from serving.delivery.stow import StowRsDestination

        return StowRsDestination(
            config.url, timeout_s=config.timeout_s, headers=config.headers, name=named
        )
    if isinstance(config, FhirDestinationConfig | WebhookDestinationConfig):
        from serving.delivery.http import FHIR_JSON, HttpJsonDestination

        return HttpJsonDestination(
            config.url,
            content_type=FHIR_JSON if isinstance(config, FhirDestinationConfig) else None,
            timeout_s=config.timeout_s,
            headers=config.headers,
            name=named,
        )
    if isinstance(config, MllpDestinationConfig):
        from serving.delivery.mllp import MllpDestination

        return MllpDestination(config.host, config.port, timeout_s=config.timeout_s, name=named)
    from serving.delivery.folder import FolderDestination

    return FolderDestination(config.path, name=named)


_ADAPTER: TypeAdapter[DestinationConfig] = TypeAdapter(DestinationConfig)


def destination_config(raw: Mapping[str, Any]) -> DestinationConfig:
    """One destination's configuration from a mapping, e.g. ``{"type": "folder", "path": "x"}``.

    Raises pydantic's ``ValidationError`` (a ``ValueError``) naming each wrong key.
    """
    return _ADAPTER.validate_python(raw)
