"""``statlane.yaml``: the service configuration (pydantic, unknown keys rejected).

Every field has an embedded default, so ``statlane serve`` with no file runs the whole service:
SQLite job store and spool under ``./var``, DICOM on 11112, REST (and STOW-RS) on 8080, HL7 MLLP
on 2575, ONNX Runtime with the bundled reference models, results in a local folder.
Errors name their location as ``file:line: key.path: message``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails

from router.messages.identifiers import IdentifierSystems
from router.vocabulary import PriorityClass
from serving.delivery.config import (
    DESTINATION_TYPES,
    DestinationConfig,
    FolderDestinationConfig,
)
from serving.gateway.hl7_orders import OrderMapping, parse_field_path


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names file, line and key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DicomConfig(_Strict):
    """DIMSE C-STORE / C-ECHO SCP.

    ``allowed_callers`` maps calling AE titles to allowed IP addresses (null: any address);
    null for the whole map accepts any caller (the demo default; set it in production).

    ``fast_path`` serves C-STOREs with the gateway's own reactors, which override pynetdicom
    internals (``serving/gateway/reactor.py``); it falls back to pynetdicom's standard server,
    with the same statuses and spool, when off, when the installed pynetdicom is not a tested
    release, or when the environment sets ``STATLANE_DICOM_FAST_PATH=0``.

    Bounds against hostile or broken peers: a connection must be associated within
    ``association_timeout_s`` (its first PDU must be an A-ASSOCIATE-RQ of at most 64 KiB, else
    it is closed at once); one source address may hold ``max_connections_per_address``
    connections; ``maximum_associations`` counts only callers that passed the AE title check;
    an association silent for ``idle_timeout_s`` is ended; ``maximum_pdu_bytes`` is the PDU
    length advertised (and, on the fast path, enforced).
    """

    ae_title: str = Field(default="STATLANE", min_length=1, max_length=16)
    host: str = "0.0.0.0"
    port: int = Field(default=11112, ge=0, le=65535)
    allowed_callers: dict[str, list[str] | None] | None = None
    fast_path: bool = True
    maximum_associations: int = Field(default=16, ge=1, le=1024)
    max_connections_per_address: int = Field(default=8, ge=1, le=1024)
    association_timeout_s: float = Field(default=5.0, gt=0, le=120)
    idle_timeout_s: float = Field(default=60.0, gt=0, le=3600)
    maximum_pdu_bytes: int = Field(default=4 * 1024 * 1024, ge=4096, le=64 * 1024 * 1024)


class HttpConfig(_Strict):
    """REST API (health, worklist, metrics, studies) and DICOMweb STOW-RS.

    ``header_timeout_s``: seconds a request has for its request line and headers (from accept,
    or from the first byte of a later request on a kept-alive connection); ``idle_timeout_s``:
    seconds a kept-alive connection may wait for its next request, and the longest a body read
    or an answer write may stall.
    """

    host: str = "0.0.0.0"
    port: int = Field(default=8080, ge=0, le=65535)
    header_timeout_s: float = Field(default=10.0, gt=0, le=300)
    idle_timeout_s: float = Field(default=60.0, gt=0, le=3600)


def _field_path(text: str) -> str:
    """A field path (``OBR-18``, ``ORC-7.6``) that names a field of HL7 v2.5.1."""
    return str(parse_field_path(text))  # FieldPathError is a ValueError: pydantic locates it


FieldPathText = Annotated[str, AfterValidator(_field_path)]


class OrderMappingConfig(_Strict):
    """Where an order's accession, priority and procedure code are read: ordered field paths
    (``SEG-field`` or ``SEG-field.component``), the first non-empty one wins. The defaults are
    IHE Scheduled Workflow's; a message without an accession is refused with a NAK naming the
    paths."""

    accession: list[FieldPathText] = Field(
        default_factory=lambda: ["IPC-1", "OBR-18"], min_length=1
    )
    priority: list[FieldPathText] = Field(
        default_factory=lambda: ["TQ1-9", "ORC-7.6", "OBR-27.6", "OBR-5"], min_length=1
    )
    procedure_code: list[FieldPathText] = Field(default_factory=lambda: ["OBR-4"], min_length=1)

    def mapping(self) -> OrderMapping:
        """The gateway's order mapping."""
        return OrderMapping.from_texts(self.accession, self.priority, self.procedure_code)


