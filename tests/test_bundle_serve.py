"""An imported published bundle served end to end: C-STORE in, a rule, SR and SEG into Orthanc."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
import yaml

from models.bundle import import_bundle
from models.synthetic import generate_study
from serving.jobstore.states import TaskState
from tests.bundle_factory import published_bundle
from tests.orthanc_peer import orthanc_server
from tests.service_harness import running_service, service_config, storescu, wait_for
from tests.test_service_delivery import (
    MODALITY,
    _all_delivered,
    _dicom_destination,
    _finished_tasks,
    _first,
    _qido,
    _wait_pacs_objects,
)

pytestmark = pytest.mark.peers

ABDOMEN_RULES = {
    "version": 1,
    "defaults": {
        "deadlines_s": {"stat": 60, "urgent": 300, "routine": 3600},
        "mode": "assistant",
        "destinations": ["pacs"],
    },
    "rules": [
        {
            "name": "ct-abdomen-spleen",
            "match": {"modality": ["CT"], "body_part": ["ABDOMEN"], "orientation": "axial"},
            "produce": [
                {
                    "model": "spleen-ct-segmentation",
                    "priority": "routine",
                    "series": {"prefer": ["axial", "thinnest", "most_images", "first"]},
                }
            ],
        }
    ],
}


def test_an_imported_bundle_serves_a_rule_into_orthanc(tmp_path: Path) -> None:
    report = import_bundle(published_bundle(tmp_path / "bundle"), tmp_path / "models")
    study = generate_study("ct-abdomen", tmp_path / "in", seed=11, slices=40, matrix=128)
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(ABDOMEN_RULES, sort_keys=False), encoding="utf-8")
    with orthanc_server(tmp_path / "orthanc") as pacs:
        config = service_config(
            tmp_path,
            rules=str(rules),
            models=str(tmp_path / "models"),
            destinations={"pacs": _dicom_destination(pacs.dicom_port, pacs.aet)},
        )
        with running_service(config) as service:
            assert storescu(service.ports.dicom, study.files).returncode == 0
            [task] = wait_for(
                lambda: _finished_tasks(service, study.study_uid), timeout_s=300, what="task"
            )
            assert task.state is TaskState.DONE, task.error
            assert f"{task.model_name}@{task.model_version}" == report.ident
            delivered = wait_for(lambda: _all_delivered(service, 2), what="deliveries")
            kinds = sorted(i.kind.value for i in delivered)
            assert "sr" in kinds, kinds
            assert "seg" in kinds, kinds
        instances = _wait_pacs_objects(pacs, study.study_uid, count=len(delivered))
        assert len(instances) == len(delivered)
        series = _qido(pacs, f"/studies/{study.study_uid}/series")
        assert "SEG" in {str(_first(s, MODALITY)) for s in series}
    source = pydicom.dcmread(study.files[0], stop_before_pixels=True)
    assert str(source.StudyInstanceUID) == study.study_uid
