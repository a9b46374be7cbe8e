"""Result versions: a re-run on more images (or another model version) is a new version that
names the one it replaces; a re-run on the same input repeats the first exactly.

Messages: the ORU of a new version is a correction (OBR-25 and OBX-11 ``C``) and its FHIR
DiagnosticReport is ``amended`` with a Provenance (entity role ``revision``) naming the replaced
report, validated at hl7apy STRICT, with the R4B models, the bindings and reference resolution.
Also: a multi-valued Patient Name reaches PID-5 as its first value's XPN components.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pydicom
import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from router.messages import build_fhir_bundle, build_oru, validate_bundle, validate_oru
from router.messages.fhir import report_id
from router.objects import build_sr
from router.result import AIResult, Mode, PriorVersion
from router.vocabulary import PriorityClass
from serving.delivery.payloads import ResultDelivery
from serving.jobstore import TaskRow, TaskState
from serving.metrics import Metrics
from serving.service.results import study_identity
from serving.service.versions import current_results, newer_result, prior_version, version_record
from tests.fhir_resolution import unresolved_references
from tests.result_factory import ct_head_result

NOW = datetime(2026, 11, 30, 12, 5, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> AIResult:
    """CT head with a hemorrhage: the run on the whole series."""
    return ct_head_result(tmp_path_factory.mktemp("versions"), present=True)


def partial(result: AIResult) -> AIResult:
    """The run on the first half of the series (before the late instances arrived)."""
    keep = result.source_instances[: len(result.source_instances) // 2]
    return dataclasses.replace(result, source_instances=keep, key_images=(), mask=None)


def replacing(result: AIResult, earlier: AIResult) -> AIResult:
    """``result`` as the version that replaces ``earlier`` (what the service records)."""
    sr = build_sr(earlier)
    prior = PriorVersion(
        task_id=earlier.task_id,
        study_instance_uid=str(sr.StudyInstanceUID),
        sr_series_instance_uid=str(sr.SeriesInstanceUID),
        sr_sop_instance_uid=str(sr.SOPInstanceUID),
        sr_sop_class_uid=str(sr.SOPClassUID),
        report_id=report_id(earlier),
        model="ich-ct-head@2",
    )
    return dataclasses.replace(result, replaces=prior)


def segments(text: str, name: str) -> list[list[str]]:
    return [s.split("|") for s in text.split("\r") if s.startswith(name + "|")]


def oru(result: AIResult) -> str:
    return build_oru(result, None, message_control_id="MSG0001", now=NOW)


def test_a_first_version_is_preliminary(full: AIResult) -> None:
    text = oru(full)
    (obr,) = segments(text, "OBR")
    assert obr[25] == "P"
    assert {obx[11] for obx in segments(text, "OBX")} == {"P"}
    bundle = build_fhir_bundle(full, None, now=NOW)
    reports = [e["resource"] for e in bundle["entry"] if e["request"]["url"] == "DiagnosticReport"]
    assert [r["status"] for r in reports] == ["preliminary"]
    assert not [e for e in bundle["entry"] if e["request"]["url"] == "Provenance"]


def test_a_new_version_goes_out_as_a_correction_at_strict(full: AIResult) -> None:
    earlier = partial(full)
    text = oru(replacing(full, earlier))
    validate_oru(text)
    parsed = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT)
    parsed.validate()
    (obr,) = segments(text, "OBR")
    assert obr[25] == "C"
    observations = segments(text, "OBX")
    assert observations
    assert {obx[11] for obx in observations} == {"C"}
    notes = [n[3] for n in segments(text, "NTE")]
    assert any(build_sr(earlier).SOPInstanceUID in note for note in notes)
    # The order numbers stay those of the first version, so the RIS can match the correction.
    (first_obr,) = segments(oru(earlier), "OBR")
    assert obr[3] == first_obr[3]


def test_a_new_version_is_an_amended_report_with_its_provenance(full: AIResult) -> None:
    earlier = partial(full)
    first = build_fhir_bundle(earlier, None, now=NOW)
    bundle = build_fhir_bundle(replacing(full, earlier), None, now=NOW)
    validate_bundle(bundle)
    assert unresolved_references(bundle) == []
    by_url = {e["request"]["url"]: e for e in bundle["entry"]}
    report = by_url["DiagnosticReport"]["resource"]
    assert report["status"] == "amended"
    (old_report,) = [
        e["resource"] for e in first["entry"] if e["request"]["url"] == "DiagnosticReport"
    ]
    assert report["id"] != old_report["id"]  # a new resource: the old findings stay as they were
    assert report["identifier"] != old_report["identifier"]
    provenance = by_url["Provenance"]
    assert "ifNoneExist" not in provenance["request"]
    resource = provenance["resource"]
    assert resource["target"] == [
        {"reference": f"urn:uuid:{report['id']}", "type": "DiagnosticReport"}
    ]
    (entity,) = resource["entity"]
    assert entity["role"] == "revision"
    assert entity["what"] == {"type": "DiagnosticReport", "identifier": old_report["identifier"][0]}
    (agent,) = resource["agent"]
    assert agent["who"]["type"] == "Device"
    old_ids = {e["resource"]["id"] for e in first["entry"] if e["request"]["url"] == "Observation"}
    new_ids = {e["resource"]["id"] for e in bundle["entry"] if e["request"]["url"] == "Observation"}
    assert old_ids.isdisjoint(new_ids)


def test_the_same_input_repeats_the_same_ids(full: AIResult) -> None:
    again = dataclasses.replace(full, task_id="another-attempt")
    assert build_fhir_bundle(again, None, now=NOW) == build_fhir_bundle(full, None, now=NOW)
    assert report_id(again) == report_id(full)


def test_a_multi_valued_patient_name_reaches_pid5_as_its_first_value(
    full: AIResult, tmp_path: Path
) -> None:
    header = pydicom.dcmread(full.source_instances[0].path or "", stop_before_pixels=True)
    header.PatientName = ["Doe^John^Q^Dr^Jr", "Roe^Jane"]
    identity = study_identity(header)
    assert identity.patient_name == "Doe^John^Q^Dr^Jr"
    text = oru(dataclasses.replace(full, study=identity))
    validate_oru(text)
    parse_message(text, validation_level=VALIDATION_LEVEL.STRICT).validate()
    (pid,) = segments(text, "PID")
    assert pid[5] == "Doe^John^Q^Jr^Dr"  # XPN: family^given^middle^suffix^prefix
    assert "[" not in pid[5]


# ---------------------------------------------------------------- the service's side


def task_row(
    task_id: str, generation: int, *, result: dict[str, Any] | None = None, model: str = "ich"
) -> TaskRow:
    at = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    return TaskRow(
        task_id=task_id,
        study_instance_uid="1.2.3",
        series_instance_uid="1.2.3.4",
        rule_name="ct-head",
        model_name=model,
        model_version="2",
        generation=generation,
        priority=PriorityClass.STAT,
        deadline_at=at,
        mode=Mode.ASSISTANT.value,
        destinations=("pacs",),
        state=TaskState.DONE if result is not None else TaskState.QUEUED,
        attempts=1,
        created_at=at,
        started_at=at,
        finished_at=at if result is not None else None,
        result=result,
        error=None,
    )


def test_a_later_generation_names_the_sent_version_it_replaces(full: AIResult) -> None:
    earlier = partial(full)
    first = task_row("t0", 0, result={"version": version_record(earlier, sent=True)})
    rerun = task_row("t1", 1)
    prior = prior_version(rerun, full, [first, rerun])
    assert prior is not None
    sr = build_sr(earlier)
    assert (prior.task_id, prior.sr_sop_instance_uid, prior.sr_series_instance_uid) == (
        "t0",
        sr.SOPInstanceUID,
        sr.SeriesInstanceUID,
    )
    assert prior.sr_sop_class_uid == sr.SOPClassUID
    assert prior.report_id == report_id(earlier)
    # The same input again (a crash retry, a late instance of another series): nothing replaced.
    same = task_row("t0", 0, result={"version": version_record(full, sent=True)})
    assert prior_version(rerun, full, [same, rerun]) is None
    # Never a version that was not sent, of another model, or of a later generation.
    unsent = task_row("t0", 0, result={"version": version_record(earlier, sent=False)})
    other = task_row("t0", 0, result={"version": version_record(earlier, sent=True)}, model="x")
    assert prior_version(rerun, full, [unsent, other, rerun]) is None
    assert prior_version(task_row("t0", 0), earlier, [first, rerun]) is None


def test_an_older_generation_finishing_late_is_superseded(full: AIResult) -> None:
    done = {"version": version_record(full, sent=True)}
    old, new = task_row("t0", 0), task_row("t1", 1, result=done)
    assert newer_result(old, [old, new]) is new
    assert newer_result(new, [old, new]) is None
    old_done = task_row("t0", 0, result={"version": version_record(partial(full), sent=False)})
    [current] = current_results([old_done, new])
    assert (current["task_id"], current["generation"]) == ("t1", 1)


def test_delivery_keys_name_the_version_not_the_generation(full: AIResult, tmp_path: Path) -> None:
    keys: list[str] = []

    class Outbox:
        def enqueue(self, *_: Any, dedupe_key: str, **__: Any) -> None:
            keys.append(dedupe_key)

    delivery = ResultDelivery(
        store=cast(Any, SimpleNamespace(audit=lambda *_, **__: None)),
        outbox=cast(Any, Outbox()),
        destination_types={"pacs": "folder", "ris": "mllp", "ehr": "fhir"},
        results_dir=tmp_path,
        metrics=Metrics(),
        utc=lambda: NOW,
    )

    def run(result: AIResult, generation: int) -> list[str]:
        keys.clear()
        row = dataclasses.replace(
            task_row(f"t{generation}", generation), destinations=("pacs", "ris", "ehr")
        )
        delivery.enqueue_results(row, dataclasses.replace(result, mask=None), None)
        return list(keys)

    first = run(full, 0)
    assert len(first) == 5  # SR, HL7, FHIR, GSPS, SC (no mask: no SEG)
    assert run(full, 1) == first  # same input, next generation: the outbox deduplicates
    assert set(run(partial(full), 1)).isdisjoint(first)
