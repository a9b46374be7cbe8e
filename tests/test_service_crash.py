"""Crash safety: SIGKILL ``statlane serve`` at several points; after a restart every
acknowledged instance is processed and no task runs twice to completion."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pydicom
import pytest
import yaml

from models.synthetic import generate_study
from serving.jobstore import JobStore, TaskRow, TaskState
from serving.jobstore.states import EntityKind
from tests.service_harness import FAST_QUIET, storescu, wait_for

pytestmark = [pytest.mark.peers, pytest.mark.slow]


@contextmanager
def _server(tmp: Path) -> Iterator[tuple[subprocess.Popen[bytes], dict[str, int]]]:
    config = tmp / "statlane.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "var_dir": str(tmp / "var"),
                "dicom": {"port": 0},
                "http": {"host": "127.0.0.1", "port": 0},
                "hl7": {"enabled": False},
                "assembly": {"quiet_period_s": FAST_QUIET},
                "runtime": {"device": "cpu", "preprocess_workers": 1},
                "destinations": {"local-folder": {"type": "folder", "path": str(tmp / "out")}},
            }
        )
    )
    ports_file = tmp / "ports.json"
    ports_file.unlink(missing_ok=True)
    log = (tmp / "serve.log").open("ab")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "serving.cli",
            "serve",
            "--config",
            str(config),
            "--ports-file",
            str(ports_file),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, TCP_NODELAY="1"),
    )
    try:
        wait_for(lambda: ports_file.exists() or process.poll() is not None, 120, "serve to start")
        assert process.poll() is None, (tmp / "serve.log").read_text()
        yield process, json.loads(ports_file.read_text())
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        log.close()


def _kill(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


def _store(tmp: Path) -> JobStore:
    return JobStore(f"sqlite:///{tmp / 'var' / 'statlane.db'}", clock=lambda: datetime.now(UTC))


def _completions(store: JobStore, task_id: str) -> int:
    return sum(1 for t in store.transitions(task_id, EntityKind.TASK) if t.to_state == "done")


def test_sigkill_mid_study_during_inference_and_before_delivery(tmp_path: Path) -> None:
    head = generate_study("ct-head", tmp_path / "in", seed=31, finding=True, matrix=128)
    radiograph = generate_study("cr-chest", tmp_path / "in", seed=32, matrix=128)
    half = len(head.files) // 2

    # 1. killed in the middle of a study: the first half was acknowledged
    with _server(tmp_path) as (process, ports):
        assert storescu(ports["dicom"], head.files[:half]).returncode == 0
        _kill(process)
    # 2. restarted: the rest arrives; killed while the task may be running
    with _server(tmp_path) as (process, ports):
        assert storescu(ports["dicom"], head.files[half:]).returncode == 0
        assert storescu(ports["dicom"], radiograph.files).returncode == 0
        store = _store(tmp_path)
        wait_for(
            lambda: store.tasks(TaskState.RUNNING) or store.tasks(TaskState.DONE),
            what="a task to start",
        )
        _kill(process)
        store.close()
    # 3. restarted: everything finishes; killed right after, before or while delivering
    with _server(tmp_path) as (process, ports):
        store = _store(tmp_path)
        wait_for(lambda: len(store.tasks(TaskState.DONE)) >= 2, 180, "both tasks done")
        _kill(process)
        store.close()
    # 4. restarted once more: what was interrupted finishes, deliveries complete, nothing
    #    runs again (a task killed while running in step 3 is re-run here: wait for it, as
    #    the deliveries of step 3 may already be there)
    with _server(tmp_path) as (_, ports):
        store = _store(tmp_path)
        wait_for(lambda: len(list((tmp_path / "out").glob("*.dcm"))) >= 5, 120, "deliveries")

        def settled() -> bool:
            studies = [store.study(uid) for uid in (head.study_uid, radiograph.study_uid)]
            return all(s is not None and s.state.value == "done" for s in studies) and all(
                t.state is TaskState.DONE for t in store.tasks()
            )

        wait_for(settled, 120, "every task and study done")
        time.sleep(1.0)
        acknowledged = {
            str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
            for f in (*head.files, *radiograph.files)
        }
        recorded = {
            i.sop_instance_uid
            for s in (head.study_uid, radiograph.study_uid)
            for series in store.series_of(s)
            for i in store.instances_of(series.series_instance_uid)
        }
        assert recorded == acknowledged
        tasks = store.tasks()
        for task in tasks:  # a study completed early by the restart re-runs as generation 1
            assert task.state is TaskState.DONE
            assert _completions(store, task.task_id) == 1
        head_tasks = sorted(store.tasks(study_uid=head.study_uid), key=lambda t: t.generation)
        assert [t.generation for t in head_tasks] in ([0], [0, 1])
        assert head_tasks[-1].result is not None
        assert head_tasks[-1].result["critical_positive"]
        assert len(store.tasks(study_uid=radiograph.study_uid)) == 1
        for uid in (head.study_uid, radiograph.study_uid):
            row = store.study(uid)
            assert row is not None
            assert row.state.value == "done"
        store.close()


def test_restart_between_routing_decision_and_tasks_routes_again(tmp_path: Path) -> None:
    """Killed after the routing decision was written but before its tasks: the restart creates
    them (a ROUTED study without tasks is never left behind)."""
    from serving.jobstore import StudyState
    from tests.service_harness import running_service, service_config

    study = generate_study("cr-chest", tmp_path / "in", seed=33, matrix=128)
    config = service_config(tmp_path)
    with running_service(config) as service:
        original = service.store.create_task

        def crash(*args: object, **kwargs: object) -> None:
            raise RuntimeError("killed here")

        # A stand-in that only raises, so its signature is not create_task's.
        service.store.create_task = crash  # type: ignore[method-assign,assignment]
        assert storescu(service.ports.dicom, study.files).returncode == 0
        wait_for(
            lambda: (s := service.store.study(study.study_uid)) and s.state is StudyState.ROUTED,
            what="the routing decision",
        )
        assert service.store.tasks(study_uid=study.study_uid) == []
        service.store.create_task = original  # type: ignore[method-assign]  # put back
    with running_service(config) as service:
        [task] = wait_for(
            lambda: [
                t
                for t in service.store.tasks(study_uid=study.study_uid)
                if t.state is TaskState.DONE
            ],
            what="the task created on restart",
        )
        assert task.model == "cxr-pneumothorax@1"
        assert len(service.store.tasks()) == 1


def test_restart_finishes_a_queued_task_of_a_study_reopened_by_late_instances(
    tmp_path: Path,
) -> None:
    """Stopped while a study was reopened (late instances) and its older generation's task
    still queued: after the restart that task runs to the end, as it would have without the
    restart, and the new generation runs too."""
    from serving.jobstore import StudyState
    from tests.service_harness import running_service, service_config

    study = generate_study("cr-chest", tmp_path / "in", seed=34, matrix=128)
    config = service_config(tmp_path)
    with running_service(config) as service:
        # A launch that never starts the work, in place of the method.
        service.coordinator.launch = lambda *args, **kwargs: None  # type: ignore[method-assign]
        assert storescu(service.ports.dicom, study.files).returncode == 0
        [queued] = wait_for(
            lambda: service.store.tasks(TaskState.QUEUED, study_uid=study.study_uid),
            what="a queued task",
        )
        service.store.set_study_state(study.study_uid, StudyState.RECEIVING, {"reason": "late"})
    with running_service(config) as service:

        def finished() -> list[TaskRow]:
            # The new generation's task appears only after the reopened study's quiet period,
            # so "every task done" alone can hold before it exists.
            tasks = service.store.tasks(study_uid=study.study_uid)
            reached = any(t.generation >= 1 for t in tasks)
            return tasks if reached and all(t.state is TaskState.DONE for t in tasks) else []

        tasks = wait_for(finished, what="both generations done")
        assert sorted(t.generation for t in tasks) == [0, 1]
        assert queued.task_id in {t.task_id for t in tasks}
        assert all(_completions(service.store, t.task_id) == 1 for t in tasks)
