"""HL7 v2.5.1 ORU^R01 and FHIR R4B results (router.messages).

The ORU is parsed back at hl7apy STRICT level and read field by field with a plain splitter (an
oracle independent of the builder); the FHIR bundle goes through fhir.resources' R4B models and
``check_bindings``, which must also catch the corruptions we make on purpose.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from datetime import UTC, datetime
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from models.postprocess import Finding
from router.messages import (
    MessageInvalid,
    build_fhir_bundle,
    build_oru,
    check_bindings,
    validate_bundle,
    validate_oru,
)
from router.messages.codes import DICOM_UID, SNOMED, UCUM, V2_0203
from router.result import AIResult
from router.vocabulary import OrderContext, OrderPriority
from serving.gateway.hl7_orders import unescape  # the ingest side decodes what we send
from tests.result_factory import ct_head_result, cxr_result

NOW = datetime(2026, 11, 30, 12, 5, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def ich(tmp_path_factory: pytest.TempPathFactory) -> AIResult:
    """CT head with a critical intracranial hemorrhage present (4.2 mL, p = 0.97)."""
    return ct_head_result(tmp_path_factory.mktemp("ich"), present=True)


@pytest.fixture(scope="module")
def no_ich(tmp_path_factory: pytest.TempPathFactory) -> AIResult:
    """CT head without hemorrhage (volume 0 mL, p = 0.03)."""
    return ct_head_result(tmp_path_factory.mktemp("no-ich"), present=False)


@pytest.fixture(scope="module")
def ptx(tmp_path_factory: pytest.TempPathFactory) -> AIResult:
    """Chest radiograph, pneumothorax classifier (probability only)."""
    return cxr_result(tmp_path_factory.mktemp("ptx"))


def order_for(result: AIResult) -> OrderContext:
    return OrderContext(
        accession_number=result.study.accession_number,
        priority=OrderPriority.STAT,
        procedure_code="24725-4",
        procedure_scheme="LN",
        procedure_meaning="CT Head",
        patient_id=result.study.patient_id,
        placer_order_number="PLC-77",
        filler_order_number="FIL-88",
    )


def oru(result: AIResult, order: OrderContext | None = None) -> str:
    return build_oru(result, order, message_control_id="MSG0001", now=NOW)


def with_study(result: AIResult, **changes: Any) -> AIResult:
    return dataclasses.replace(result, study=dataclasses.replace(result.study, **changes))


def with_finding(result: AIResult, **changes: Any) -> AIResult:
    finding: Finding = dataclasses.replace(result.findings[0], **changes)
    return dataclasses.replace(result, findings=(finding,))


def segments(text: str, name: str) -> list[list[str]]:
    """Fields of every ``name`` segment; index n is field n (MSH: n - 1, MSH-1 is the bar)."""
    return [s.split("|") for s in text.split("\r") if s.startswith(name + "|")]


def field(seg: list[str], n: int) -> str:
    return seg[n] if n < len(seg) else ""


def entries(bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


# ---------------------------------------------------------------- HL7 v2.5.1 ORU^R01


@pytest.mark.parametrize("name", ["ich", "no_ich", "ptx"])
def test_oru_parses_back_and_validates_at_strict(name: str, request: pytest.FixtureRequest) -> None:
    text = oru(request.getfixturevalue(name))
    message = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT)
    assert message.name == "ORU_R01"
    assert message.validate() is True
    validate_oru(text)
    assert "\n" not in text
    assert text.count("\r") == len(text.split("\r")) - 1


def test_oru_header_patient_and_order(ich: AIResult) -> None:
    text = oru(ich, order_for(ich))
    (msh,) = segments(text, "MSH")
    assert (msh[8], msh[9], msh[10], msh[11]) == ("ORU^R01^ORU_R01", "MSG0001", "P", "2.5.1")
    assert msh[6] == "20261130120500+0000"
    (pid,) = segments(text, "PID")
    assert pid[3].split("^")[0] == ich.study.patient_id
    assert pid[5].split("^")[:2] == ich.study.patient_name.split("^")[:2]
    assert (pid[7], pid[8]) == (ich.study.patient_birth_date, ich.study.patient_sex)
    (orc,) = segments(text, "ORC")
    assert orc[1:4] == ["RE", "PLC-77", "FIL-88"]
    (obr,) = segments(text, "OBR")
    assert obr[4] == "24725-4^CT Head^LN"
    assert obr[7] == ich.study.study_date + ich.study.study_time
    assert obr[18] == ich.study.accession_number
    assert obr[25] == "P"


def test_oru_without_order_describes_the_study(ich: AIResult) -> None:
    (obr,) = segments(oru(ich), "OBR")
    assert obr[4] == "^" + ich.study.study_description
    assert obr[2] == ""
    assert obr[3].startswith("SL")
    assert obr[3].endswith("^STATLANE")
    assert obr[18] == ich.study.accession_number


def test_one_presence_obx_per_finding_all_preliminary(ich: AIResult, ptx: AIResult) -> None:
    two = dataclasses.replace(
        ich, findings=(ich.findings[0], dataclasses.replace(ptx.findings[0], present=False))
    )
    text = oru(two)
    obx = segments(text, "OBX")
    assert [o[1] for o in obx] == [str(i) for i in range(1, len(obx) + 1)]
    assert {o[11] for o in obx} == {"P"}
    presence = [o for o in obx if o[2] == "CWE"]
    assert [o[3] for o in presence] == [
        "1386000^Intracranial hemorrhage^SCT",
        "36118008^Pneumothorax^SCT",
    ]
    assert [(o[4], o[5], o[8]) for o in presence] == [
        ("1", "52101004^Present^SCT", "AA"),
        ("2", "272519000^Absent^SCT", ""),
    ]
    assert {field(o, 18) for o in obx} == {two.algorithm.device_uid}


def test_measurements_round_trip_with_units(ich: AIResult) -> None:
    finding = ich.findings[0]
    obx = segments(oru(ich), "OBX")
    numeric = {o[3].split("^")[1]: (float(o[5]), o[6]) for o in obx if o[2] == "NM"}
    assert numeric == {
        "Probability": (finding.probability, "1^1^UCUM"),
        "Volume": (finding.volume_ml, "mL^mL^UCUM"),
        "Area": (finding.area_mm2, "mm2^mm2^UCUM"),
    }
    assert {o[4] for o in obx} == {"1"}  # all of one finding: the same sub-ID


def test_measurements_are_rounded_not_printed_raw(ich: AIResult) -> None:
    text = oru(with_finding(ich, probability=0.123456789, volume_ml=1e-7, area_mm2=1234.5678))
    values = {o[3].split("^")[1]: o[5] for o in segments(text, "OBX") if o[2] == "NM"}
    assert values == {"Probability": "0.123457", "Volume": "0", "Area": "1234.57"}


def test_absent_finding_says_absent(no_ich: AIResult) -> None:
    obx = segments(oru(no_ich), "OBX")
    (presence,) = [o for o in obx if o[2] == "CWE"]
    assert presence[5] == "272519000^Absent^SCT"
    assert field(presence, 8) == ""  # no abnormal flag
    assert [o[3].split("^")[1] for o in obx if o[2] == "NM"] == ["Probability", "Volume"]


def test_oru_carries_preliminary_notice_and_algorithm(ich: AIResult) -> None:
    notes = [n[3] for n in segments(oru(ich), "NTE")]
    assert notes[0] == "AI result - preliminary, not verified"
    algorithm = ich.algorithm
    for part in (algorithm.name, algorithm.version, algorithm.manufacturer, algorithm.device_uid):
        assert part in notes[1]


def test_delimiters_in_free_text_are_escaped(ich: AIResult) -> None:
    nasty = "CT|HEAD^WO & ~ C:\\F\\ \\Z"
    plain = segments(oru(ich), "OBR")[0]
    text = oru(with_study(ich, study_description=nasty + "\rPID|1||EVIL"))
    validate_oru(text)
    (obr,) = segments(text, "OBR")
    assert len(obr) == len(plain)
    assert obr[4].count("^") == 1
    assert unescape(obr[4].split("^")[1]) == nasty + " PID|1||EVIL"  # CR became a space
    assert len(segments(text, "PID")) == 1


def test_patient_name_components_map_to_xpn(ich: AIResult) -> None:
    text = oru(with_study(ich, patient_name="O|NEIL^MARY^ANN^DR^JR=ideographic"))
    (pid,) = segments(text, "PID")
    family, given, middle, suffix, prefix = pid[5].split("^")
    assert (unescape(family), given, middle, suffix, prefix) == (
        "O|NEIL",
        "MARY",
        "ANN",
        "JR",
        "DR",
    )


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"patient_id": ""}, "PID-3"),
        ({"patient_name": ""}, "PID-5"),
        ({"patient_name": "X" * 250}, "longer than 199"),
    ],
)
def test_oru_refuses_unusable_identity(
    ich: AIResult, change: dict[str, str], expected: str
) -> None:
    with pytest.raises(MessageInvalid, match=expected) as caught:
        oru(with_study(ich, **change))
    assert ich.study.study_instance_uid in str(caught.value)


def test_oru_refuses_an_order_of_another_study(ich: AIResult) -> None:
    wrong = dataclasses.replace(order_for(ich), accession_number="OTHER-1")
    with pytest.raises(MessageInvalid, match="accession"):
        oru(ich, wrong)
    wrong = dataclasses.replace(order_for(ich), patient_id="SOMEONE-ELSE")
    with pytest.raises(MessageInvalid, match="patient ID"):
        oru(ich, wrong)


def test_oru_refuses_naive_time_and_long_control_id(ich: AIResult) -> None:
    with pytest.raises(MessageInvalid, match="timezone"):
        build_oru(ich, None, message_control_id="M1", now=datetime(2026, 1, 1, 12))
    with pytest.raises(MessageInvalid, match="MSH-10"):
        build_oru(ich, None, message_control_id="M" * 21, now=NOW)


def test_validate_oru_rejects_broken_messages(ich: AIResult) -> None:
    text = oru(ich)
    (pid,) = [s for s in text.split("\r") if s.startswith("PID|")]
    no_patient_id = text.replace(pid, "PID|1||||" + pid.split("|")[5])
    with pytest.raises(MessageInvalid, match="PID_3"):
        validate_oru(no_patient_id)
    no_obr = "\r".join(s for s in text.split("\r") if not s.startswith("OBR|"))
    with pytest.raises(MessageInvalid):
        validate_oru(no_obr)
    with pytest.raises(MessageInvalid, match=r"unparseable|ORU invalid"):
        validate_oru("this is not HL7")


# ---------------------------------------------------------------- FHIR R4B


@pytest.mark.parametrize("name", ["ich", "no_ich", "ptx"])
def test_bundle_passes_fhir_resources_and_bindings(
    name: str, request: pytest.FixtureRequest
) -> None:
    result = request.getfixturevalue(name)
    bundle = build_fhir_bundle(result, order_for(result), now=NOW)
    parsed = Bundle.model_validate(bundle)
    assert parsed.type == "transaction"
    assert check_bindings(bundle) == []
    validate_bundle(bundle)
    assert {e["request"]["method"] for e in bundle["entry"]} == {"POST"}
    assert all(e["fullUrl"].startswith("urn:uuid:") for e in bundle["entry"])


def test_a_placeholder_code_reaches_fhir_as_text_and_hl7_as_a_local_code(ich: AIResult) -> None:
    placeholder = with_finding(
        ich, concept_value="SPLEEN-ACC", concept_scheme="99STATLANE", concept_meaning="accessory"
    )
    bundle = build_fhir_bundle(placeholder, None, now=NOW)
    Bundle.model_validate(bundle)
    assert check_bindings(bundle) == []
    (observation,) = [o for o in entries(bundle, "Observation") if "valueCodeableConcept" in o]
    assert observation["code"] == {"text": "accessory (not coded: 99STATLANE SPLEEN-ACC)"}


def test_report_identifies_study_order_and_patient(ich: AIResult) -> None:
    bundle = build_fhir_bundle(ich, None, now=NOW)
    (report,) = entries(bundle, "DiagnosticReport")
    assert report["status"] == "preliminary"
    assert report["category"][0]["coding"][0]["code"] == "RAD"
    assert report["code"]["coding"][0] == {
        "system": "http://loinc.org",
        "code": "18748-4",
        "display": "Diagnostic imaging study",
    }
    (imaging_study,) = report["imagingStudy"]
    assert imaging_study["identifier"] == {
        "system": DICOM_UID,
        "value": "urn:oid:" + ich.study.study_instance_uid,
    }
    (based_on,) = report["basedOn"]
    assert based_on["type"] == "ServiceRequest"
    assert based_on["identifier"]["value"] == ich.study.accession_number
    assert based_on["identifier"]["type"]["coding"][0] == {"system": V2_0203, "code": "ACSN"}
    assert based_on["identifier"]["system"] == "urn:statlane:local:accession"
    (patient,) = entries(bundle, "Patient")
    assert report["subject"] == {"reference": f"urn:uuid:{patient['id']}", "type": "Patient"}
    assert patient["identifier"][0]["value"] == ich.study.patient_id
    assert report["conclusion"].startswith("AI result - preliminary, not verified.")
    observation_urls = {
        e["fullUrl"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"
    }
    assert {r["reference"] for r in report["result"]} == observation_urls


def test_observation_per_finding_with_values_from_the_oru(ich: AIResult) -> None:
    bundle = build_fhir_bundle(ich, None, now=NOW)
    (observation,) = entries(bundle, "Observation")
    (device,) = entries(bundle, "Device")
    assert observation["status"] == "preliminary"
    assert observation["code"]["coding"][0]["system"] == SNOMED
    assert observation["code"]["coding"][0]["code"] == "1386000"
    assert observation["valueCodeableConcept"]["coding"][0]["code"] == "52101004"
    assert observation["interpretation"][0]["coding"][0]["code"] == "AA"
    assert observation["device"]["reference"] == "urn:uuid:" + device["id"]
    quantities = {
        c["code"]["text"]: (c["valueQuantity"]["value"], c["valueQuantity"]["code"])
        for c in observation["component"]
    }
    assert {c["valueQuantity"]["system"] for c in observation["component"]} == {UCUM}
    oru_values = {
        o[3].split("^")[1]: float(o[5]) for o in segments(oru(ich), "OBX") if o[2] == "NM"
    }
    assert quantities == {
        "Probability": (oru_values["Probability"], "1"),
        "Volume": (oru_values["Volume"], "mL"),
        "Area": (oru_values["Area"], "mm2"),
    }
    assert device["identifier"][0]["value"] == "urn:oid:" + ich.algorithm.device_uid
    assert (device["deviceName"][0]["name"], device["version"][0]["value"]) == ("ich-ct-head", "2")
    assert device["manufacturer"] == "statlane"


def test_absent_finding_observation_and_no_flag(no_ich: AIResult) -> None:
    bundle = build_fhir_bundle(no_ich, None, now=NOW)
    (observation,) = entries(bundle, "Observation")
    assert observation["valueCodeableConcept"]["coding"][0]["code"] == "272519000"
    assert "interpretation" not in observation
    assert entries(bundle, "Flag") == []
    assert "conclusionCode" not in entries(bundle, "DiagnosticReport")[0]


def test_flag_only_for_critical_positive(ich: AIResult) -> None:
    (flag,) = entries(build_fhir_bundle(ich, None, now=NOW), "Flag")
    assert flag["status"] == "active"
    assert flag["category"][0]["coding"][0]["code"] == "clinical"
    assert flag["code"]["coding"][0]["code"] == ich.findings[0].concept_value
    not_critical = build_fhir_bundle(with_finding(ich, critical=False), None, now=NOW)
    assert entries(not_critical, "Flag") == []
    (observation,) = entries(not_critical, "Observation")
    assert observation["interpretation"][0]["coding"][0]["code"] == "A"


def test_bundle_is_deterministic(ich: AIResult) -> None:
    first = json.dumps(build_fhir_bundle(ich, order_for(ich), now=NOW), sort_keys=False)
    second = json.dumps(build_fhir_bundle(ich, order_for(ich), now=NOW), sort_keys=False)
    assert first == second
    urls = [e["fullUrl"] for e in json.loads(first)["entry"]]
    assert len(set(urls)) == len(urls)
    assert oru(ich, order_for(ich)) == oru(ich, order_for(ich))


def _corrupt_status(bundle: dict[str, Any]) -> None:
    entries(bundle, "DiagnosticReport")[0]["status"] = "done"


def _corrupt_observation_status(bundle: dict[str, Any]) -> None:
    entries(bundle, "Observation")[0]["status"] = "active"


def _corrupt_unit(bundle: dict[str, Any]) -> None:
    entries(bundle, "Observation")[0]["component"][1]["valueQuantity"]["code"] = "ml"


def _corrupt_reference(bundle: dict[str, Any]) -> None:
    entries(bundle, "DiagnosticReport")[0]["result"][0]["reference"] = "urn:uuid:nowhere"


def _corrupt_reference_type(bundle: dict[str, Any]) -> None:
    entries(bundle, "Observation")[0]["device"]["type"] = "Patient"


def _corrupt_system(bundle: dict[str, Any]) -> None:
    entries(bundle, "Observation")[0]["code"]["coding"][0]["system"] = "http://snomed.org"


def _corrupt_logical_reference(bundle: dict[str, Any]) -> None:
    del entries(bundle, "DiagnosticReport")[0]["imagingStudy"][0]["identifier"]["value"]


def _corrupt_logical_reference_system(bundle: dict[str, Any]) -> None:
    del entries(bundle, "DiagnosticReport")[0]["basedOn"][0]["identifier"]["system"]


@pytest.mark.parametrize(
    ("corrupt", "expected"),
    [
        (_corrupt_status, "DiagnosticReport.status 'done'"),
        (_corrupt_observation_status, "Observation.status 'active'"),
        (_corrupt_unit, "'ml' is not an allowed UCUM unit"),
        (_corrupt_reference, "'urn:uuid:nowhere' resolves to no entry"),
        (_corrupt_reference_type, "type 'Patient' but the entry is 'Device'"),
        (_corrupt_system, "'http://snomed.org' is not a known system"),
        (_corrupt_logical_reference, "logical reference without identifier.value"),
        (_corrupt_logical_reference_system, "basedOn[0].identifier.system is not an absolute URI"),
    ],
)
def test_check_bindings_reports_corruption(ich: AIResult, corrupt: Any, expected: str) -> None:
    bundle = copy.deepcopy(build_fhir_bundle(ich, None, now=NOW))
    corrupt(bundle)
    violations = check_bindings(bundle)
    assert len(violations) == 1, violations
    assert expected in violations[0], violations
    with pytest.raises(MessageInvalid, match="bindings"):
        validate_bundle(bundle)


def test_validate_bundle_reports_schema_errors_without_values(ich: AIResult) -> None:
    bundle = copy.deepcopy(build_fhir_bundle(ich, None, now=NOW))
    del entries(bundle, "Observation")[0]["status"]
    with pytest.raises(MessageInvalid, match=r"entry\.2\.resource\.status"):
        validate_bundle(bundle)
    bundle = copy.deepcopy(build_fhir_bundle(ich, None, now=NOW))
    entries(bundle, "Observation")[0]["issued"] = "seen " + ich.study.patient_id
    with pytest.raises(MessageInvalid, match="issued") as caught:
        validate_bundle(bundle)
    assert ich.study.patient_id not in str(caught.value)


# ---------------------------------------------------------------- PHI


def test_no_patient_identity_in_logs_or_errors(
    ich: AIResult, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    bundle = build_fhir_bundle(ich, order_for(ich), now=NOW)
    oru(ich, order_for(ich))
    long_name = with_study(ich, patient_name="SECRETNAME" * 30)
    with pytest.raises(MessageInvalid) as caught:
        oru(long_name)
    assert "built ORU" in caplog.text
    assert "built FHIR bundle" in caplog.text
    family = ich.study.patient_name.split("^")[0]
    for secret in (family, ich.study.patient_id, "SECRETNAME"):
        assert secret not in caplog.text
        assert secret not in str(caught.value)
    assert family not in json.dumps(bundle)  # FHIR references the patient by ID only
