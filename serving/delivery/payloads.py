"""Results into the outbox: what each mode may send, to which destination, in which form.

- shadow: nothing leaves; the result is kept in the job store and audited;
- triage: worklist signals only (result signals to webhook destinations);
- assistant: DICOM objects (SR, GSPS, SC, SEG) to DICOM, STOW-RS and folder destinations,
  HL7 ORU to MLLP, a FHIR transaction bundle to FHIR, a result signal to webhooks.

Outbox keys name the result's version (``AIResult.input_digest``: the source instances read and
the model version), not the task's generation: a re-run on more images delivers its new
version (new SOP Instance UIDs, a correcting ORU, an amended FHIR report), while a re-run on the
same input, or a task re-run after a crash, finds its items already queued and sends nothing.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from pathlib import Path
from typing import Any

from router.messages import (
    build_fhir_bundle,
    build_oru,
    build_rank_change_fhir,
    build_rank_change_hl7,
)
from router.messages.codes import MessageInvalid
from router.messages.identifiers import IdentifierSystems
from router.messages.worklist_signal import DEFAULT_ACCESSION_SYSTEM
from router.objects import ObjectNotApplicable, build_object, write_objects
from router.objects.common import located_findings, unplaced_findings
from router.result import AIResult, Mode
from router.vocabulary import DeliveryKind, OrderContext, PriorityClass
from router.worklist import RankChange, signal_payload
from serving.delivery.base import Payload, Urgency
from serving.delivery.config import DICOM_OBJECT_TYPES, DestinationType
from serving.delivery.outbox import Outbox, OutboxItem
from serving.jobstore import JobStore, TaskRow
from serving.metrics import Metrics

log = logging.getLogger(__name__)


class ResultDelivery:
    """Turns a task's result into outbox items.

    Args:
        store: The job store (audit).
        outbox: Where deliveries wait.
        destination_types: Destination name → type (``dicom``, ``stow``, ``folder``, ``mllp``,
            ``fhir``, ``webhook``).
        results_dir: Where result objects are written before delivery.
        metrics: Service metrics.
        utc: Wall clock (timezone-aware).
        on_enqueued: Called after a result's items are queued (wakes the delivery workers).
        gate: Stat priority across the Python stages: a stat task's SR and messages are a
            stat stage; every other object, and every object of other tasks, steps aside
            for stat stages before it is built.
        systems: FHIR identifier systems of the site (``identifiers`` in ``statlane.yaml``).
    """

    def __init__(
        self,
        *,
        store: JobStore,
        outbox: Outbox,
        destination_types: Mapping[str, DestinationType],
        results_dir: Path,
        metrics: Metrics,
        utc: Callable[[], datetime],
        on_enqueued: Callable[[], None] = lambda: None,
        gate: Urgency | None = None,
        systems: IdentifierSystems | None = None,
    ) -> None:
        self.store = store
        self.systems = systems if systems is not None else IdentifierSystems()
        self.gate: Urgency = gate if gate is not None else _Unhurried()
        self.outbox = outbox
        self.destination_types = dict(destination_types)
        self.results_dir = results_dir
        self.metrics = metrics
        self.utc = utc
        self.on_enqueued = on_enqueued

    def enqueue_results(
        self,
        task: TaskRow,
        ai: AIResult,
        order: OrderContext | None,
        complete: Callable[[AIResult], AIResult] | None = None,
    ) -> None:
        """Put a task's results in the outbox, as its mode allows.

        In assistant mode the SR is written and queued first and the delivery workers woken;
        then the HL7 and FHIR messages and signals; then ``complete`` (which adds the mask on
        the source grid, needed by the SEG only) and GSPS, SC and SEG. A failure after the SR
        is queued keeps the SR and is audited.
        """
        mode = Mode(task.mode)
        if mode is Mode.SHADOW:
            self.store.audit(
                "shadow-result-kept", study_uid=task.study_instance_uid, task_id=task.task_id
            )
            return
        known: list[str] = []
        for name in task.destinations:
            if name in self.destination_types:
                known.append(name)
            else:
                self.store.audit(
                    "unknown-destination", task_id=task.task_id, detail={"destination": name}
                )
        with self._stage(task):
            if mode is Mode.ASSISTANT:
                # The SR is what the PACS and the reporting system wait for: it is written and
                # queued (and the delivery workers woken) before GSPS, SC and SEG are built.
                self._enqueue_objects(task, ai, known, kinds=("sr",))
                self.on_enqueued()
            self._enqueue_messages(task, ai, order, known, mode)
        if mode is Mode.ASSISTANT:
            self._enqueue_secondary(task, ai, known, complete)
        self.metrics.inc("statlane_results_total", mode=mode.value, model=task.model)
        self.on_enqueued()

    def _enqueue_secondary(
        self,
        task: TaskRow,
        ai: AIResult,
        destinations: list[str],
        complete: Callable[[AIResult], AIResult] | None,
    ) -> None:
        """GSPS, SC and SEG, each built, written and queued independently.

        One kind failing never stops the others. Audited once per result: the
        ``result-objects-failed`` event names exactly the kinds that failed (``kinds``) and
        each one's error (``errors``); a kind that does not apply for a reason worth knowing
        (:class:`~router.objects.ObjectNotApplicable`, e.g. a SEG on a source without Frame of
        Reference UID, or present findings with a box but no key image) is audited apart, as
        ``result-objects-not-applicable`` with ``reasons`` per kind. A failure to add the mask
        (``complete``) fails the SEG only.
        """
        failed: dict[str, str] = {}
        not_applicable: dict[str, str] = {}
        full = ai
        try:
            self.gate.step_aside()  # a stat SR being delivered goes first, this one's too
            if complete is not None:
                full = complete(ai)
        # The mask feeds the SEG only: any failure to make it (resampling, a bug) must cost
        # the SEG alone, never the GSPS and SC that do not need it.
        except Exception as error:
            log.debug("task %s: mask failure", task.task_id, exc_info=True)
            failed["seg"] = f"mask: {type(error).__name__}: {error}"
        for kind in ("gsps", "sc", "seg"):
            if kind in failed:
                continue
            self.gate.step_aside()
            try:
                self._enqueue_objects(task, full, destinations, kinds=(kind,))
            except ObjectNotApplicable as verdict:
                not_applicable[kind] = verdict.reason
            # The SR is queued already and the other kinds must still go out: any failure of
            # one object (a source the builder cannot take, a bug) is recorded, not raised.
            except Exception as error:
                log.debug("task %s: %s failure", task.task_id, kind, exc_info=True)
                failed[kind] = f"{type(error).__name__}: {error}"
        unplaced = unplaced_findings(full)
        if unplaced and not located_findings(full):
            reason = "present findings with a box have no key image: " + ", ".join(unplaced)
            for kind in ("gsps", "sc"):
                if kind not in failed:
                    not_applicable.setdefault(kind, reason)
        if not_applicable:
            self.store.audit(
                "result-objects-not-applicable",
                study_uid=task.study_instance_uid,
                task_id=task.task_id,
                detail={"kinds": list(not_applicable), "reasons": not_applicable},
            )
        if failed:
            for kind, problem in failed.items():
                log.error("task %s: %s not built (%s)", task.task_id, kind, problem.split(":")[0])
            self.store.audit(
                "result-objects-failed",
                study_uid=task.study_instance_uid,
                task_id=task.task_id,
                detail={"kinds": list(failed), "errors": failed},
            )
            for kind in failed:
                self.metrics.inc(
                    "statlane_result_object_failures_total", model=task.model, kind=kind
                )

    def _stage(self, task: TaskRow) -> AbstractContextManager[None]:
        """A stat task's SR and messages are a stat stage; other tasks' step aside first."""
        if task.priority is PriorityClass.STAT:
            return self.gate.stat_stage()
        self.gate.step_aside()
        return nullcontext()

    def _key(self, task: TaskRow, ai: AIResult, destination: str) -> str:
        """Dedupe key prefix of one result version for one destination."""
        return f"{destination}:{task.study_instance_uid}:{task.model}:{ai.input_digest}"

    def _enqueue_objects(
        self, task: TaskRow, ai: AIResult, destinations: list[str], kinds: tuple[str, ...]
    ) -> None:
        """Build, write and queue the result objects of ``kinds`` for the DICOM destinations.

        Raises:
            ObjectNotApplicable: A kind does not apply, for a reason to audit.
        """
        targets = [d for d in destinations if self.destination_types[d] in DICOM_OBJECT_TYPES]
        if not targets:
            return
        objects = [o for o in (build_object(ai, kind) for kind in kinds) if o is not None]
        paths = write_objects(objects, self.results_dir / "objects" / task.task_id)
        for name in targets:
            for obj, path in zip(objects, paths, strict=True):
                self.outbox.enqueue(
                    task.task_id,
                    name,
                    obj.kind,
                    payload_path=str(path),
                    dedupe_key=f"{self._key(task, ai, name)}:{obj.kind}",
                    priority=task.priority,
                )

    def _enqueue_messages(
        self,
        task: TaskRow,
        ai: AIResult,
        order: OrderContext | None,
        destinations: list[str],
        mode: Mode,
    ) -> None:
        """Queue the HL7 ORU, FHIR bundle and webhook signal the destinations take."""
        for name in destinations:
            kind = self.destination_types[name]
            key = self._key(task, ai, name)
            try:
                self._enqueue_message(task, ai, order, name, kind, key, mode)
            except MessageInvalid as error:  # one message, never the task nor other results
                log.error("task %s: no %s message for %s", task.task_id, kind, name)
                self.store.audit(
                    "result-message-failed",
                    study_uid=task.study_instance_uid,
                    task_id=task.task_id,
                    detail={"destination": name, "kind": kind, "error": str(error)},
                )
                self.metrics.inc("statlane_result_message_failures_total", model=task.model)

    def _enqueue_message(
        self,
        task: TaskRow,
        ai: AIResult,
        order: OrderContext | None,
        name: str,
        kind: str,
        key: str,
        mode: Mode,
    ) -> None:
        """Build and queue the one message destination ``name`` (of type ``kind``) takes."""
        if kind == "mllp" and mode is Mode.ASSISTANT:
            text = build_oru(ai, order, message_control_id=task.task_id[:20], now=self.utc())
            self.outbox.enqueue(
                task.task_id,
                name,
                DeliveryKind.HL7,
                payload=text,
                dedupe_key=f"{key}:hl7",
                priority=task.priority,
            )
        elif kind == "fhir" and mode is Mode.ASSISTANT:
            bundle = build_fhir_bundle(ai, order, now=self.utc(), systems=self.systems)
            self.outbox.enqueue(
                task.task_id,
                name,
                DeliveryKind.FHIR,
                payload=compact_json(bundle),
                dedupe_key=f"{key}:fhir",
                priority=task.priority,
            )
        elif kind == "webhook":
            signal = {
                "event": "ai-result",
                "study_instance_uid": task.study_instance_uid,
                "accession_number": ai.study.accession_number,
                "model": task.model,
                "mode": mode.value,
                "critical_positive": ai.critical_positive,
                "findings": [
                    {
                        "code": f.concept_value,
                        "meaning": f.concept_meaning,
                        "present": f.present,
                        "probability": round(f.probability, 4),
                    }
                    for f in ai.findings
                ],
            }
            self.outbox.enqueue(
                task.task_id,
                name,
                DeliveryKind.WEBHOOK,
                payload=compact_json(signal),
                dedupe_key=f"{key}:webhook",
                priority=task.priority,
            )


def rank_change_item(
    destination_type: DestinationType,
    change: RankChange,
    at: datetime,
    sequence: int,
    order: OrderContext | None = None,
    accession_system: str = DEFAULT_ACCESSION_SYSTEM,
) -> tuple[DeliveryKind, str]:
    """The outbox kind and payload of one worklist rank change for a destination type.

    MLLP destinations get an HL7 ORM^O01 (order control XO) naming the RIS's own order numbers
    when ``order`` (received for the change's accession number) has them, FHIR destinations a
    transaction bundle with one Task, every other type the JSON signal. ``sequence`` numbers the
    signals (HL7 message control IDs).
    """
    if destination_type == "mllp":
        control_id = f"WL{sequence}"[:20]
        text = build_rank_change_hl7(change, at, message_control_id=control_id, order=order)
        return DeliveryKind.HL7, text
    if destination_type == "fhir":
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                    "resource": build_rank_change_fhir(
                        change, at, accession_system=accession_system
                    ),
                    "request": {"method": "POST", "url": "Task"},
                }
            ],
        }
        return DeliveryKind.FHIR, compact_json(bundle)
    return DeliveryKind.WORKLIST, compact_json(signal_payload(change, at))


def payload_of(item: OutboxItem) -> Payload:
    """The destination payload of an outbox item: its file, or its inline content."""
    if item.payload_path is not None:
        return Payload(item.kind, path=Path(item.payload_path))
    body: Any = item.payload
    return Payload(item.kind, body=body)


def compact_json(value: Any) -> str:
    """Compact JSON text (outbox payloads)."""
    return json.dumps(value, separators=(",", ":"), default=str)


class _Unhurried:
    """No stat priority: nothing waits (a ``ResultDelivery`` without the service's gate)."""

    def stat_stage(self) -> AbstractContextManager[None]:
        return nullcontext()

    def step_aside(self) -> float:
        return 0.0
