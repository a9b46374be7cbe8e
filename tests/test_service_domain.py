"""``statlane serve`` with real out-of-domain files routed by rules: AI not applicable."""

from __future__ import annotations

import shutil
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydicom.data import get_testdata_file

from serving.jobstore import StudyState, TaskState
from serving.service.app import Service
from tests.service_harness import running_service, service_config, storescu, wait_for

pytestmark = pytest.mark.peers

_RULES: dict[str, Any] = {
    "version": 1,
    "defaults": {
        "deadlines_s": {"stat": 60, "urgent": 300, "routine": 3600},
        "mode": "assistant",
        "destinations": ["local-folder"],
    },
    "rules": [
        {  # every CT to the chest model, whatever it shows (what issue 14 did)
            "name": "every-ct",
            "match": {"modality": ["CT"]},
            "produce": [
                {"model": "ct-chest-nodule", "priority": "stat", "series": {"prefer": ["first"]}}
            ],
        },
        {  # every radiograph to the chest radiograph model
            "name": "every-radiograph",
            "match": {"modality": ["CR", "DX"]},
            "produce": [
                {"model": "cxr-pneumothorax", "priority": "stat", "series": {"prefer": ["first"]}}
            ],
        },
    ],
}


def _finished(service: Service, study_uid: str) -> list[Any]:
    tasks = service.store.tasks(study_uid=study_uid)
    return [t for t in tasks if t.state in (TaskState.DONE, TaskState.FAILED)]


def _study_done(service: Service, study_uid: str) -> bool:
    study = service.store.study(study_uid)
    return study is not None and study.state is StudyState.DONE


def test_real_out_of_domain_files_end_not_applicable(tmp_path: Path) -> None:
    import pydicom

    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(_RULES), encoding="utf-8")
    files = []
    for name in ("CT_small.dcm", "RG3_UNCR.dcm"):  # a 1-slice CT crop, a tibia radiograph
        source = get_testdata_file(name)
        assert source is not None
        files.append(Path(shutil.copy(source, tmp_path / name)))
    uids = [str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID) for f in files]
    with running_service(service_config(tmp_path, rules=str(rules))) as service:
        sent = storescu(service.ports.dicom, files)
        assert sent.returncode == 0, sent.stderr
        checks: dict[str, list[str]] = {}
        for uid, model in zip(uids, ("ct-chest-nodule@1", "cxr-pneumothorax@1"), strict=True):
            [task] = wait_for(partial(_finished, service, uid), what=f"task of {model}")
            assert task.model == model
            assert task.state is TaskState.DONE, task.error
            assert task.result is not None
            assert task.result["ai_applicable"] is False
            assert task.result["critical_positive"] is False
            assert task.result["findings"] == []
            assert task.result["reason"].startswith("AI not applicable: ")
            wait_for(partial(_study_done, service, uid), what="the study done")
            [event] = [
                e
                for e in service.store.audit_events(study_uid=uid)
                if e.event == "ai-not-applicable"
            ]
            assert event.detail is not None
            assert event.detail["failed_checks"]
            assert event.detail["reason"] == task.result["reason"]
            checks[model] = task.result["domain"]["failed_checks"]
        rows = {r.study_uid: r for r in service.worklist.ai_order()}
        for uid in uids:
            assert rows[uid].label.value == "AI not applicable"
            assert rows[uid].note.startswith("AI not applicable: ")
            assert rows[uid].red_flag is False
        assert "slices" in checks["ct-chest-nodule@1"]
        assert "body_part" in checks["cxr-pneumothorax@1"]
        assert service.runtime is not None
        assert service.runtime.engine.pending == 0  # nothing stuck
        assert not list((tmp_path / "delivered").glob("*.dcm"))  # no SR, no object at all
        assert not service.outbox.items()
        metrics = service.metrics.render().decode()
        series = 'statlane_out_of_domain_total{check="slices",model="ct-chest-nodule@1"} 1'
        assert series in metrics
        assert "statlane_tasks_failed_total{" not in metrics
