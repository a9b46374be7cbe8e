"""The shared vocabulary: words that the gateway, the rules, the scheduler, the job store and
delivery all use, one enum each, with no behaviour of their own.

A leaf module: it imports only the standard library, so every layer (``router`` and
``serving``) can import it without importing another layer.

- :class:`PriorityClass`: how urgent a study's inference is (stat, urgent, routine).
- :class:`OrderPriority` and :class:`OrderContext`: what the RIS said about a study (HL7
  ORM^O01 / OMI^O23), joined by accession number; :class:`AssigningAuthority`: who issued one
  of its identifiers (HL7 HD: the patient ID's CX-4, an order number's EI-2..4).
- :class:`DeliveryKind`: what one delivery carries (a result object, a message, a signal); the
  value is what the outbox stores.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class PriorityClass(StrEnum):
    """Inference priority class of a task."""

    STAT = "stat"
    URGENT = "urgent"
    ROUTINE = "routine"

    @property
    def rank(self) -> int:
        """0 for stat (most urgent), 1 urgent, 2 routine."""
        return _RANK[self]


_RANK = {PriorityClass.STAT: 0, PriorityClass.URGENT: 1, PriorityClass.ROUTINE: 2}


class OrderPriority(StrEnum):
    """Order priority, normalised from HL7 (TQ1-9 / ORC-7.6 / OBR-27.6: S, A, R, P, C, T)."""

    STAT = "stat"  # S
    ASAP = "asap"  # A
    ROUTINE = "routine"  # R, P, C, T and anything else
    UNKNOWN = "unknown"  # no priority given


@dataclass(frozen=True)
class AssigningAuthority:
    """Who issued an identifier, as HL7 v2 names it (HD; EI-2..4 of an order number).

    Attributes:
        namespace_id: HD-1 / EI-2, a local name (e.g. ``HOSP``, ``RIS``); may be empty.
        universal_id: HD-2 / EI-3, e.g. an OID; may be empty.
        universal_id_type: HD-3 / EI-4, e.g. ``ISO`` when ``universal_id`` is an OID.
    """

    namespace_id: str = ""
    universal_id: str = ""
    universal_id_type: str = ""

    def __bool__(self) -> bool:
        """Whether any component is known."""
        return bool(self.namespace_id or self.universal_id or self.universal_id_type)


@dataclass(frozen=True)
class OrderContext:
    """One imaging order.

    Attributes:
        accession_number: OBR-18 (ORM^O01) or IPC-1 (OMI^O23) by default, or wherever the
            site's ``hl7.order_mapping`` says: the join key with the study.
        priority: Normalised order priority.
        procedure_code: Code of the requested procedure (OBR-4.1), e.g. a LOINC code.
        procedure_scheme: Its coding scheme (OBR-4.3), e.g. ``LN``.
        procedure_meaning: Its text (OBR-4.2).
        indication: Clinical indication / reason for study (OBR-31 text), may be empty.
        patient_id: PID-3.1, used only to check identity against the study (never logged).
        placer_order_number: ORC-2 / OBR-2.
        filler_order_number: ORC-3 / OBR-3.
        placer_order_authority: EI-2..4 of the placer order number, as received.
        filler_order_authority: EI-2..4 of the filler order number, as received.
        patient_id_authority: PID-3.4, the assigning authority of the patient ID, as received.
        study_instance_uid: IPC-3 (OMI^O23) or ZDS-1 when the RIS assigned one, else empty.
        order_control: ORC-1 (``NW`` new, ``CA`` cancel, ``XO`` change ...).
        message_control_id: MSH-10 of the message that carried the order.
    """

    accession_number: str
    priority: OrderPriority = OrderPriority.UNKNOWN
    procedure_code: str = ""
    procedure_scheme: str = ""
    procedure_meaning: str = ""
    indication: str = ""
    patient_id: str = ""
    placer_order_number: str = ""
    filler_order_number: str = ""
    placer_order_authority: AssigningAuthority = AssigningAuthority()
    filler_order_authority: AssigningAuthority = AssigningAuthority()
    patient_id_authority: AssigningAuthority = AssigningAuthority()
    study_instance_uid: str = ""
    order_control: str = "NW"
    message_control_id: str = ""


class DeliveryKind(StrEnum):
    """What one delivery carries: the outbox item's kind and the destination payload's kind.

    The values are stored in the job store's outbox table; never change one.
    """

    SR = "sr"  # DICOM Structured Report
    GSPS = "gsps"  # Grayscale Softcopy Presentation State
    SC = "sc"  # Secondary Capture
    SEG = "seg"  # DICOM Segmentation
    HL7 = "hl7"  # HL7 v2 message (ORU result, ORM rank change), ER7 text
    FHIR = "fhir"  # FHIR transaction Bundle (DiagnosticReport, worklist Task)
    WEBHOOK = "webhook"  # JSON result signal
    WORKLIST = "worklist"  # JSON worklist rank-change signal

    @property
    def is_dicom(self) -> bool:
        """A DICOM Part 10 instance (SR, GSPS, SC, SEG), sent as a file."""
        return self in _DICOM_KINDS

    @property
    def is_json(self) -> bool:
        """A JSON document (FHIR Bundle, webhook or worklist signal)."""
        return self in _JSON_KINDS


_DICOM_KINDS = frozenset({DeliveryKind.SR, DeliveryKind.GSPS, DeliveryKind.SC, DeliveryKind.SEG})
_JSON_KINDS = frozenset({DeliveryKind.FHIR, DeliveryKind.WEBHOOK, DeliveryKind.WORKLIST})
