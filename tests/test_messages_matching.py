"""Messages a receiver can match: identifiers with systems, namespaces and authorities.

The FHIR bundle: a Patient with the site's MRN system, every reference resolvable (checked by
``tests.fhir_resolution``, what a FHIR server would do) and R4B-valid. The ORU: the order's
identifiers as received, statlane's own filler number without an order, ZDS from the study,
PID-3 with its assigning authority; each parsed back at hl7apy STRICT level.
"""

from __future__ import annotations

import copy
import dataclasses
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from router.messages import MessageInvalid, build_fhir_bundle, build_oru, validate_oru
from router.messages.codes import DICOM_UID, V2_0203
from router.messages.fhir import search_token
from router.messages.identifiers import IdentifierSystems, statlane_filler_number
from router.result import AIResult
from router.vocabulary import AssigningAuthority, OrderContext, OrderPriority
from serving.config import IdentifiersConfig
from serving.gateway.hl7_orders import parse_order
from serving.jobstore import JobStore
from tests.fhir_resolution import unresolved_references
from tests.result_factory import ct_head_result

NOW = datetime(2026, 11, 30, 12, 5, 0, tzinfo=UTC)
SITE_SYSTEMS = IdentifiersConfig(
    mrn_system="urn:oid:1.2.840.99999.1",
    accession_system="urn:oid:1.2.840.99999.2",
    order_number_systems={"RIS": "https://ris.example.org/placer"},
).systems()


@pytest.fixture(scope="module")
def ich(tmp_path_factory: pytest.TempPathFactory) -> AIResult:
    """CT head with a critical hemorrhage; IssuerOfPatientID cleared (set per test)."""
    result = ct_head_result(tmp_path_factory.mktemp("ich"), present=True)
    return with_study(result, issuer_of_patient_id="")


def with_study(result: AIResult, **changes: Any) -> AIResult:
    return dataclasses.replace(result, study=dataclasses.replace(result.study, **changes))


def order_for(result: AIResult) -> OrderContext:
    """An order as the RIS sent it: namespaced order numbers, PID-3.4 with an ISO OID."""
    return OrderContext(
        accession_number=result.study.accession_number,
        priority=OrderPriority.STAT,
        procedure_code="24725-4",
        procedure_scheme="LN",
        procedure_meaning="CT Head",
        patient_id=result.study.patient_id,
        placer_order_number="PLC-77",
        placer_order_authority=AssigningAuthority("RIS"),
        filler_order_number="FIL-88",
        filler_order_authority=AssigningAuthority("PACS", "1.2.840.99999.7", "ISO"),
        patient_id_authority=AssigningAuthority("HOSP", "1.2.840.99999.5", "ISO"),
    )


def resources(bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def systems_in(node: Any) -> list[Any]:
    if isinstance(node, dict):
        found = [node["system"]] if "system" in node else []
        return found + [s for v in node.values() for s in systems_in(v)]
    if isinstance(node, list):
        return [s for v in node for s in systems_in(v)]
    return []


def segments(text: str, name: str) -> list[list[str]]:
    return [s.split("|") for s in text.split("\r") if s.startswith(name + "|")]


def oru(result: AIResult, order: OrderContext | None = None) -> str:
    text = build_oru(result, order, message_control_id="MSG0001", now=NOW)
    message = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT)
    assert message.validate() is True
    validate_oru(text)
    return text


# ---------------------------------------------------------------- FHIR


def test_bundle_has_the_patient_with_the_site_systems_and_resolves(ich: AIResult) -> None:
    bundle = build_fhir_bundle(ich, order_for(ich), now=NOW, systems=SITE_SYSTEMS)
    Bundle.model_validate(bundle)
    assert unresolved_references(bundle) == []
    (patient,) = resources(bundle, "Patient")
    assert patient["identifier"] == [
        {
            "use": "usual",
            "type": {"coding": [{"system": V2_0203, "code": "MR"}]},
            "system": "urn:oid:1.2.840.99999.1",
            "value": ich.study.patient_id,
        }
    ]
    assert "name" not in patient
    (entry,) = [e for e in bundle["entry"] if e["resource"] is patient]
    assert entry["request"] == {
        "method": "POST",
        "url": "Patient",
        "ifNoneExist": f"identifier=urn:oid:1.2.840.99999.1|{ich.study.patient_id}",
    }
    patient_ref = {"reference": entry["fullUrl"], "type": "Patient"}
    (report,) = resources(bundle, "DiagnosticReport")
    assert report["subject"] == patient_ref
    assert all(o["subject"] == patient_ref for o in resources(bundle, "Observation"))
    assert all(f["subject"] == patient_ref for f in resources(bundle, "Flag"))
    based_on = {
        r["identifier"]["type"]["coding"][0]["code"]: (
            r["type"],
            r["identifier"]["system"],
            r["identifier"]["value"],
        )
        for r in report["basedOn"]
    }
    assert based_on == {
        "ACSN": ("ServiceRequest", "urn:oid:1.2.840.99999.2", ich.study.accession_number),
        "PLAC": ("ServiceRequest", "https://ris.example.org/placer", "PLC-77"),
        "FILL": ("ServiceRequest", "urn:oid:1.2.840.99999.7", "FIL-88"),  # EI-3 ISO
    }
    assert report["imagingStudy"] == [
        {
            "type": "ImagingStudy",
            "identifier": {"system": DICOM_UID, "value": f"urn:oid:{ich.study.study_instance_uid}"},
        }
    ]