class Hl7Config(_Strict):
    """HL7 v2 orders over MLLP.

    ``idle_timeout_s``: seconds a connection may stay silent between messages;
    ``frame_timeout_s``: seconds a message may take from its first byte to its end block (and a
    new connection to its first message); bytes outside a frame count as unfinished.
    """

    enabled: bool = True
    host: str = "0.0.0.0"
    port: int = Field(default=2575, ge=0, le=65535)
    idle_timeout_s: float = Field(default=300.0, gt=0, le=86400)
    frame_timeout_s: float = Field(default=10.0, gt=0, le=600)
    order_mapping: OrderMappingConfig = OrderMappingConfig()


_SYSTEM = r"^(urn:[A-Za-z0-9][A-Za-z0-9-]*:|https?://)\S+$"


class IdentifiersConfig(_Strict):
    """FHIR ``Identifier.system`` of the identifiers the result messages carry, so a FHIR
    server can match them: absolute URIs (``urn:oid:...``, ``http(s)://...``).

    Unset systems are derived, never empty: ``urn:oid:<universal ID>`` when the assigning
    authority (the order's PID-3.4 or EI-2..4) names an ISO OID, else
    ``urn:statlane:<site>:mrn:<issuer>`` (issuer: PID-3.4's namespace, or the study's DICOM
    IssuerOfPatientID), ``urn:statlane:<site>:accession``,
    ``urn:statlane:<site>:placer:<namespace>`` / ``...:filler:<namespace>``.
    """

    site: str = Field(default="local", pattern=r"^[A-Za-z0-9][A-Za-z0-9.-]*$")
    mrn_system: str | None = Field(default=None, pattern=_SYSTEM)
    accession_system: str | None = Field(default=None, pattern=_SYSTEM)
    order_number_systems: dict[str, Annotated[str, Field(pattern=_SYSTEM)]] = Field(
        default_factory=dict,
        description="EI namespace of placer/filler order numbers (ORC-2.2/ORC-3.2) → system",
    )

    def systems(self) -> IdentifierSystems:
        """The message builders' identifier systems."""
        return IdentifierSystems(
            site=self.site,
            mrn=self.mrn_system or "",
            accession=self.accession_system or "",
            order_numbers=dict(self.order_number_systems),
        )


class AssemblyConfig(_Strict):
    """When a study is complete; seconds."""

    quiet_period_s: dict[PriorityClass, float] = Field(
        default_factory=lambda: {
            PriorityClass.STAT: 1.0,
            PriorityClass.URGENT: 3.0,
            PriorityClass.ROUTINE: 10.0,
        }
    )
    idle_timeout_s: float = Field(default=120.0, gt=0)
    late_instances: Literal["rerun", "ignore"] = "rerun"


class RuntimeConfig(_Strict):
    """Inference runtime."""

    backend: Literal["onnxruntime", "torchscript", "triton"] = "onnxruntime"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    triton_url: str | None = None
    policy: Literal["fifo", "strict-priority", "edf"] = "edf"
    max_blocking_s: float | None = Field(
        default=1.0,
        gt=0,
        description=(
            "edf: longest a non-stat batch (or patch batch of a chunked model) may run, "
            "seconds, from the latency profile; it bounds how long a stat waits for the device. "
            "At least one patch always runs. null: bounded by deadlines only"
        ),
    )
    stat_lanes: int = Field(
        default=1,
        ge=0,
        le=8,
        description=(
            "edf: stat batches that may start next to a busy device's batch (a second model "
            "instance), so a stat waits for no batch; 0: one batch per device"
        ),
    )
    preprocess_workers: int = Field(default=2, ge=1, le=64)
    max_pending: int = Field(default=256, ge=1)
    stat_gate_max_wait_s: float = Field(
        default=1.0,
        ge=0,
        description=(
            "while a stat study is routed, preprocessed, run, built or delivered, background "
            "work (routing, preprocessing, result objects, deliveries, and CPU inference "
            "batches) waits between its steps, at most this long per step, seconds; 0: off"
        ),
    )


