"""DICOM C-STORE to a PACS (pynetdicom storage SCU).

The association proposes the result object classes statlane produces (SR, GSPS, secondary
capture, SEG) with Explicit and Implicit VR Little Endian, plus the payload file's own SOP class
and transfer syntax, so a compressed instance is sent as it is and never transcoded.

Associations for result objects are kept open for ``keep_open_s`` after a delivery and reused
by the next one: a stat SR does not wait for a TCP connection and an association negotiation.
Each is used by one delivery at a time. One that the peer closed, or that fails before an
answer, is dropped and the delivery goes on a fresh association; idle ones are released once
they have waited longer than ``keep_open_s`` (well below a PACS's usual idle timeout).
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.association import Association

from serving.delivery.base import (
    DeliveryError,
    Payload,
    probe_timeout_s,
    storage_status_ok,
    storage_status_retryable,
)

log = logging.getLogger(__name__)

RESULT_SOP_CLASSES: tuple[str, ...] = (
    "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.11.1",  # Grayscale Softcopy Presentation State
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation
    "1.2.840.10008.5.1.4.1.1.66.7",  # Label Map Segmentation
)
UNCOMPRESSED: tuple[str, ...] = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"


class DicomStoreDestination:
    """C-STORE SCU to one remote AE.

    Args:
        ae_title: The PACS's AE title (called AE).
        host: Its host name or address.
        port: Its DICOM port.
        calling_ae: Our AE title.
        timeout_s: Limit for connecting, association negotiation, each DIMSE reply and network
            inactivity, seconds.
        name: Destination name for the outbox and audit; ``dicom:AE@host:port`` by default.
        keep_open_s: How long an idle association waits for the next result object, seconds;
            0 opens one association per payload.
        clock: Monotonic clock (seconds) for the idle time.
    """

    def __init__(
        self,
        ae_title: str,
        host: str,
        port: int,
        calling_ae: str = "STATLANE",
        timeout_s: float = 30.0,
        name: str = "",
        keep_open_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        for label, title in (("ae_title", ae_title), ("calling_ae", calling_ae)):
            if not title or len(title) > 16 or "\\" in title:
                raise ValueError(f"{label} {title!r} is not a valid AE title (1-16 characters)")
        if not 0 < int(port) < 65536:
            raise ValueError(f"port {port} is out of range")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        if keep_open_s < 0:
            raise ValueError(f"keep_open_s must be >= 0, got {keep_open_s}")
        self.ae_title = ae_title
        self.host = host
        self.port = int(port)
        self.calling_ae = calling_ae
        self.timeout_s = float(timeout_s)
        self.name = name or f"dicom:{ae_title}@{host}:{self.port}"
        self.keep_open_s = float(keep_open_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._idle: list[tuple[Association, float]] = []  # (association, idle since)

    def deliver(self, payload: Payload) -> None:
        """C-STORE the payload's instance; raise ``DeliveryError`` unless the peer stored it."""
        source = self._read(payload)
        sop_class = UID(source.dataset.SOPClassUID)
        syntax = UID(source.dataset.file_meta.TransferSyntaxUID)
        sop_instance = str(source.dataset.SOPInstanceUID)
        reusable = self.keep_open_s > 0 and sop_class in RESULT_SOP_CLASSES
        reusable = reusable and syntax in UNCOMPRESSED
        expired: list[Association] = []
        assoc = self._take_idle(expired) if reusable else None
        try:
            if assoc is not None:
                status = self._send_on_kept(assoc, source)
                if status is not None:
                    self._keep(assoc)  # it answered: healthy, whatever the status says
                    self._check(status, sop_instance)
                    return
            assoc = self._associate(sop_class, syntax)
            try:
                answer = assoc.send_c_store(source.path or source.dataset)
            except ValueError as exc:  # no accepted context for this class/syntax: nothing sent
                _close(assoc)
                raise DeliveryError(
                    False, f"{self.name}: peer accepted no context for {sop_class} ({exc})"
                ) from exc
            # whatever stopped the send (even an interrupt) leaves the association closed;
            # the error itself goes on
            except BaseException:
                _close(assoc, status_known=False)
                raise
            status = answer.get("Status")
            if status is None:  # timed out or aborted: pynetdicom has usually aborted it already
                _close(assoc, status_known=False)
            elif reusable:
                self._keep(assoc)
            else:
                _close(assoc)
            self._check(status, sop_instance)
        finally:
            for old in expired:
                _close(old)

    def probe(self) -> None:
        """C-ECHO on a fresh association; ``DeliveryError`` unless the peer answers success."""
        ae = AE(ae_title=self.calling_ae)
        timeout_s = probe_timeout_s(self.timeout_s)
        ae.connection_timeout = timeout_s
        ae.acse_timeout = timeout_s
        ae.dimse_timeout = timeout_s
        ae.network_timeout = timeout_s
        ae.add_requested_context(VERIFICATION_SOP_CLASS, list(UNCOMPRESSED))
        events = _AssociationEvents()
        assoc = ae.associate(
            self.host, self.port, ae_title=self.ae_title, evt_handlers=events.handlers()
        )
        if not assoc.is_established:
            if events.accepted():
                return  # it answers, only not to Verification (some PACS do not offer it)
            raise DeliveryError(
                events.retryable(), f"{self.name}: {events.why_not_established(assoc)}"
            )
        try:
            answer = assoc.send_c_echo()
        except (RuntimeError, ValueError, OSError) as exc:
            _close(assoc, status_known=False)
            raise DeliveryError(True, f"{self.name}: C-ECHO failed ({exc})") from exc
        status = answer.get("Status")
        _close(assoc, status_known=status is not None)
        if status != 0x0000:
            answered = "no answer" if status is None else f"status 0x{status:04X}"
            raise DeliveryError(True, f"{self.name}: C-ECHO {answered}")

    def close(self) -> None:
        """Release every association kept open."""
        with self._lock:
            idle, self._idle = self._idle, []
        for assoc, _ in idle:
            _close(assoc)

    def _associate(self, sop_class: UID, syntax: UID) -> Association:
        ae = self._application_entity(sop_class, syntax)
        events = _AssociationEvents()
        assoc = ae.associate(
            self.host, self.port, ae_title=self.ae_title, evt_handlers=events.handlers()
        )
        if not assoc.is_established:
            # Retryable unless the peer rejected it permanently (rejected-permanent, e.g. our
            # AE title unknown to it) or accepted none of our contexts: both answer the same
            # until someone changes a configuration, so the item is a dead letter at once.
            raise DeliveryError(
                events.retryable(), f"{self.name}: {events.why_not_established(assoc)}"
            )
        return assoc

    def _take_idle(self, expired: list[Association]) -> Association | None:
        """An idle association still open, newest first; the expired ones go to ``expired``."""
        now = self._clock()
        with self._lock:
            while self._idle:
                assoc, since = self._idle.pop()
                if now - since > self.keep_open_s or not assoc.is_established:
                    expired.append(assoc)
                    continue
                # the newest is good; anything older than the limit is released now too
                fresh = [(a, t) for a, t in self._idle if now - t <= self.keep_open_s]
                expired += [a for a, t in self._idle if now - t > self.keep_open_s]
                self._idle = fresh
                return assoc
        return None

    def _send_on_kept(self, assoc: Association, source: _Source) -> int | None:
        """The C-STORE status on a kept association; None when it turned out to be unusable
        (closed by the peer, or no answer), so the caller sends on a fresh one."""
        try:
            answer = assoc.send_c_store(source.path or source.dataset)
        except (RuntimeError, ValueError, OSError):
            log.debug("%s: a kept association failed; opening a new one", self.name)
            _close(assoc, status_known=False)
            return None
        status = answer.get("Status")
        if status is None:
            _close(assoc, status_known=False)
        return cast(int | None, status)

    def _keep(self, assoc: Association) -> None:
        if not assoc.is_established:
            return
        with self._lock:
            self._idle.append((assoc, self._clock()))

    def _read(self, payload: Payload) -> _Source:
        """The instance to send: a file is streamed from disk, bytes are parsed in memory."""
        if not payload.kind.is_dicom:
            raise DeliveryError(
                False, f"{self.name}: C-STORE takes dicom payloads, not {payload.kind}"
            )
        try:
            if payload.path is not None:
                source = _Source(dcmread(payload.path, stop_before_pixels=True), payload.path)
            else:
                source = _Source(dcmread(io.BytesIO(payload.data())), None)
        except (OSError, InvalidDicomError) as exc:
            raise DeliveryError(
                False, f"{self.name}: payload is not a readable DICOM Part 10 instance ({exc})"
            ) from exc
        meta = source.dataset.get("file_meta") or {}
        if "SOPClassUID" not in source.dataset or "SOPInstanceUID" not in source.dataset:
            raise DeliveryError(False, f"{self.name}: instance has no SOP Class/Instance UID")
        if "TransferSyntaxUID" not in meta:
            raise DeliveryError(False, f"{self.name}: instance has no Transfer Syntax UID")
        return source

    def _application_entity(self, sop_class: UID, syntax: UID) -> AE:
        ae = AE(ae_title=self.calling_ae)
        ae.connection_timeout = self.timeout_s
        ae.acse_timeout = self.timeout_s
        ae.dimse_timeout = self.timeout_s
        ae.network_timeout = self.timeout_s
        for abstract in RESULT_SOP_CLASSES:
            ae.add_requested_context(abstract, list(UNCOMPRESSED))
        if sop_class not in RESULT_SOP_CLASSES:
            ae.add_requested_context(sop_class, list(UNCOMPRESSED))
        if syntax not in UNCOMPRESSED:
            # A separate context so the peer cannot pick an uncompressed syntax we would have to
            # transcode to.
            ae.add_requested_context(sop_class, syntax)
        return ae

    def _check(self, status: int | None, sop_instance: str) -> None:
        if status is None:
            raise DeliveryError(
                True, f"{self.name}: no C-STORE response for {sop_instance} (timeout or abort)"
            )
        if storage_status_ok(status):
            if status != 0x0000:
                log.warning("%s: stored %s with warning 0x%04X", self.name, sop_instance, status)
            return
        raise DeliveryError(
            storage_status_retryable(status),
            f"{self.name}: C-STORE of {sop_instance} failed with status 0x{status:04X}",
        )


