"""FHIR R4B transaction Bundle for one AI result: a preliminary DiagnosticReport and its parts.

Entries (all POST, conditional on their identifier so a re-delivery creates nothing twice):

- ``Device``: the algorithm (name, version, manufacturer, device UID as ``urn:oid``);
- one ``Observation`` per finding: code = the finding's concept, value = Present / Absent
  (SNOMED), components probability (UCUM ``1``), volume (``mL``) and area (``mm2``),
  ``device`` → the Device, ``derivedFrom`` → the ImagingStudy;
- one ``Flag`` per critical finding that is present;
- the ``DiagnosticReport`` (status preliminary, category RAD, LOINC 18748-4) → Observations;
- for a result that replaces an earlier version, a ``Provenance`` (POST, no condition: it has
  no identifier; the outbox delivers a bundle once) whose target is the new report and whose
  entity (role ``revision``) is the replaced report, by its identifier.

- the ``Patient``, identifier only (type MR, the site's MRN system; never a name), POSTed with
  ``ifNoneExist`` on that identifier so a server that knows the patient creates nothing; every
  ``subject`` references it by its ``urn:uuid`` fullUrl, which the server resolves.

ImagingStudy and ServiceRequest live in the PACS and the RIS/EHR, so they are referenced by
identifier, each with its system: the study by ``urn:dicom:uid`` and ``urn:oid:`` Study Instance
UID, the order by accession number (type ACSN) and, when an order arrived, by its placer (PLAC)
and filler (FILL) order numbers; systems come from ``identifiers`` (``IdentifierSystems``).
The patient's name is never written. Every id is a UUID derived from (study, device, part), so
building twice gives identical JSON and a re-run of the same model version matches the first.
The ids of the report, its Observations and Flags (and so their identifiers) also derive from
the result's input digest (``AIResult.input_digest``): a re-run on the same input matches the
first, while a new version (more images, another model version) makes new resources, because
a conditional create on the old identifier would keep the old findings.

Versions: R4B DiagnosticReport has no ``replaces`` element, and the core ``replaces``
extension is defined for canonical resources only, not for DiagnosticReport. A new version is
therefore a new DiagnosticReport with status ``amended`` ("modified subsequent to being
final/preliminary"), linked to the report it replaces by a core ``Provenance`` resource: target
the new report, ``entity.role`` ``revision`` and ``entity.what`` the replaced report (a logical
reference by its identifier), ``agent.who`` the algorithm's Device.
"""

from __future__ import annotations

import copy
import logging
import re
import uuid
from datetime import datetime
from typing import Any
from urllib.parse import quote

import pydantic
from fhir.resources.R4B.bundle import Bundle

from models.postprocess import Finding
from router.messages.codes import (
    ABSENT,
    DICOM_UID,
    FHIR_SYSTEM_BY_SCHEME,
    FLAG_CATEGORY,
    IMAGING_REPORT,
    OBSERVATION_CATEGORY,
    OBSERVATION_INTERPRETATION,
    PRELIMINARY_NOTICE,
    PRESENT,
    RFC3986,
    UCUM,
    V2_0074,
    V2_0203,
    Code,
    MessageInvalid,
    check_bindings,
    check_order,
    measurements,
)
from router.messages.identifiers import IdentifierSystems, patient_authority
from router.result import AIResult, StudyIdentity
from router.vocabulary import OrderContext

log = logging.getLogger(__name__)

Json = dict[str, Any]
# Fixed namespace of statlane's FHIR ids; changing it would re-create every resource.
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_OID, "statlane.router.messages.fhir")


