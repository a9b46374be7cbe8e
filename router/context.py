"""Order context: what the RIS told us about a study (HL7 ORM^O01 / OMI^O23), joined by accession.

Plain data shared by the HL7 gateway (which parses orders), the job store (which keeps them) and
the routing rules (which match on priority, procedure code and indication).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class OrderPriority(StrEnum):
    """Order priority, normalised from HL7 (TQ1-9 / ORC-7.6 / OBR-27.6: S, A, R, P, C, T)."""

    STAT = "stat"  # S
    ASAP = "asap"  # A
    ROUTINE = "routine"  # R, P, C, T and anything else
    UNKNOWN = "unknown"  # no priority given


@dataclass(frozen=True)
class OrderContext:
    """One imaging order.

    Attributes:
        accession_number: OBR-18 (ORM^O01) or IPC-1 (OMI^O23): the join key with the study.
        priority: Normalised order priority.
        procedure_code: Code of the requested procedure (OBR-4.1), e.g. a LOINC code.
        procedure_scheme: Its coding scheme (OBR-4.3), e.g. ``LN``.
        procedure_meaning: Its text (OBR-4.2).
        indication: Clinical indication / reason for study (OBR-31 text), may be empty.
        patient_id: PID-3.1, used only to check identity against the study (never logged).
        placer_order_number: ORC-2 / OBR-2.
        filler_order_number: ORC-3 / OBR-3.
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
    study_instance_uid: str = ""
    order_control: str = "NW"
    message_control_id: str = ""