def _close(assoc: Association, *, status_known: bool = True) -> None:
    """Release an association (abort it when a request may still be unanswered)."""
    if not assoc.is_established:
        return
    if status_known:
        assoc.release()
    else:
        assoc.abort()


@dataclass(frozen=True)
class _Source:
    dataset: Dataset  # the whole instance, or only its header when ``path`` is set
    path: Path | None


class _AssociationEvents:
    """What happened while associating, to say in one line why no association was made."""

    def __init__(self) -> None:
        self.connected = False
        self.primitives: list[Any] = []  # ACSE primitives received from the peer

    def handlers(self) -> list[Any]:
        return [
            (evt.EVT_CONN_OPEN, self._on_open),
            (evt.EVT_ACSE_RECV, self._on_acse),
        ]

    def _on_open(self, event: Any) -> None:
        self.connected = True

    def _on_acse(self, event: Any) -> None:
        self.primitives.append(event.primitive)

    def accepted(self) -> bool:
        """Whether the peer accepted the association (A-ASSOCIATE-AC), with or without a
        presentation context we proposed."""
        return any(getattr(p, "result", None) == 0x00 for p in self.primitives)

    def retryable(self) -> bool:
        """Whether the failed association may succeed later: False for a permanent rejection
        (result 0x01) or an association that accepted none of the proposed contexts."""
        for primitive in self.primitives:
            if getattr(primitive, "result", None) in (0x00, 0x01):
                return False
        return True

    def why_not_established(self, assoc: Any) -> str:
        if not self.connected:
            return "cannot connect (connection refused, unreachable or timed out)"
        for primitive in self.primitives:
            if getattr(primitive, "result", None) in (0x01, 0x02):
                return (
                    f"association rejected ({primitive.result_str}; {primitive.source_str}; "
                    f"{primitive.reason_str})"
                )
            if getattr(primitive, "result", None) == 0x00:
                return "association accepted with no presentation context we proposed"
        if assoc.is_rejected:
            return "association rejected"
        if self.primitives:
            return "association aborted by the peer"
        return "no answer to the association request (timed out)"