def build_fhir_bundle(
    result: AIResult,
    order: OrderContext | None,
    *,
    now: datetime,
    systems: IdentifierSystems | None = None,
) -> Json:
    """The transaction Bundle of ``result`` as plain JSON data.

    Args:
        result: The postprocessed AI result.
        order: The imaging order, if one arrived (checked against the study; its procedure
            text, placer/filler order numbers and the patient ID's assigning authority are used).
        now: Bundle.timestamp, timezone-aware.
        systems: Identifier systems of the site (default: statlane-local URNs).

    Raises:
        MessageInvalid: The result cannot make a valid bundle (no Patient ID, a coding scheme
            without a FHIR system, an order of another study, a naive datetime ...); the
            bundle is checked with ``validate_bundle`` before it is returned.
    """
    study = result.study
    uid = study.study_instance_uid
    check_order(study, order)
    if not study.patient_id:
        raise MessageInvalid(f"study {uid}: no Patient ID; DiagnosticReport.subject needs one")
    systems = systems if systems is not None else IdentifierSystems()
    patient = _patient(study, order, systems)
    based_on = _service_requests(study, order, systems)
    device = _device(result)
    observations = [
        _observation(result, f, i, device, patient, based_on) for i, f in enumerate(result.findings)
    ]
    flags = [
        _flag(result, f, device, patient)
        for f in result.findings
        if f.critical and f.present  # a Flag pages someone: critical positives only
    ]
    report = _report(result, order, observations, patient, based_on)
    entries = [
        _entry(patient),
        _entry(device),
        *(_entry(o) for o in observations),
        *map(_entry, flags),
    ]
    revision = [] if result.replaces is None else [_entry(_provenance(result, report, device))]
    bundle: Json = {
        "resourceType": "Bundle",
        "id": _uuid(result, "bundle"),
        "type": "transaction",
        "timestamp": _instant(now),
        "entry": [*entries, _entry(report), *revision],
    }
    try:  # eager: a bundle that leaves here has passed the models and the bindings
        validate_bundle(bundle)
    except MessageInvalid as exc:
        raise MessageInvalid(f"study {uid}: built an invalid bundle: {exc}") from None
    log.debug(
        "built FHIR bundle for study %s: %d observations, %d flags",
        uid,
        len(observations),
        len(flags),
    )
    return bundle


def validate_bundle(bundle: Json) -> None:
    """Validate ``bundle`` with ``fhir.resources`` (R4B models) and ``codes.check_bindings``.

    Raises:
        MessageInvalid: The first problems, by path (input values are left out: PHI).
    """
    try:
        Bundle.model_validate(bundle)
    except pydantic.ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
            for e in exc.errors(include_url=False, include_input=False, include_context=False)
        ]
        raise MessageInvalid(f"FHIR bundle invalid: {'; '.join(problems[:3])}") from None
    violations = check_bindings(bundle)
    if violations:
        raise MessageInvalid(f"FHIR bundle violates bindings: {'; '.join(violations[:3])}")


def _entry(resource: Json) -> Json:
    if "identifier" not in resource:  # a Provenance: nothing to match a conditional create on
        return {
            "fullUrl": f"urn:uuid:{resource['id']}",
            "resource": resource,
            "request": {"method": "POST", "url": resource["resourceType"]},
        }
    identifier = resource["identifier"][0]
    return {
        "fullUrl": f"urn:uuid:{resource['id']}",
        "resource": resource,
        "request": {
            "method": "POST",
            "url": resource["resourceType"],
            "ifNoneExist": "identifier=" + search_token(identifier["system"], identifier["value"]),
        },
    }


def search_token(system: str, value: str) -> str:
    """``system|value`` as a FHIR token search parameter value in a URL query.

    FHIR's own escapes first (``\\`` before ``|``, ``,`` and ``$`` in each part), then URL
    percent-encoding of everything but unreserved characters, ``:``, ``/`` and the ``|``.
    """

    def fhir_escape(text: str) -> str:
        for char in ("\\", "|", ",", "$"):
            text = text.replace(char, "\\" + char)
        return text

    return quote(f"{fhir_escape(system)}|{fhir_escape(value)}", safe=":/|")


def _patient(study: StudyIdentity, order: OrderContext | None, systems: IdentifierSystems) -> Json:
    """The Patient by its identifier only (type MR); conditionally created, never a name."""
    system = systems.patient(patient_authority(study, order))
    return {
        "resourceType": "Patient",
        "id": str(uuid.uuid5(_NAMESPACE, f"patient|{system}|{study.patient_id}")),
        "identifier": [
            {
                "use": "usual",
                "type": {"coding": [{"system": V2_0203, "code": "MR"}]},
                "system": system,
                "value": study.patient_id,
            }
        ],
    }


def _device(result: AIResult) -> Json:
    algorithm = result.algorithm
    device_id = str(uuid.uuid5(_NAMESPACE, f"device|{algorithm.device_uid}"))
    return {
        "resourceType": "Device",
        "id": device_id,
        "identifier": [{"system": RFC3986, "value": f"urn:oid:{algorithm.device_uid}"}],
        "status": "active",
        "manufacturer": algorithm.manufacturer,
        "deviceName": [{"name": algorithm.name, "type": "model-name"}],
        "version": [{"value": algorithm.version}],
    }