@pytest.mark.parametrize(
    ("issuer", "order_authority", "expected"),
    [
        ("", None, "urn:statlane:local:mrn"),
        ("HOSP A", None, "urn:statlane:local:mrn:HOSP%20A"),  # DICOM IssuerOfPatientID
        ("HOSP", AssigningAuthority("HOSP", "1.2.840.99999.5", "ISO"), "urn:oid:1.2.840.99999.5"),
        ("", AssigningAuthority("MAIN"), "urn:statlane:local:mrn:MAIN"),  # the order's PID-3.4
    ],
)
def test_default_systems_are_explicit_never_empty(
    ich: AIResult, issuer: str, order_authority: AssigningAuthority | None, expected: str
) -> None:
    result = with_study(ich, issuer_of_patient_id=issuer)
    order = None
    if order_authority is not None:
        order = dataclasses.replace(order_for(result), patient_id_authority=order_authority)
    bundle = build_fhir_bundle(result, order, now=NOW)
    assert unresolved_references(bundle) == []
    (patient,) = resources(bundle, "Patient")
    assert patient["identifier"][0]["system"] == expected
    systems = systems_in(bundle)
    assert systems
    assert all(isinstance(s, str) and s for s in systems)
    (report,) = resources(bundle, "DiagnosticReport")
    accession = report["basedOn"][0]["identifier"]
    assert accession["system"] == "urn:statlane:local:accession"


def test_a_study_without_accession_or_order_has_no_based_on(ich: AIResult) -> None:
    bundle = build_fhir_bundle(with_study(ich, accession_number=""), None, now=NOW)
    assert unresolved_references(bundle) == []
    (report,) = resources(bundle, "DiagnosticReport")
    assert "basedOn" not in report


def test_the_resolver_fails_on_each_unresolvable_reference(ich: AIResult) -> None:
    bundle = build_fhir_bundle(ich, order_for(ich), now=NOW, systems=SITE_SYSTEMS)
    (patient,) = resources(bundle, "Patient")
    system, value = patient["identifier"][0]["system"], patient["identifier"][0]["value"]

    conditional = copy.deepcopy(bundle)
    resources(conditional, "DiagnosticReport")[0]["subject"] = {
        "reference": f"Patient?identifier={search_token(system, value)}"
    }
    assert unresolved_references(conditional) == []  # a conditional reference that matches

    cases = {
        "no fullUrl": lambda r: r["subject"].update(reference="urn:uuid:nowhere"),
        "matches 0": lambda r: r["subject"].update(
            reference=f"Patient?identifier={search_token(system, 'other')}"
        ),
        "no system": lambda r: r["basedOn"][0]["identifier"].pop("system"),
        "not local": lambda r: r["subject"].update(reference="Patient/123"),
    }
    for name, corrupt in cases.items():
        broken = copy.deepcopy(bundle)
        corrupt(resources(broken, "DiagnosticReport")[0])
        assert len(unresolved_references(broken)) == 1, name
    moved = copy.deepcopy(bundle)
    moved["entry"][0]["request"]["ifNoneExist"] = "identifier=" + search_token(system, "x")
    assert unresolved_references(moved) == [
        "entry[0].request.ifNoneExist names no identifier of its resource"
    ]


def test_if_none_exist_escapes_search_delimiters() -> None:
    token = search_token("urn:statlane:local:mrn", "A|B,C$D\\E F&G")
    assert token == "urn:statlane:local:mrn|A%5C|B%5C%2CC%5C%24D%5C%5CE%20F%26G"


# ---------------------------------------------------------------- HL7 ORU


def test_oru_carries_the_order_identifiers_as_received(ich: AIResult) -> None:
    text = oru(ich, order_for(ich))
    (pid,) = segments(text, "PID")
    assert pid[3] == f"{ich.study.patient_id}^^^HOSP&1.2.840.99999.5&ISO^MR"
    (orc,) = segments(text, "ORC")
    (obr,) = segments(text, "OBR")
    assert orc[2] == obr[2] == "PLC-77^RIS"
    assert orc[3] == obr[3] == "FIL-88^PACS^1.2.840.99999.7^ISO"
    assert obr[18] == ich.study.accession_number
    assert text.rstrip("\r").split("\r")[-1] == (
        f"ZDS|{ich.study.study_instance_uid}^STATLANE^Application^DICOM"
    )


