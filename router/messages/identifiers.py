"""The identifiers a receiver matches a result on, with the FHIR systems they belong to.

Both message builders use these, so the ORU and the FHIR bundle name the patient, the order and
the study the same way:

- the patient ID's assigning authority: the order's PID-3.4 as received, else the study's DICOM
  IssuerOfPatientID (as HD-1, a namespace);
- statlane's own filler order number when no order arrived: deterministic from the study and the
  algorithm, namespace ``STATLANE``, so a re-run of the same model version replaces its result;
- FHIR ``Identifier.system`` of each: what the site configured (``identifiers`` in
  ``statlane.yaml``), else ``urn:oid:<universal ID>`` when the authority names an ISO OID, else a
  statlane-local URN ``urn:statlane:<site>:<kind>[:<namespace>]``. A system is never empty.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import quote

from router.result import StudyIdentity
from router.vocabulary import AssigningAuthority, OrderContext

STATLANE_NAMESPACE = "STATLANE"
"""EI-2 namespace of the filler order numbers statlane assigns itself."""
_OID = re.compile(r"[0-2](\.(0|[1-9]\d*))+")
_SITE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]*")


@dataclass(frozen=True)
class IdentifierSystems:
    """FHIR ``Identifier.system`` of the patient ID, the accession and the order numbers.

    Attributes:
        site: Names the statlane-local URNs used where nothing better is known
            (``urn:statlane:<site>:mrn``); letters, digits, ``.`` and ``-``.
        mrn: System of every patient ID (PID-3 / DICOM Patient ID); "" derives it from the
            assigning authority.
        accession: System of accession numbers; "" is ``urn:statlane:<site>:accession``.
        order_numbers: EI namespace (EI-2 of ORC-2/ORC-3) → system of those order numbers.
    """

    site: str = "local"
    mrn: str = ""
    accession: str = ""
    order_numbers: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _SITE.fullmatch(self.site):
            raise ValueError(f"identifier site {self.site!r}: letters, digits, '.' and '-' only")

    def patient(self, authority: AssigningAuthority) -> str:
        """System of a patient ID issued by ``authority``."""
        return self.mrn or _derived(self.site, "mrn", authority)

    def accession_system(self) -> str:
        """System of accession numbers."""
        return self.accession or f"urn:statlane:{self.site}:accession"

    def order_number(self, role: Literal["placer", "filler"], authority: AssigningAuthority) -> str:
        """System of a placer or filler order number issued by ``authority``."""
        configured = self.order_numbers.get(authority.namespace_id) if authority else None
        return configured or _derived(self.site, role, authority)


def _derived(site: str, kind: str, authority: AssigningAuthority) -> str:
    """``urn:oid:`` of an ISO universal ID, else ``urn:statlane:<site>:<kind>[:<issuer>]``."""
    universal = authority.universal_id.strip()
    if universal and authority.universal_id_type.upper() == "ISO" and _OID.fullmatch(universal):
        return f"urn:oid:{universal}"
    issuer = authority.namespace_id.strip() or universal
    base = f"urn:statlane:{site}:{kind}"
    return f"{base}:{quote(issuer, safe='')}" if issuer else base


def patient_authority(study: StudyIdentity, order: OrderContext | None) -> AssigningAuthority:
    """The patient ID's assigning authority: the order's PID-3.4, else IssuerOfPatientID."""
    if order is not None and order.patient_id_authority:
        return order.patient_id_authority
    return AssigningAuthority(namespace_id=study.issuer_of_patient_id.strip())


def statlane_filler_number(study_instance_uid: str, device_uid: str) -> str:
    """statlane's filler order number of one algorithm's result for one study (16 characters).

    ``SL`` and 14 hex digits of SHA-256 over the Study Instance UID and the algorithm's device
    UID: the same study and model version give the same number (a re-run replaces the result at
    the RIS), another model gets its own.
    """
    digest = hashlib.sha256(f"{study_instance_uid}|{device_uid}".encode()).hexdigest()
    return f"SL{digest[:14].upper()}"