def _observation(
    result: AIResult,
    finding: Finding,
    index: int,
    device: Json,
    patient: Json,
    based_on: list[Json],
) -> Json:
    value = PRESENT if finding.present else ABSENT
    observation: Json = {
        "resourceType": "Observation",
        "id": _uuid(result, f"observation|{index}|{finding.name}"),
        "status": "preliminary",
        "category": [_concept(Code("imaging", "", "Imaging"), OBSERVATION_CATEGORY)],
        "code": _finding_concept(result, finding),
        "subject": _reference(patient),
        "issued": _instant(result.completed_at),
        "valueCodeableConcept": _concept(value),
        "device": _reference(device),
        "derivedFrom": [_imaging_study(result.study)],
    }
    observation["identifier"] = [_identifier(observation)]
    if based_on:
        observation["basedOn"] = copy.deepcopy(based_on)
    effective = _study_date(result.study)
    if effective:
        observation["effectiveDateTime"] = effective
    if finding.present:
        code = (
            Code("AA", "", "Critical abnormal") if finding.critical else Code("A", "", "Abnormal")
        )
        observation["interpretation"] = [_concept(code, OBSERVATION_INTERPRETATION)]
    components = [
        {
            "code": _concept(m.code),
            "valueQuantity": {
                "value": m.value,
                "unit": m.unit.meaning,
                "system": UCUM,
                "code": m.unit.value,
            },
        }
        for m in measurements(finding)
    ]
    if components:
        observation["component"] = components
    return _ordered(observation)


def _flag(result: AIResult, finding: Finding, device: Json, patient: Json) -> Json:
    flag: Json = {
        "resourceType": "Flag",
        "id": _uuid(result, f"flag|{finding.name}"),
        "status": "active",
        "category": [_concept(Code("clinical", "", "Clinical"), FLAG_CATEGORY)],
        "code": _finding_concept(result, finding),
        "subject": _reference(patient),
        "period": {"start": _instant(result.completed_at)},
        "author": _reference(device),
    }
    flag["identifier"] = [_identifier(flag)]
    return _ordered(flag)


def _report(
    result: AIResult,
    order: OrderContext | None,
    observations: list[Json],
    patient: Json,
    based_on: list[Json],
) -> Json:
    study = result.study
    code = _concept(IMAGING_REPORT)
    described = (order.procedure_meaning if order is not None else "") or study.study_description
    if described:
        code["text"] = described
    report: Json = {
        "resourceType": "DiagnosticReport",
        "id": report_id(result),
        "status": "preliminary" if result.replaces is None else "amended",
        "category": [_concept(Code("RAD", "", "Radiology"), V2_0074)],
        "code": code,
        "subject": _reference(patient),
        "issued": _instant(result.completed_at),
        "imagingStudy": [_imaging_study(study)],
        "result": [_reference(o) for o in observations],
        "conclusion": _conclusion(result),
    }
    report["identifier"] = [_identifier(report)]
    if based_on:
        report["basedOn"] = copy.deepcopy(based_on)
    effective = _study_date(study)
    if effective:
        report["effectiveDateTime"] = effective
    present = [_finding_concept(result, f) for f in result.findings if f.present]
    if present:
        report["conclusionCode"] = present
    return _ordered(report)


def report_id(result: AIResult) -> str:
    """The logical id of the result's DiagnosticReport (a UUID; its identifier is
    ``urn:uuid:<id>`` in system ``urn:ietf:rfc:3986``), recorded so a later version can name it."""
    return _uuid(result, "report")


def report_identifier(report_uuid: str) -> Json:
    """The identifier of the DiagnosticReport whose logical id is ``report_uuid``."""
    return {"system": RFC3986, "value": f"urn:uuid:{report_uuid}"}


def _provenance(result: AIResult, report: Json, device: Json) -> Json:
    """The new report is a revision of the one it replaces (R4B Provenance, entity role
    ``revision``); the replaced report is named by its identifier."""
    prior = result.replaces
    assert prior is not None
    return {
        "resourceType": "Provenance",
        "id": _uuid(result, "provenance"),
        "target": [_reference(report)],
        "recorded": _instant(result.completed_at),
        "reason": [{"text": "AI result replaced: a run on more images or a new model version"}],
        "agent": [{"who": _reference(device)}],
        "entity": [
            {
                "role": "revision",
                "what": {
                    "type": "DiagnosticReport",
                    "identifier": report_identifier(prior.report_id),
                },
            }
        ],
    }