def test_oru_without_order_uses_statlane_filler_number_and_the_study(ich: AIResult) -> None:
    result = with_study(ich, issuer_of_patient_id="HOSP")
    text = oru(result)
    filler = statlane_filler_number(ich.study.study_instance_uid, ich.algorithm.device_uid)
    assert len(filler) == 16
    (orc,) = segments(text, "ORC")
    (obr,) = segments(text, "OBR")
    assert orc[2] == obr[2] == ""
    assert orc[3] == obr[3] == f"{filler}^STATLANE"
    assert obr[18] == ich.study.accession_number  # from the DICOM header
    (zds,) = segments(text, "ZDS")
    assert zds[1].split("^")[0] == ich.study.study_instance_uid
    (pid,) = segments(text, "PID")
    assert pid[3] == f"{ich.study.patient_id}^^^HOSP^MR"  # IssuerOfPatientID
    assert oru(result) == text  # deterministic
    other = dataclasses.replace(
        result, algorithm=dataclasses.replace(result.algorithm, device_uid="2.25.1")
    )
    assert segments(oru(other), "OBR")[0][3] != obr[3]  # another model, another number


def test_oru_without_accession_and_order_is_still_matchable(ich: AIResult) -> None:
    text = oru(with_study(ich, accession_number=""))
    (obr,) = segments(text, "OBR")
    assert obr[3].endswith("^STATLANE")
    assert len(obr) <= 18 or obr[18] == ""
    assert segments(text, "ZDS")[0][1].startswith(ich.study.study_instance_uid + "^")


def test_pid3_without_any_authority_keeps_type_mr(ich: AIResult) -> None:
    (pid,) = segments(oru(ich), "PID")
    assert pid[3] == f"{ich.study.patient_id}^^^^MR"


def test_validate_oru_requires_the_zds_last(ich: AIResult) -> None:
    text = oru(ich).rstrip("\r")
    *body, zds = text.split("\r")
    with pytest.raises(MessageInvalid, match="ZDS"):
        validate_oru("\r".join(body))
    with pytest.raises(MessageInvalid, match="ZDS"):
        validate_oru("\r".join([*body[:2], zds, *body[2:]]))
    with pytest.raises(MessageInvalid, match="ZDS-1"):
        validate_oru("\r".join([*body, "ZDS|not-a-uid^STATLANE^Application^DICOM"]))


def test_identifiers_received_survive_the_job_store(ich: AIResult, tmp_path: Path) -> None:
    """An order parsed from HL7, stored, read back for the result: namespaces as received."""
    study = ich.study
    text = "\r".join(
        [
            "MSH|^~\\&|RIS|HOSP|STATLANE|RAD|20240311083000||ORM^O01|MSG9|P|2.4",
            f"PID|1||{study.patient_id}^^^HOSP&1.2.840.99999.5&ISO^MR||DOE^JANE",
            "ORC|NW|PLC-77^RIS|FIL-88^PACS^1.2.840.99999.7^ISO",
            f"OBR|1|PLC-77^RIS|FIL-88^PACS^1.2.840.99999.7^ISO|24725-4^CT Head^LN"
            f"||||||||||||||{study.accession_number}",
        ]
    )
    store = JobStore(f"sqlite:///{tmp_path / 'store.db'}", clock=lambda: NOW)
    store.record_order(parse_order(text))
    store.record_order(parse_order(text.replace("ORC|NW|PLC-77^RIS|", "ORC|XO|PLC-77|")))
    order = store.order_context(study.accession_number)
    assert order is not None
    assert order.placer_order_authority == AssigningAuthority("RIS")  # not sent again: kept
    assert order.filler_order_authority == AssigningAuthority("PACS", "1.2.840.99999.7", "ISO")
    assert order.patient_id_authority == AssigningAuthority("HOSP", "1.2.840.99999.5", "ISO")
    text = oru(ich, order)
    assert segments(text, "ORC")[0][2:4] == ["PLC-77^RIS", "FIL-88^PACS^1.2.840.99999.7^ISO"]
    assert segments(text, "PID")[0][3].endswith("^^^HOSP&1.2.840.99999.5&ISO^MR")


def test_identifier_systems_refuse_a_bad_site() -> None:
    with pytest.raises(ValueError, match="site"):
        IdentifierSystems(site="my site")


def test_oru_takes_every_study_uid_the_gateway_stores(ich: AIResult) -> None:
    """The gateway accepts any PS3.5 UID ("9.1" too): its study must still get an ORU."""
    text = oru(with_study(ich, study_instance_uid="9.1"), None)
    assert text.rstrip("\r").split("\r")[-1].startswith("ZDS|9.1^")
