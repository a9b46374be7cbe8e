"""The systems under test: a fresh Orthanc and a fresh service per policy, and the modality.

dcmtk's ``storescu`` sends each study on its own association; :func:`running` starts Orthanc and
the in-process service with one policy, :func:`send_all` plays the arrivals against it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from benchmarks.e2e.workload import DEADLINES_S, QUIET_S, Sent, Study
from benchmarks.report import progress
from serving.config import ServiceConfig
from serving.jobstore import TaskState
from serving.service.app import Service
from serving.service.heap import settle_heap

SYSTEMS = (("baseline-fifo", "fifo"), ("statlane-edf", "edf"))

_STARTED = time.monotonic()


def say(message: str) -> None:
    """Progress on stderr with the seconds since the benchmark started."""
    progress(f"{time.monotonic() - _STARTED:6.1f} s  {message}")


def find_storescu() -> Path:
    """dcmtk's storescu (never pynetdicom's same-named app in the virtual environment)."""
    for folder in ("/usr/bin", "/usr/local/bin", "/opt/homebrew/bin"):
        candidate = Path(folder) / "storescu"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise SystemExit("dcmtk's storescu not found; install dcmtk (apt-get install dcmtk)")


@contextmanager
def orthanc(workdir: Path) -> Iterator[Any]:
    """A fresh Orthanc (no DICOMweb plugin needed) under ``workdir``, stopped on exit."""
    if shutil.which("Orthanc") is None:
        raise SystemExit("Orthanc not found; install it (apt-get install orthanc)")
    from tests.orthanc_peer import orthanc_server

    with orthanc_server(workdir, dicomweb=False) as peer:
        yield peer


def send_study(storescu: Path, port: int, sent: Sent, calling_ae: str) -> None:
    """Send one study on one association; sets ``sent.ack_at`` to when the last C-STORE
    response arrived (UTC, read from storescu's verbose log as it is written)."""
    files = sent.study.files
    command = [str(storescu), "-v", "-aet", calling_ae, "-aec", "STATLANE"]
    command += ["127.0.0.1", str(port), *map(str, files)]
    env = dict(os.environ, TCP_NODELAY="1")
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
    )
    assert process.stderr is not None
    acked = 0
    tail: list[str] = []
    for line in process.stderr:
        if "Received Store Response" in line:
            sent.ack_at = datetime.now(UTC)
            acked += "Success" in line
        tail = [*tail[-5:], line.strip()]
    if process.wait() != 0 or acked != len(files):
        sent.error = f"storescu rc {process.returncode}, {acked}/{len(files)} acked: {tail}"
        say(f"send failed ({sent.study.kind}): {sent.error}")


def service_config(workdir: Path, policy: str, pacs_port: int) -> ServiceConfig:
    """The benchmark's configuration: default rules sending to Orthanc, the stated quiet periods
    and deadlines, free ports, everything under ``workdir``."""
    rules = yaml.safe_load(
        (Path(__file__).parents[2] / "router" / "rules" / "default.yaml").read_text()
    )
    rules["defaults"]["destinations"] = ["pacs"]
    rules["defaults"]["deadlines_s"] = dict(DEADLINES_S)
    rules_path = workdir / "rules.yaml"
    rules_path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return ServiceConfig.model_validate(
        {
            "var_dir": workdir / "var",
            "rules": rules_path,
            "dicom": {"host": "127.0.0.1", "port": 0},
            "http": {"host": "127.0.0.1", "port": 0},
            "hl7": {"enabled": False},
            "assembly": {"quiet_period_s": QUIET_S},
            "deadlines_s": DEADLINES_S,
            "runtime": {
                "device": "cpu",
                "policy": policy,
                # the naive baseline gives stat studies no priority outside the engine either
                "stat_gate_max_wait_s": 0.0 if policy == "fifo" else 1.0,
            },
            "destinations": {
                "pacs": {
                    "type": "dicom",
                    "ae_title": "ORTHANC",
                    "host": "127.0.0.1",
                    "port": pacs_port,
                }
            },
        }
    )


@contextmanager
def running(workdir: Path, policy: str) -> Iterator[tuple[Service, Any]]:
    """A fresh Orthanc and a fresh service with ``policy`` under ``workdir`` (wiped first)."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    with orthanc(workdir / "orthanc") as pacs:
        service = Service(service_config(workdir, policy, pacs.dicom_port))
        service.start()
        settle_heap()  # as `statlane serve` does, for every policy alike
        try:
            yield service, pacs
        finally:
            service.stop()


def send_all(service: Service, storescu: Path, sent: Sequence[Sent], *, paced: bool) -> float:
    """Send every study open loop at its ``due_s`` offset (``paced``) or back to back.

    Returns the monotonic start time. Each study has its own association and thread, so a slow
    send never delays the next arrival.
    """
    start = time.monotonic()
    port = service.ports.dicom
    if not paced:
        for item in sent:
            send_study(storescu, port, item, f"BENCH_{item.study.kind[:3].upper()}")
        return start
    with ThreadPoolExecutor(max_workers=32, thread_name_prefix="modality") as pool:
        for item in sent:
            delay = start + item.due_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pool.submit(send_study, storescu, port, item, f"BENCH_{item.study.kind[:3].upper()}")
    return start


def finished(service: Service) -> set[str]:
    """Study UIDs whose SR was delivered or whose task failed."""
    by_task = {t.task_id: t for t in service.store.tasks()}
    done = {
        by_task[i.task_id].study_instance_uid
        for i in service.outbox.items()
        if str(i.kind) == "sr" and i.delivered_at is not None and i.task_id in by_task
    }
    return done | {t.study_instance_uid for t in by_task.values() if t.state is TaskState.FAILED}


def wait_for_results(service: Service, sent: Sequence[Sent], timeout_s: float) -> int:
    """Wait until every acknowledged study's SR is delivered or its task failed; returns how
    many are still open at ``timeout_s`` (seconds)."""
    wanted = {s.study.study_uid for s in sent if s.error is None}
    deadline = time.monotonic() + timeout_s
    last_report = 0.0
    while True:
        open_count = len(wanted - finished(service))
        if open_count == 0 or time.monotonic() > deadline:
            return open_count
        if time.monotonic() - last_report > 15:
            say(f"  waiting for {open_count} SRs")
            last_report = time.monotonic()
        time.sleep(0.5)


def warm_up(service: Service, storescu: Path, studies: Sequence[Study]) -> None:
    """Run one study of each kind through the service (first inference, first association)."""
    sent = [Sent(s, 0.0) for s in studies]
    send_all(service, storescu, sent, paced=True)
    open_count = wait_for_results(service, sent, timeout_s=120.0)
    if open_count:
        say(f"  warm-up: {open_count} SRs still open after 120 s")