def _conclusion(result: AIResult) -> str:
    """One line per finding, then who said so; the same numbers as the components."""
    lines = [f"{PRELIMINARY_NOTICE}."]
    for finding in result.findings:
        values = ", ".join(
            f"{m.code.meaning.lower()} {m.text}{'' if m.unit.value == '1' else ' ' + m.unit.value}"
            for m in measurements(finding)
        )
        state = "present" if finding.present else "absent"
        lines.append(f"{finding.concept_meaning}: {state} ({values}).")
    algorithm = result.algorithm
    lines.append(
        f"Algorithm {algorithm.name} version {algorithm.version} ({algorithm.manufacturer})."
    )
    return " ".join(lines)


def _finding_concept(result: AIResult, finding: Finding) -> Json:
    """The finding's code; a private code (an imported model's placeholder, ``99STATLANE``)
    has no FHIR system, so the concept carries text only and says it is not coded."""
    code = Code(finding.concept_value, finding.concept_scheme, finding.concept_meaning)
    if code.scheme not in FHIR_SYSTEM_BY_SCHEME:
        return {"text": f"{code.meaning} (not coded: {code.scheme} {code.value})"}
    return _concept(code)


def _concept(code: Code, system: str | None = None) -> Json:
    coding = {
        "system": system or FHIR_SYSTEM_BY_SCHEME[code.scheme],
        "code": code.value,
        "display": code.meaning,
    }
    return {"coding": [coding], "text": code.meaning}


def _imaging_study(study: StudyIdentity) -> Json:
    return {
        "type": "ImagingStudy",
        "identifier": {"system": DICOM_UID, "value": f"urn:oid:{study.study_instance_uid}"},
    }


def _service_requests(
    study: StudyIdentity, order: OrderContext | None, systems: IdentifierSystems
) -> list[Json]:
    """The order, by each identifier the RIS gave it: accession (ACSN), placer (PLAC) and
    filler (FILL) order numbers; logical references, each identifier with its system."""
    named: list[tuple[str, str, str]] = []
    if study.accession_number:
        named.append(("ACSN", systems.accession_system(), study.accession_number))
    if order is not None and order.placer_order_number:
        system = systems.order_number("placer", order.placer_order_authority)
        named.append(("PLAC", system, order.placer_order_number))
    if order is not None and order.filler_order_number:
        system = systems.order_number("filler", order.filler_order_authority)
        named.append(("FILL", system, order.filler_order_number))
    return [
        {
            "type": "ServiceRequest",
            "identifier": {
                "type": {"coding": [{"system": V2_0203, "code": code}]},
                "system": system,
                "value": value,
            },
        }
        for code, system, value in named
    ]


def _reference(resource: Json) -> Json:
    return {"reference": f"urn:uuid:{resource['id']}", "type": resource["resourceType"]}


def _identifier(resource: Json) -> Json:
    return {"system": RFC3986, "value": f"urn:uuid:{resource['id']}"}


def _uuid(result: AIResult, part: str) -> str:
    """Same study, model version, input and part → same UUID (re-runs do not duplicate)."""
    study, device = result.study.study_instance_uid, result.algorithm.device_uid
    key = f"{study}|{device}|{result.input_digest}|{part}"
    return str(uuid.uuid5(_NAMESPACE, key))


def _instant(moment: datetime) -> str:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise MessageInvalid("datetimes in messages must be timezone-aware")
    return moment.isoformat()


def _study_date(study: StudyIdentity) -> str:
    """FHIR date of the study. Only the date: DICOM times carry no zone, FHIR times need one."""
    if not re.fullmatch(r"\d{8}", study.study_date):
        return ""
    d = study.study_date
    return f"{d[:4]}-{d[4:6]}-{d[6:]}"


_ORDER = ("resourceType", "id", "identifier")


def _ordered(resource: Json) -> Json:
    """resourceType, id and identifier first: easier to read, and stable JSON."""
    return {
        **{k: resource[k] for k in _ORDER if k in resource},
        **{k: v for k, v in resource.items() if k not in _ORDER},
    }
