"""Value sets and terminology bindings of the result messages, and a checker for FHIR bundles.

One table of codes serves both message builders (HL7 v2 ORU and FHIR) so the two always say the
same thing. ``check_bindings`` checks what ``fhir.resources`` does not: required value-set
bindings of status fields, that every coding system is one we know, UCUM units from an allowed
list, and that every reference in a transaction bundle resolves.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from models.postprocess import Finding
from router.result import StudyIdentity
from router.vocabulary import OrderContext


class MessageInvalid(ValueError):
    """A result message could not be built or failed validation.

    The text names the study by Study Instance UID (never by patient name or ID) and says what
    is wrong in one line.
    """


@dataclass(frozen=True)
class Code:
    """A coded concept.

    Attributes:
        value: The code, e.g. ``52101004``.
        scheme: The HL7 v2 coding-system name (table 0396) or DICOM scheme designator, e.g. ``SCT``.
        meaning: Display text.
    """

    value: str
    scheme: str
    meaning: str


# Code systems (FHIR URIs).
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
DICOM_DCM = "http://dicom.nema.org/resources/ontology/DCM"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"  # diagnostic service section
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"  # identifier type
FLAG_CATEGORY = "http://terminology.hl7.org/CodeSystem/flag-category"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
OBSERVATION_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
# Identifier systems.
RFC3986 = "urn:ietf:rfc:3986"  # the value is itself a URI (urn:uuid:…, urn:oid:…)
DICOM_UID = "urn:dicom:uid"  # the value is urn:oid:<DICOM UID>

# HL7 v2 coding-system name (table 0396) → FHIR system.
FHIR_SYSTEM_BY_SCHEME: dict[str, str] = {
    "SCT": SNOMED,
    "LN": LOINC,
    "DCM": DICOM_DCM,
    "UCUM": UCUM,
}

KNOWN_SYSTEMS: frozenset[str] = frozenset(
    {
        SNOMED,
        LOINC,
        UCUM,
        DICOM_DCM,
        V2_0074,
        V2_0203,
        FLAG_CATEGORY,
        OBSERVATION_CATEGORY,
        OBSERVATION_INTERPRETATION,
        RFC3986,
        DICOM_UID,
    }
)

# Small HL7 code systems: the codes these messages may use from each.
ALLOWED_CODES: dict[str, frozenset[str]] = {
    V2_0074: frozenset({"RAD"}),
    V2_0203: frozenset({"ACSN", "MR", "PLAC", "FILL"}),
    FLAG_CATEGORY: frozenset({"clinical"}),
    OBSERVATION_CATEGORY: frozenset({"imaging"}),
    OBSERVATION_INTERPRETATION: frozenset({"AA", "A"}),
}

# An identifier's system: the site's own (configured) or a URN; absolute, no whitespace.
IDENTIFIER_SYSTEM = re.compile(r"(urn:[A-Za-z0-9][A-Za-z0-9-]*:|https?://)\S+")
_IDENTIFIER_PATH = re.compile(r"\.identifier(\[\d+\])?\Z")

# Required bindings (FHIR R4B value sets), by resource type.
DIAGNOSTIC_REPORT_STATUS = frozenset(
    {
        "registered",
        "partial",
        "preliminary",
        "final",
        "amended",
        "corrected",
        "appended",
        "cancelled",
        "entered-in-error",
        "unknown",
    }
)
OBSERVATION_STATUS = frozenset(
    {
        "registered",
        "preliminary",
        "final",
        "amended",
        "corrected",
        "cancelled",
        "entered-in-error",
        "unknown",
    }
)
FLAG_STATUS = frozenset({"active", "inactive", "entered-in-error"})
DEVICE_STATUS = frozenset({"active", "inactive", "entered-in-error", "unknown"})
STATUS_BINDINGS: dict[str, frozenset[str]] = {
    "DiagnosticReport": DIAGNOSTIC_REPORT_STATUS,
    "Observation": OBSERVATION_STATUS,
    "Flag": FLAG_STATUS,
    "Device": DEVICE_STATUS,
}
BUNDLE_TYPES = frozenset(
    {
        "document",
        "message",
        "transaction",
        "transaction-response",
        "batch",
        "batch-response",
        "history",
        "searchset",
        "collection",
    }
)
HTTP_VERBS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"})

# UCUM units of the measurements. A probability goes out in "1", UCUM's unit of a dimensionless
# ratio, as the 0-1 number the model produced: rescaling to "%" would make SR, ORU and FHIR
# disagree in the last digit and invite 0.97 % misreadings.
UNIT_RATIO = Code("1", "UCUM", "1")
UNIT_ML = Code("mL", "UCUM", "mL")
UNIT_MM2 = Code("mm2", "UCUM", "mm2")
UCUM_UNITS: frozenset[str] = frozenset({UNIT_RATIO.value, UNIT_ML.value, UNIT_MM2.value})

# Present / Absent as DICOM CID 240 "Present-Absent" codes them (the SR uses the same), so SR,
# ORU and FHIR agree. CID 240 lists 272519000 for Absent; it no longer lists the older 2667000.
PRESENT = Code("52101004", "SCT", "Present")
ABSENT = Code("272519000", "SCT", "Absent")
# Measurements of a finding (the DICOM SR codes for the same quantities).
PROBABILITY = Code("122157", "DCM", "Probability")
VOLUME = Code("118565006", "SCT", "Volume")
AREA = Code("42798000", "SCT", "Area")
# The report as a whole.
IMAGING_REPORT = Code("18748-4", "LN", "Diagnostic imaging study")
PRELIMINARY_NOTICE = "AI result - preliminary, not verified"


@dataclass(frozen=True)
class Measurement:
    """One number reported for a finding, rounded once so every message carries the same value.

    Attributes:
        code: What is measured (probability, volume, area).
        unit: Its UCUM unit.
        text: The rounded value as decimal text (HL7 NM, FHIR decimal), no exponent.
    """

    code: Code
    unit: Code
    text: str

    @property
    def value(self) -> float:
        """The rounded value as a number."""
        return float(self.text)


def measurements(finding: Finding) -> list[Measurement]:
    """Probability (0-1, 6 decimals, as the SR), volume (mL, 3 decimals), area (mm², 2 decimals).

    Measurements the model did not produce (None) are left out.

    Raises:
        MessageInvalid: A value is NaN or infinite.
    """
    table = (
        (PROBABILITY, UNIT_RATIO, finding.probability, 6),
        (VOLUME, UNIT_ML, finding.volume_ml, 3),
        (AREA, UNIT_MM2, finding.area_mm2, 2),
    )
    return [
        Measurement(code, unit, decimal_text(value, places, what=f"{finding.name} {code.meaning}"))
        for code, unit, value, places in table
        if value is not None
    ]


def decimal_text(value: float, places: int, *, what: str = "value") -> str:
    """``round(value, places)`` (as the SR rounds) as decimal text without exponent."""
    if not math.isfinite(value):
        raise MessageInvalid(f"{what} is not a finite number")
    text = format(Decimal(repr(round(float(value), places))), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def check_order(study: StudyIdentity, order: OrderContext | None) -> None:
    """Refuse an order of another study or patient: it would attach the result to the wrong report.

    Raises:
        MessageInvalid: Accession number, Patient ID or Study Instance UID disagree.
    """
    if order is None:
        return
    uid = study.study_instance_uid
    if order.accession_number != study.accession_number:
        raise MessageInvalid(f"study {uid}: the order's accession number is not the study's")
    if order.patient_id and order.patient_id != study.patient_id:
        raise MessageInvalid(f"study {uid}: the order's patient ID is not the study's")
    if order.study_instance_uid and order.study_instance_uid != uid:
        raise MessageInvalid(f"study {uid}: the order names Study Instance UID of another study")


def check_bindings(bundle: dict[str, Any]) -> list[str]:
    """Binding violations of a FHIR bundle; empty when it is fine.

    Checks: required status bindings (Bundle.type, request.method, each resource's status), every
    coding ``system`` is known and every identifier ``system`` an absolute URI (identifier
    systems are the site's), codes of the small HL7 systems and UCUM units are from allowed
    lists, every Quantity is UCUM, and every reference resolves to an entry's ``fullUrl`` (with
    the stated type) or is a logical reference by identifier with a system and a value.
    Messages name paths and codes only, never identifier values (they may be patient IDs).
    """
    violations: list[str] = []
    if bundle.get("type") not in BUNDLE_TYPES:
        violations.append(f"Bundle.type {bundle.get('type')!r} not in bundle-type")
    targets: dict[str, str] = {}
    entries = bundle.get("entry") or []
    for i, entry in enumerate(entries):
        resource = entry.get("resource") or {}
        if "fullUrl" not in entry:
            continue
        if entry["fullUrl"] in targets:
            violations.append(f"entry[{i}].fullUrl {entry['fullUrl']!r} is not unique")
        targets[entry["fullUrl"]] = str(resource.get("resourceType", ""))
    for i, entry in enumerate(entries):
        where = f"entry[{i}]"
        method = (entry.get("request") or {}).get("method")
        if bundle.get("type") in {"transaction", "batch"} and method not in HTTP_VERBS:
            violations.append(f"{where}.request.method {method!r} not in http-verb")
        resource = entry.get("resource") or {}
        kind = str(resource.get("resourceType", ""))
        allowed = STATUS_BINDINGS.get(kind)
        if allowed is not None and resource.get("status") not in allowed:
            violations.append(f"{where} {kind}.status {resource.get('status')!r} not in value set")
    for path, node in _dicts(bundle, "Bundle"):
        violations.extend(_check_node(path, node, targets))
    return violations


def _check_node(path: str, node: dict[str, Any], targets: dict[str, str]) -> list[str]:
    found: list[str] = []
    system = node.get("system")
    if _IDENTIFIER_PATH.search(path):
        if not isinstance(system, str) or not IDENTIFIER_SYSTEM.fullmatch(system):
            found.append(f"{path}.system is not an absolute URI")
    elif isinstance(system, str):
        if system not in KNOWN_SYSTEMS:
            found.append(f"{path}.system {system!r} is not a known system")
        elif system in ALLOWED_CODES and node.get("code") not in ALLOWED_CODES[system]:
            found.append(f"{path}.code {node.get('code')!r} not allowed in {system}")
        elif system == UCUM and node.get("code") not in UCUM_UNITS:
            found.append(f"{path}.code {node.get('code')!r} is not an allowed UCUM unit")
    if path.endswith("Quantity") and system != UCUM:
        found.append(f"{path} is not a UCUM quantity")
    if "reference" in node:
        reference = node["reference"]
        if reference not in targets:
            found.append(f"{path}.reference {reference!r} resolves to no entry")
        elif "type" in node and node["type"] != targets[reference]:
            found.append(f"{path}.type {node['type']!r} but the entry is {targets[reference]!r}")
    elif _is_logical_reference(node) and not node["identifier"].get("value"):
        # its identifier's system is checked as every identifier's is
        found.append(f"{path} is a logical reference without identifier.value")
    return found


def _is_logical_reference(node: dict[str, Any]) -> bool:
    """A Reference by identifier (``type`` + ``identifier``), e.g. the Patient by Patient ID."""
    return isinstance(node.get("identifier"), dict) and isinstance(node.get("type"), str)


def _dicts(node: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every JSON object under ``node`` with its path, depth first."""
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _dicts(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _dicts(value, f"{path}[{i}]")