class SpoolConfig(_Strict):
    """The durable spool of received instances (``var_dir/spool``): its disk reserve and
    retention.

    ``min_free_bytes``: free space (bytes) that must remain after a write; below it an instance
    is refused (C-STORE ``0xA700``, STOW-RS failure reason ``0xA700``).

    ``retention_grace_s``: an instance file is removed once every task of its study has ended
    (done, failed or cancelled), every outbox item of those tasks is delivered or dead, and
    this many seconds have passed since the last of those (and since the study's last
    instance); 0 removes at the next look (a late instance arriving in that same moment may
    find its study's files gone), null keeps every instance forever. A quarantined study
    is kept (a person decides about it). The grace period is also
    the window for late instances: one arriving within it re-runs the study on all of its
    images; one arriving after its study was pruned re-runs it on the images still on disk,
    and the audit trail says so (``spool-pruned-rerun``). ``prune_interval_s``: how often the
    service looks for prunable studies, seconds.
    """

    min_free_bytes: int = Field(default=512 * 1024 * 1024, ge=0)
    retention_grace_s: float | None = Field(default=3600.0, ge=0)
    prune_interval_s: float = Field(default=30.0, gt=0)


class MemoryConfig(_Strict):
    """Bounds on memory.

    ``inflight_budget_bytes``: bytes of received instance data the gateways may hold at once
    before it is durably spooled (a C-STORE data set, a STOW-RS request body); over it a
    C-STORE is answered ``0xA700`` (out of resources) and a STOW-RS request HTTP 503 with
    ``Retry-After: retry_after_s``. ``trim_allocator``: return freed heap to the operating
    system (glibc ``malloc_trim``) when the service goes idle, at most every
    ``trim_interval_s`` seconds; Linux with glibc only, false switches it off.
    """

    inflight_budget_bytes: int = Field(default=2 * 1024**3, ge=1024 * 1024)
    retry_after_s: int = Field(default=5, ge=1, le=3600)
    trim_allocator: bool = True
    trim_interval_s: float = Field(default=30.0, gt=0)


class OutboxConfig(_Strict):
    """Delivery retries and destination health (seconds).

    A transient failure is retried with exponential backoff (``base_delay_s`` doubling up to
    ``max_delay_s``) until the item is ``retry_window_s`` old; only a permanent failure or an
    expired window makes a dead letter. While a destination has items in backoff it is probed
    every ``probe_interval_s`` and re-driven as soon as it answers. ``/health`` says
    ``degraded`` when a destination is down or an item has waited over ``backlog_alert_s``.
    ``max_attempts`` is deprecated: when given, an item is also dead after that many failed
    attempts (the behaviour before the retry window; a 4-minute outage then still makes dead
    letters), so leave it out.
    """

    max_attempts: int | None = Field(default=None, ge=1)
    base_delay_s: float = Field(default=2.0, gt=0)
    max_delay_s: float = Field(default=300.0, gt=0)
    retry_window_s: float = Field(default=86400.0, gt=0)
    probe_interval_s: float = Field(default=5.0, gt=0)
    backlog_alert_s: float = Field(default=300.0, gt=0)
    workers: int = Field(default=2, ge=1, le=32)


