"""``statlane serve`` end to end with real peers: storescu and Orthanc in, results out."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pydicom
import pytest

from models.synthetic import generate_study
from router.vocabulary import OrderPriority
from serving.jobstore import StudyState, TaskState
from serving.mllp import ack_code, send_message
from serving.service.app import Service
from tests.orthanc_peer import orthanc_server
from tests.service_harness import running_service, service_config, storescu, wait_for

pytestmark = pytest.mark.peers


def _tasks_finished(service: Service, study_uid: str, count: int = 1) -> list[Any]:
    tasks = service.store.tasks(study_uid=study_uid)
    done = [t for t in tasks if t.state in (TaskState.DONE, TaskState.FAILED)]
    return done if len(done) >= count else []


def _get(service: Service, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{service.ports.http}{path}", timeout=10) as r:
        body = r.read()
        return json.loads(body) if r.headers.get_content_type() == "application/json" else body


def test_a_bleed_goes_from_storescu_to_objects_worklist_and_audit(tmp_path: Path) -> None:
    study = generate_study("ct-head", tmp_path / "in", seed=11, finding=True, matrix=256)
    with running_service(service_config(tmp_path)) as service:
        sent = storescu(service.ports.dicom, study.files)
        assert sent.returncode == 0, sent.stderr
        [task] = wait_for(lambda: _tasks_finished(service, study.study_uid), what="the ICH task")
        assert task.state is TaskState.DONE, task.error
        assert task.model == "ich-ct-head@2"
        assert task.priority.value == "stat"
        assert task.result is not None
        assert task.result["critical_positive"] is True
        delivered = wait_for(
            lambda: (
                sorted((tmp_path / "delivered").glob("*.dcm"))
                if len(list((tmp_path / "delivered").glob("*.dcm"))) >= 4
                else None
            ),
            what="4 result objects in the folder destination",
        )
        modalities = sorted(str(pydicom.dcmread(p).Modality) for p in delivered)
        assert modalities == ["OT", "PR", "SEG", "SR"]
        source = pydicom.dcmread(study.files[0], stop_before_pixels=True)
        for path in delivered:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            assert ds.StudyInstanceUID == source.StudyInstanceUID
            assert ds.PatientID == source.PatientID
            assert ds.AccessionNumber == source.AccessionNumber
            assert ds.SeriesInstanceUID != source.SeriesInstanceUID
        # the objects are queued before the task's audit, worklist and study updates
        wait_for(
            lambda: (s := service.store.study(study.study_uid)) and s.state is StudyState.DONE,
            what="the study done",
        )
        worklist = _get(service, "/worklist?mode=triage")
        [row] = [r for r in worklist["published"] if r["study_instance_uid"] == study.study_uid]
        assert row["red_flag"] is True
        events = [e.event for e in service.store.audit_events(study_uid=study.study_uid)]
        assert "task-done" in events
        metrics = _get(service, "/metrics").decode()
        assert 'statlane_instances_received_total{modality="CT"} ' in metrics
        assert 'statlane_volumes_loaded_total{origin="stream"} 1' in metrics
        exported = {
            line.split()[0]: float(line.split()[1])
            for line in metrics.splitlines()
            if line.startswith("statlane_stat_gate_")
        }
        waits, waited_s = service.gate.totals()  # updated every coordinator tick: may lag
        assert 0 <= exported["statlane_stat_gate_waits_total"] <= waits
        # rendered to 6 significant digits
        assert 0 <= exported["statlane_stat_gate_wait_seconds_total"] <= waited_s * 1.00001
        assert "# TYPE statlane_stat_gate_waits_total counter" in metrics
        assert str(source.PatientName) not in metrics


def test_orders_before_and_after_their_studies(tmp_path: Path) -> None:
    before = generate_study("dx-chest", tmp_path / "a", seed=21, matrix=256)
    after = generate_study("dx-chest", tmp_path / "b", seed=22, matrix=256)
    with running_service(service_config(tmp_path)) as service:
        assert service.ports.hl7 is not None
        ack = send_message("127.0.0.1", service.ports.hl7, _orm(before, "S"))
        assert ack_code(ack) == "AA"
        assert storescu(service.ports.dicom, before.files).returncode == 0
        assert storescu(service.ports.dicom, after.files).returncode == 0
        [first] = wait_for(lambda: _tasks_finished(service, before.study_uid), what="first task")
        [second] = wait_for(lambda: _tasks_finished(service, after.study_uid), what="second task")
        assert first.priority.value == "stat"  # the order escalated the urgent default
        assert second.priority.value == "urgent"
        ack = send_message("127.0.0.1", service.ports.hl7, _orm(after, "S"))
        assert ack_code(ack) == "AA"
        order = service.store.order(after.accession_number)
        assert order is not None
        assert order.priority is OrderPriority.STAT
        nak = send_message(
            "127.0.0.1", service.ports.hl7, "MSH|^~\\&|RIS|H|X|Y|2026||ADT^A01|1|P|2.5\r"
        )
        assert ack_code(nak) == "AE"


def _orm(study: Any, priority: str) -> str:
    ds = pydicom.dcmread(study.files[0], stop_before_pixels=True)
    return (
        "\r".join(
            [
                "MSH|^~\\&|RIS|HOSP|STATLANE|HOSP|20261130120000||ORM^O01|MSG"
                + study.accession_number[-6:]
                + "|P|2.5.1",
                f"PID|1||{ds.PatientID}^^^HOSP^MR||{ds.PatientName}",
                f"ORC|NW|P{study.accession_number}|F{study.accession_number}||||^^^^^{priority}",
                f"OBR|1|P{study.accession_number}|F{study.accession_number}|36643-5^XR Chest 2V^LN"
                + "|" * 14
                + study.accession_number,
            ]
        )
        + "\r"
    )


def test_identity_conflict_is_quarantined_and_not_inferred(tmp_path: Path) -> None:
    study = generate_study("ct-head", tmp_path / "in", seed=12, matrix=128)
    tampered = tmp_path / "tampered.dcm"
    ds = pydicom.dcmread(study.files[5])
    ds.PatientID = "SOMEONE-ELSE"
    ds.save_as(tampered)
    files = [p for i, p in enumerate(study.files) if i != 5] + [tampered]
    with running_service(service_config(tmp_path)) as service:
        assert storescu(service.ports.dicom, files).returncode == 0
        row = wait_for(
            lambda: (
                (s := service.store.study(study.study_uid))
                and s.state is StudyState.QUARANTINED
                and s
            ),
            what="quarantine",
        )
        assert "PatientID" in row.quarantine_reason
        assert "SOMEONE" not in row.quarantine_reason
        assert service.store.tasks(study_uid=study.study_uid) == []


def test_unknown_calling_ae_is_rejected_and_nothing_stored(tmp_path: Path) -> None:
    study = generate_study("cr-chest", tmp_path / "in", seed=13, matrix=128)
    config = service_config(tmp_path, dicom={"port": 0, "allowed_callers": {"CT01": None}})
    with running_service(config) as service:
        refused = storescu(service.ports.dicom, study.files, calling_ae="INTRUDER")
        assert refused.returncode != 0
        accepted = storescu(service.ports.dicom, study.files, calling_ae="CT01")
        assert accepted.returncode == 0
        wait_for(lambda: service.store.study(study.study_uid), what="the accepted study")
        assert len(service.store.studies()) == 1


def test_orthanc_forwards_a_study_by_c_store(tmp_path: Path) -> None:
    study = generate_study("cr-chest", tmp_path / "in", seed=14, finding=True, matrix=256)
    with running_service(service_config(tmp_path)) as service:
        modality = ("STATLANE", "127.0.0.1", service.ports.dicom)
        with orthanc_server(tmp_path / "orthanc", modalities={"statlane": modality}) as pacs:
            uploaded = pacs.post("/instances", study.files[0].read_bytes())
            pacs.post(
                "/modalities/statlane/store",
                {"Resources": [uploaded["ParentStudy"]], "Synchronous": True},
            )
            [task] = wait_for(lambda: _tasks_finished(service, study.study_uid), what="task")
            assert task.state is TaskState.DONE
            assert task.model == "cxr-pneumothorax@1"


def test_ai_unavailable_keeps_ingest_and_says_so(tmp_path: Path) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("no backend here")

    study = generate_study("ct-head", tmp_path / "in", seed=15, matrix=128)
    with running_service(service_config(tmp_path), runtime_factory=broken) as service:
        assert storescu(service.ports.dicom, study.files).returncode == 0
        [task] = wait_for(lambda: _tasks_finished(service, study.study_uid), what="task")
        assert task.state is TaskState.FAILED
        assert "AI unavailable" in (task.error or "")
        wait_for(  # its only task ended (failed): the study is done, not left routed
            lambda: (s := service.store.study(study.study_uid)) and s.state is StudyState.DONE,
            what="the study done",
        )
        health = _get(service, "/health")
        assert health["inference"] == "unavailable"
        rows = _get(service, "/worklist?mode=triage")["published"]
        assert [r["label"] for r in rows] == ["AI unavailable"]
