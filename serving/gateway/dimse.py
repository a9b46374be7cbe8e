"""The DICOM C-STORE / C-ECHO SCP: modalities and PACS push instances into the spool.

An instance is acknowledged (status 0x0000) only after :meth:`Spool.store` returned, i.e. after
the file and its directory entry are fsynced. Every failure becomes a DIMSE status, never a
crash of the association:

====================  =======  ===============================================
condition             status   meaning (PS3.4 Annex B)
====================  =======  ===============================================
stored                0x0000   success
spool out of space    0xA700   refused: out of resources
unreadable/invalid    0xC000   error: cannot understand (ErrorComment says why)
unexpected exception  0xC211   error: unable to process (details in our log)
====================  =======  ===============================================

Callers are checked before negotiation: an unknown calling AE title, or a known one from an
address it is not allowed to use, gets A-ASSOCIATE-RJ (permanent, "calling AE title not
recognised"). Only callers that passed that check count against ``maximum_associations``;
connections are admitted through :mod:`serving.gateway.admission` (first PDU header checked
before pynetdicom reads it, an association deadline, a per-address limit) on both servers.
Logs name AE titles, addresses and counts; SOP Instance UIDs only at debug level.

Two servers give the same statuses and spool the same bytes: the fast path
(:mod:`serving.gateway.reactor` and :mod:`serving.gateway.fast_store`, which override pynetdicom
internals) and pynetdicom's standard server (``AE.start_server`` with event handlers). The fast
path is used while ``fast_path`` is on, the installed pynetdicom is one it was tested with
(:data:`~serving.gateway.reactor.TESTED_PYNETDICOM`), and the environment does not switch it
off (:data:`FAST_PATH_ENV` set to ``0``, ``false``, ``no`` or ``off``).
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from types import TracebackType
from typing import Any, cast

import pynetdicom
from pydicom.dataset import Dataset
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from serving.gateway.admission import (
    BoundedAssociationServer,
    ConnectionLimits,
    GatedRequestHandler,
)
from serving.gateway.budget import MemoryBudget, OverBudget
from serving.gateway.errors import InvalidInstance, OutOfResources, UnknownCaller
from serving.gateway.fast_store import (
    SOP_CLASS_MISMATCH,
    STATUS_SOP_CLASS_NOT_SUPPORTED,
    StoreRequest,
)
from serving.gateway.part10 import part10_header
from serving.gateway.reactor import (
    MAX_PDU_BYTES,
    TESTED_PYNETDICOM,
    PromptRequestHandler,
    pynetdicom_is_tested,
)
from serving.gateway.spool import InstanceSource, Spool, StoredInstance

__all__ = [
    "DEFAULT_MAXIMUM_PDU_BYTES",
    "FAST_PATH_ENV",
    "STATUS_CANNOT_UNDERSTAND",
    "STATUS_OUT_OF_RESOURCES",
    "STATUS_SUCCESS",
    "STATUS_UNABLE_TO_PROCESS",
    "TRANSFER_SYNTAXES",
    "AssociationSummary",
    "DicomGateway",
    "fast_path_usable",
]

LOGGER = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_UNABLE_TO_PROCESS = 0xC211
_ERROR_COMMENT_MAX = 64  # (0000,0902) Error Comment is LO

#: Largest P-DATA-TF PDU we advertise (Maximum Length Received), in bytes. The fast path
#: handles a PDU's PDVs without pynetdicom's per-PDU machinery, so a bound this large keeps a
#: 512x512 slice in one PDU (the ingest benchmark's reason for advertising no limit before)
#: while a peer can no longer make us hold more than this per PDU.
DEFAULT_MAXIMUM_PDU_BYTES = 4 * 1024 * 1024
#: pynetdicom counts every open connection against its own association limit, before the
#: caller is known; the gateway counts accepted callers itself and lifts pynetdicom's.
_PYNETDICOM_ASSOCIATIONS = 100_000
#: A-ASSOCIATE-RJ (transient, service provider (presentation), local limit exceeded), PS3.8 9.3.4.
_REJECT_LOCAL_LIMIT = (0x02, 0x03, 0x02)

#: Environment variable that switches the fast path off (``0``, ``false``, ``no``, ``off``)
#: whatever the configuration says: CI runs the gateway tests once more with it set to ``0``.
FAST_PATH_ENV = "STATLANE_DICOM_FAST_PATH"
_OFF = frozenset({"0", "false", "no", "off"})

#: Transfer syntaxes accepted for every storage SOP class, most preferred first: every one that
#: pydicom (with pylibjpeg, pyjpegls and openjpeg, all installed with statlane) can decode, so an
#: old modality's retired big-endian or JPEG Extended files are taken as sent, never converted.
TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    HTJ2K,
    RLELossless,
]


@dataclass(frozen=True)
class AssociationSummary:
    """What one association delivered, reported once when it is released or aborted.

    Attributes:
        instances: Instances durably stored, in arrival order (duplicates included).
        aborted: The association ended with an A-ABORT instead of a release.
        failed: C-STORE requests answered with a failure status.
    """

    association_id: str
    calling_ae: str
    address: str
    instances: list[StoredInstance]
    aborted: bool
    failed: int = 0


@dataclass
class _OpenAssociation:
    source: InstanceSource
    instances: list[StoredInstance] = field(default_factory=list)
    failed: int = 0


def _status(code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:_ERROR_COMMENT_MAX]
    return status


def _ignore(_: Any) -> None:
    return None


def fast_path_usable(requested: bool) -> bool:
    """Whether a gateway asked for the fast path (``requested``) gets it.

    No if the request or :data:`FAST_PATH_ENV` switches it off; no, with a warning naming the
    version, if the installed pynetdicom is outside
    :data:`~serving.gateway.reactor.TESTED_PYNETDICOM`.
    """
    if not requested or os.environ.get(FAST_PATH_ENV, "").strip().lower() in _OFF:
        return False
    if not pynetdicom_is_tested():
        LOGGER.warning(
            "pynetdicom %s is not a version the DICOM fast path was tested with (%s): "
            "running pynetdicom's standard server",
            pynetdicom.__version__,
            TESTED_PYNETDICOM,
        )
        return False
    return True


class DicomGateway:
    """A non-blocking C-STORE / C-ECHO SCP that writes every instance to the spool.

    Args:
        spool: Where instances are stored durably before they are acknowledged.
        ae_title: Our AE title (called AE title is not enforced: routers often rewrite it).
        port: TCP port; 0 picks a free one (read it back from :attr:`port` after start).
        host: Interface to listen on.
        allowed_callers: Calling AE title -> allowed peer IP addresses (None: any address).
            None for the whole map accepts every caller.
        on_stored: Called in the association's thread after each durable store; it should be
            quick (enqueue). Its exceptions are logged, never returned as a failure status.
        on_released: Called once per accepted association when it is released or aborted.
        maximum_associations: Concurrent associations of accepted callers before new ones are
            rejected (transient, local limit exceeded); connections not yet associated, and
            callers refused by their AE title, do not count.
        association_timeout_s: Seconds from connect to an established association; a
            connection not associated by then is closed.
        idle_timeout_s: Seconds an association may stay silent (pynetdicom's network timeout),
            and the longest a read waits in the middle of a PDU.
        max_connections_per_address: Open connections one source address may hold; more are
            closed at accept.
        maximum_pdu_bytes: Maximum PDU length we advertise; the fast path aborts an
            association whose peer sends a larger PDU.
        fast_path: Serve with the fast path where it is usable (see :func:`fast_path_usable`,
            decided at :meth:`start`); False always runs pynetdicom's standard server.
        budget: The in-flight memory budget shared with STOW-RS: a data set is held against
            it until it is spooled; over it the C-STORE is answered ``0xA700``.
    """

    def __init__(
        self,
        spool: Spool,
        *,
        ae_title: str = "STATLANE",
        port: int = 11112,
        host: str = "0.0.0.0",
        allowed_callers: Mapping[str, list[str] | None] | None = None,
        on_stored: Callable[[StoredInstance], None] = _ignore,
        on_released: Callable[[AssociationSummary], None] = _ignore,
        maximum_associations: int = 16,
        association_timeout_s: float = 5.0,
        idle_timeout_s: float = 60.0,
        max_connections_per_address: int = 8,
        maximum_pdu_bytes: int = DEFAULT_MAXIMUM_PDU_BYTES,
        fast_path: bool = True,
        budget: MemoryBudget | None = None,
    ) -> None:
        if not 0 < maximum_pdu_bytes <= MAX_PDU_BYTES:
            raise ValueError(f"maximum_pdu_bytes must be 1-{MAX_PDU_BYTES}")
        if min(association_timeout_s, idle_timeout_s) <= 0:
            raise ValueError("association_timeout_s and idle_timeout_s must be positive")
        if min(maximum_associations, max_connections_per_address) < 1:
            raise ValueError("maximum_associations and max_connections_per_address must be >= 1")
        self.spool = spool
        self.budget = budget if budget is not None else MemoryBudget()
        self.ae_title = ae_title
        self.host = host
        self._requested_port = port
        self._allowed_callers = (
            None
            if allowed_callers is None
            else {ae.strip(): addresses for ae, addresses in allowed_callers.items()}
        )
        self._on_stored = on_stored
        self._on_released = on_released
        self._maximum_associations = maximum_associations
        self._maximum_pdu_bytes = maximum_pdu_bytes
        self._limits = ConnectionLimits(
            association_timeout_s=association_timeout_s,
            idle_timeout_s=idle_timeout_s,
            max_connections_per_address=max_connections_per_address,
        )
        self._open: dict[Association, _OpenAssociation] = {}
        self._admitted: set[Association] = set()
        self._lock = threading.Lock()
        self._server: BoundedAssociationServer | None = None
        self._fast_path_requested = fast_path
        self._fast_path = False

    @property
    def port(self) -> int:
        """The TCP port we listen on (the bound one once started, also when 0 was asked)."""
        if self._server is None:
            return self._requested_port
        return int(self._server.server_address[1])

    @property
    def fast_path(self) -> bool:
        """True while the server runs on the fast path (False before :meth:`start`)."""
        return self._server is not None and self._fast_path

    @property
    def is_running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._server is not None

    def check_caller(self, calling_ae: str, address: str) -> None:
        """Raise :class:`UnknownCaller` unless ``calling_ae`` may connect from ``address``."""
        if self._allowed_callers is None:
            return
        if calling_ae not in self._allowed_callers:
            raise UnknownCaller(calling_ae, address)
        addresses = self._allowed_callers[calling_ae]
        if addresses is not None and address not in addresses:
            raise UnknownCaller(calling_ae, address)

    def start(self) -> None:
        """Start listening in background threads; returns at once."""
        if self._server is not None:
            raise RuntimeError("the DICOM gateway is already running")
        ae = AE(ae_title=self.ae_title)
        # Counted in _handle_requested, after the caller check (see _PYNETDICOM_ASSOCIATIONS).
        ae.maximum_associations = _PYNETDICOM_ASSOCIATIONS
        # ARTIM: how long pynetdicom waits for a request, or for the peer to close after a
        # rejection or abort; network timeout: how long an association may stay silent.
        ae.acse_timeout = self._limits.association_timeout_s
        ae.network_timeout = self._limits.idle_timeout_s
        ae.maximum_pdu_size = self._maximum_pdu_bytes
        ae.add_supported_context(Verification)
        # An SCP may support any number of contexts: the 128 limit is on what a requestor
        # proposes, so every storage SOP class gets every transfer syntax we can decode.
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax is not None:
                ae.add_supported_context(context.abstract_syntax, TRANSFER_SYNTAXES)
        handlers: list[Any] = [
            (evt.EVT_REQUESTED, self._handle_requested),
            (evt.EVT_ESTABLISHED, self._handle_established),
            (evt.EVT_C_STORE, self._handle_store),
            (evt.EVT_RELEASED, self._handle_released),
            (evt.EVT_ABORTED, self._handle_aborted),
        ]
        address = (self.host, self._requested_port)
        evt_handlers = cast(list[EventHandlerType], handlers)
        self._fast_path = fast_path_usable(self._fast_path_requested)
        # Both servers admit connections through serving.gateway.admission (public hooks).
        server = cast(
            BoundedAssociationServer,
            ae.make_server(
                address,
                evt_handlers=evt_handlers,
                server_class=BoundedAssociationServer,
                # The fast path's handler makes reactors that skip pynetdicom's per-message
                # machinery for C-STORE requests.
                request_handler=PromptRequestHandler if self._fast_path else GatedRequestHandler,
            ),
        )
        server.limits = self._limits
        if self._fast_path:
            server.raw_store_handler = self.handle_fast_store  # type: ignore[attr-defined]
        threading.Thread(
            target=server.serve_forever, name=f"dicom-gateway-{self.ae_title}", daemon=True
        ).start()
        self._server = server
        LOGGER.info(
            "DICOM gateway %s listening on %s:%d (%s)",
            self.ae_title,
            self.host,
            self.port,
            "fast path" if self._fast_path else f"pynetdicom {pynetdicom.__version__} server",
        )

    def stop(self) -> None:
        """Stop accepting associations and close the listening socket.

        Associations in flight finish on their own threads; their instances are already safe.
        """
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            LOGGER.info("DICOM gateway %s stopped", self.ae_title)

    def __enter__(self) -> DicomGateway:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- event handlers (run on pynetdicom's association threads) -----------------------------

    def _handle_requested(self, event: Event) -> None:
        assoc = event.assoc
        request = assoc.requestor.primitive
        calling_ae = "" if request is None else str(request.calling_ae_title).strip()
        address = assoc.requestor.address
        try:
            self.check_caller(calling_ae, address)
        except UnknownCaller as exc:
            LOGGER.warning("association rejected: %s", exc)
            # Permanent, by the service user, "calling AE title not recognised" (PS3.8 9.3.4).
            assoc.acse.send_reject(0x01, 0x01, 0x03)
            # The same clean-up pynetdicom does after its own rejections: wait for the peer
            # to close (or the ARTIM timer), then stop the association's DUL thread.
            assoc.kill()
            return
        with self._lock:
            self._admitted = {a for a in self._admitted if a.is_alive()}
            full = len(self._admitted) >= self._maximum_associations
            if not full:
                self._admitted.add(assoc)
        if full:
            LOGGER.warning(
                "association from %s at %s rejected: %d associations open",
                calling_ae,
                address,
                self._maximum_associations,
            )
            assoc.acse.send_reject(*_REJECT_LOCAL_LIMIT)
            assoc.kill()

    def _handle_established(self, event: Event) -> None:
        assoc = event.assoc
        source = InstanceSource(
            calling_ae=str(assoc.requestor.ae_title).strip(),
            address=assoc.requestor.address,
            channel="dimse",
            association_id=uuid.uuid4().hex,
        )
        with self._lock:
            self._open[assoc] = _OpenAssociation(source)
        server = self._server
        peer = getattr(assoc.dul.socket, "socket", None)
        if server is not None and peer is not None:
            server.deadlines.clear(peer)  # associated in time
        LOGGER.debug("association %s accepted from %s", source.association_id, source.calling_ae)

    def _handle_store(self, event: Event) -> Dataset | int:
        """pynetdicom's C-STORE event (requests the fast path did not take)."""
        request = cast(C_STORE, event.request)
        if str(request.AffectedSOPClassUID) != str(event.context.abstract_syntax):
            return _status(STATUS_SOP_CLASS_NOT_SUPPORTED, SOP_CLASS_MISMATCH)  # as the fast path
        data_set = request.DataSet
        raw = data_set.getvalue() if isinstance(data_set, BytesIO) else bytes(data_set or b"")
        status, comment = self._store(
            event.assoc,
            str(request.AffectedSOPClassUID),
            str(request.AffectedSOPInstanceUID),
            str(event.context.transfer_syntax),
            None if data_set is None else [raw],
        )
        return status if comment is None else _status(status, comment)

    def handle_fast_store(
        self, assoc: Association, request: StoreRequest, transfer_syntax: str
    ) -> tuple[int, str | None]:
        """The fast path's C-STORE (see :mod:`serving.gateway.fast_store`): the reactor calls
        it on the association's thread; returns the status and error comment to answer."""
        return self._store(
            assoc,
            request.sop_class_uid,
            request.sop_instance_uid,
            transfer_syntax,
            request.fragments,
        )

    def _store(
        self,
        assoc: Association,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax: str,
        data_set: Sequence[bytes | memoryview] | None,
    ) -> tuple[int, str | None]:
        """Spool one received data set; the DIMSE status and error comment to answer with."""
        with self._lock:
            state = self._open.get(assoc)
        if state is None:  # cannot happen after EVT_ESTABLISHED; refuse rather than guess
            return STATUS_UNABLE_TO_PROCESS, "association state unknown"
        try:
            if data_set is None:
                raise InvalidInstance("the C-STORE request carries no data set")
            if not (sop_class_uid.isascii() and sop_instance_uid.isascii()):
                # pynetdicom decodes any bytes of a UI element; a UID is digits and dots.
                raise InvalidInstance("the C-STORE request's SOP UIDs are not ASCII")
            header = part10_header(sop_class_uid, sop_instance_uid, transfer_syntax)
            # the received fragments and their one joined copy, held until spooled
            held = 2 * (len(header) + sum(len(fragment) for fragment in data_set))
            with self.budget.reserve(held):
                part10 = b"".join((header, *data_set))  # the one copy of the received data set
                stored = self.spool.store(part10, state.source)
                del part10
        except OverBudget as exc:
            state.failed += 1
            LOGGER.warning("association %s: %s", state.source.association_id, exc)
            return STATUS_OUT_OF_RESOURCES, "in-flight memory budget exhausted"
        except OutOfResources as exc:
            state.failed += 1
            LOGGER.error("association %s: %s", state.source.association_id, exc)
            return STATUS_OUT_OF_RESOURCES, "spool out of space"
        except InvalidInstance as exc:
            state.failed += 1
            LOGGER.warning(
                "association %s refused an instance: %s", state.source.association_id, exc.reason
            )
            LOGGER.debug("refused SOP instance %s", exc.sop_instance_uid)
            return STATUS_CANNOT_UNDERSTAND, exc.reason[:_ERROR_COMMENT_MAX]
        # Anything else (disk, a bug) must become a DIMSE failure status for this instance,
        # never an exception in pynetdicom's association thread.
        except Exception:
            state.failed += 1
            LOGGER.exception("association %s: storing failed", state.source.association_id)
            return STATUS_UNABLE_TO_PROCESS, "internal error storing the instance"
        state.instances.append(stored)
        try:
            self._on_stored(stored)
        except Exception:  # the instance is safe on disk: report, don't fail the C-STORE
            LOGGER.exception("on_stored failed on association %s", state.source.association_id)
            LOGGER.debug("on_stored failed for SOP instance %s", stored.sop_instance_uid)
        return STATUS_SUCCESS, None

    def _handle_released(self, event: Event) -> None:
        self._finish(event.assoc, aborted=False)

    def _handle_aborted(self, event: Event) -> None:
        self._finish(event.assoc, aborted=True)

    def _finish(self, assoc: Association, *, aborted: bool) -> None:
        with self._lock:
            state = self._open.pop(assoc, None)
            self._admitted.discard(assoc)
        if state is None:  # rejected, or already reported (release and abort both fired)
            return
        source = state.source
        summary = AssociationSummary(
            association_id=source.association_id,
            calling_ae=source.calling_ae or "",
            address=source.address or "",
            instances=list(state.instances),
            aborted=aborted,
            failed=state.failed,
        )
        LOGGER.info(
            "association %s from %s at %s %s: %d instances stored, %d refused",
            summary.association_id,
            summary.calling_ae,
            summary.address,
            "aborted" if aborted else "released",
            len(summary.instances),
            summary.failed,
        )
        try:
            self._on_released(summary)
        # The instances are stored and acknowledged: a failing callback is reported, and the
        # association thread (pynetdicom's) must not die of it.
        except Exception:
            LOGGER.exception("on_released failed for association %s", summary.association_id)
