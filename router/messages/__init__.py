"""HL7 v2 ORU^R01 and FHIR R4B messages that carry an AI result to the RIS and the EHR.

Both are built from an ``AIResult`` (and the order, when one arrived) only, say "preliminary"
everywhere, and are validated before they leave: the ORU at hl7apy STRICT level, the FHIR bundle
by ``fhir.resources`` plus the terminology bindings in ``codes``.
"""

from router.messages.codes import MessageInvalid, check_bindings
from router.messages.fhir import build_fhir_bundle, validate_bundle
from router.messages.hl7_oru import build_oru, validate_oru
from router.messages.worklist_signal import (
    build_rank_change_fhir,
    build_rank_change_hl7,
    validate_rank_change_fhir,
    validate_rank_change_hl7,
)

__all__ = [
    "MessageInvalid",
    "build_fhir_bundle",
    "build_oru",
    "build_rank_change_fhir",
    "build_rank_change_hl7",
    "check_bindings",
    "validate_bundle",
    "validate_oru",
    "validate_rank_change_fhir",
    "validate_rank_change_hl7",
]
