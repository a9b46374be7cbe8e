"""The running service gives back what a finished study held: its volume and its spool files."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from models.synthetic import generate_study
from preprocessing.volume import Volume
from serving.jobstore import StudyState, TaskState
from serving.service.coordinator import Coordinator
from tests.service_harness import running_service, service_config, storescu, wait_for

pytestmark = pytest.mark.peers


def test_a_handled_task_holds_no_volume_and_its_study_leaves_the_spool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded: list[weakref.ref[Volume]] = []
    original = Coordinator.loader

    def watching(
        self: Coordinator, series_uid: str, *, stat: bool = False
    ) -> Callable[[Sequence[str]], Volume]:
        load = original(self, series_uid, stat=stat)

        def recorded(paths: Sequence[str]) -> Volume:
            volume = load(paths)
            loaded.append(weakref.ref(volume))
            return volume

        return recorded

    monkeypatch.setattr(Coordinator, "loader", watching)
    study = generate_study("ct-head", tmp_path / "in", seed=11, finding=True, matrix=64)
    config = service_config(
        tmp_path, spool={"retention_grace_s": 0, "prune_interval_s": 0.1, "min_free_bytes": 0}
    )
    with running_service(config) as service:
        sent = storescu(service.ports.dicom, study.files)
        assert sent.returncode == 0, sent.stderr

        def done() -> Any:
            tasks = service.store.tasks(study_uid=study.study_uid)
            return tasks if tasks and all(t.state is TaskState.DONE for t in tasks) else None

        wait_for(done, what="the study's tasks")
        spooled = service.spool.instances_dir
        wait_for(
            lambda: any(e.event == "spool-pruned" for e in service.store.audit_events()),
            what="the study pruned from the spool",
        )
        assert list(spooled.rglob("*.dcm")) == []

        def released() -> bool:
            gc.collect()
            return bool(loaded) and all(ref() is None for ref in loaded)

        wait_for(released, timeout_s=30, what="every loaded volume released")
        assert service.metrics.counter("statlane_spool_pruned_instances_total") == len(study.files)


def test_a_late_instance_after_the_prune_reruns_on_what_is_left(tmp_path: Path) -> None:
    study = generate_study("ct-head", tmp_path / "in", seed=12, matrix=64)
    first, late = study.files[:-1], study.files[-1:]
    config = service_config(
        tmp_path, spool={"retention_grace_s": 0, "prune_interval_s": 0.1, "min_free_bytes": 0}
    )
    with running_service(config) as service:
        assert storescu(service.ports.dicom, first).returncode == 0
        wait_for(
            lambda: any(e.event == "spool-pruned" for e in service.store.audit_events()),
            what="the study pruned from the spool",
        )
        assert storescu(service.ports.dicom, late).returncode == 0

        # The re-run routes on the one image left: too few for the model, so no task; the
        # study ends again and nothing fails.
        wait_for(
            lambda: any(
                e.event == "spool-pruned-rerun"
                for e in service.store.audit_events(study_uid=study.study_uid)
            ),
            what="the re-run audited as lacking the pruned instances",
        )
        wait_for(
            lambda: service.store.study(study.study_uid).state is StudyState.DONE,  # type: ignore[union-attr]
            what="the study done again",
        )
        events = [e.event for e in service.store.audit_events(study_uid=study.study_uid)]
        assert "late-instance-rerun" in events
        assert "routing-failed" not in events