class WorklistConfig(_Strict):
    """Worklist ranking (seconds) and rank-change signals.

    ``mode``: ``triage`` publishes the AI order; ``shadow`` computes both orders, publishes the
    native one and sends no signal. ``signals``: destination names (webhook, HL7, FHIR) that get
    a message whenever a study's published rank changes.
    """

    max_wait_s: float = Field(default=3600.0, gt=0)
    ai_late_s: float = Field(default=300.0, gt=0)
    mode: Literal["triage", "shadow"] = "triage"
    signals: list[str] = Field(default_factory=list)


def _default_destinations() -> dict[str, DestinationConfig]:
    """A folder under ``var``: results land somewhere with no configuration at all."""
    return {"local-folder": FolderDestinationConfig(type="folder", path=Path("var/results"))}


class ServiceConfig(_Strict):
    """The whole service."""

    var_dir: Path = Path("var")
    database_url: str | None = None
    rules: Path | None = None
    models: Path | None = None
    dicom: DicomConfig = DicomConfig()
    http: HttpConfig = HttpConfig()
    hl7: Hl7Config = Hl7Config()
    assembly: AssemblyConfig = AssemblyConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    deadlines_s: dict[PriorityClass, float] = Field(
        default_factory=lambda: {
            PriorityClass.STAT: 60.0,
            PriorityClass.URGENT: 300.0,
            PriorityClass.ROUTINE: 3600.0,
        }
    )
    destinations: dict[str, DestinationConfig] = Field(default_factory=_default_destinations)
    outbox: OutboxConfig = OutboxConfig()
    spool: SpoolConfig = SpoolConfig()
    memory: MemoryConfig = MemoryConfig()
    worklist: WorklistConfig = WorklistConfig()
    identifiers: IdentifiersConfig = IdentifiersConfig()

    @property
    def db_url(self) -> str:
        """The job store URL (SQLite under ``var_dir`` unless configured)."""
        return self.database_url or f"sqlite:///{self.var_dir / 'statlane.db'}"


def load_config(path: Path | None) -> ServiceConfig:
    """Read and validate ``path`` (None: the embedded defaults).

    Raises:
        ConfigError: Unreadable file, invalid YAML, unknown key or bad value — with location.
    """
    if path is None:
        return ServiceConfig()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{path}: cannot read ({error.strerror})") from error
    try:
        raw = yaml.safe_load(text)
        root = yaml.compose(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: invalid YAML ({getattr(error, 'problem', error)})") from error
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}:1: the top level must be a mapping")
    try:
        return ServiceConfig.model_validate(raw)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            loc = _config_location(item)
            line = _line_of(root, loc)
            key = ".".join(str(p) for p in loc) or "(top)"
            problems.append(f"{path}:{line}: {key}: {_message(item)}")
        raise ConfigError("\n".join(problems)) from error


def _config_location(item: ErrorDetails) -> tuple[Any, ...]:
    """Where in the file an error is: pydantic's location without the destination union's tag.

    Inside a destination pydantic names the union member (``destinations.pacs.dicom.port``); the
    file has no such key (``destinations.pacs.port``). A wrong ``type`` is located at ``type``.
    """
    loc = tuple(item["loc"])
    if len(loc) > 2 and loc[0] == "destinations" and loc[2] in DESTINATION_TYPES:
        loc = loc[:2] + loc[3:]
    if item["type"] == "union_tag_invalid":
        loc += ("type",)
    return loc


def _message(item: ErrorDetails) -> str:
    """The error's text, in the file's words for unknown keys and destination types."""
    kind = item["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "union_tag_invalid":
        tag = item.get("ctx", {}).get("tag")
        return f"unknown destination type {tag!r}; expected one of {', '.join(DESTINATION_TYPES)}"
    if kind == "union_tag_not_found":
        return f"no 'type'; expected one of {', '.join(DESTINATION_TYPES)}"
    return item["msg"]


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int:
    """1-based line of the deepest YAML node along ``loc`` (1 when unknown)."""
    line = 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if str(key.value) == str(part):
                    line = key.start_mark.line + 1
                    node = value
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return line
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line
