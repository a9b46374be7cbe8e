"""The systems under test, each a process of its own receiving the same files.

``dcmtk-storescp`` (the baseline), ``gateway-ack-only`` and ``gateway-spool`` (statlane's
gateway alone, run by this package itself as ``python -m benchmarks.ingest --ack-only-port`` or
``--spool-only-port``) and ``statlane-durable`` (``statlane serve``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from benchmarks.ingest.peers import dcmtk, echo, free_port, send, server_process
from benchmarks.ingest.workload import Workload

STORESCP, ACK_ONLY, SPOOL_ONLY, STATLANE = (
    "dcmtk-storescp",
    "gateway-ack-only",
    "gateway-spool",
    "statlane-durable",
)
SYSTEMS = (STORESCP, ACK_ONLY, SPOOL_ONLY, STATLANE)
STARTUP_TIMEOUT_S = 300.0
TASK_TIMEOUT_S = 120.0


def run_storescp(work: Workload, scratch: Path) -> dict[str, Any]:
    """Baseline: dcmtk storescp writes every instance (no fsync)."""
    out, port = scratch / "received", free_port()
    out.mkdir()
    cmd = [dcmtk("storescp"), "-aet", "STORESCP", "+xa", "-od", str(out), str(port)]
    with server_process(cmd, scratch / "storescp.log") as server:
        echo(port, "STORESCP", server)
        sent = send(port, "STORESCP", work.files, server.pid)
    received = sum(1 for p in out.iterdir() if p.is_file())
    if received != len(work.files):
        raise SystemExit(f"storescp wrote {received} of {len(work.files)} instances")
    return {"seconds": sent.seconds, "server_cpu_s": sent.server_cpu_s}


class DiscardingSpool:
    """Stands in for the spool in the reference SCP: keeps nothing, returns at once."""

    def store(self, instance: bytes, source: Any, **_: Any) -> None:
        """Drop ``instance`` (the gateway already assembled its bytes)."""


def serve_ack_only(port: int) -> None:
    """The reference SCP: statlane's DicomGateway, success for every C-STORE, no I/O."""
    import threading

    from serving.gateway.dimse import DicomGateway
    from serving.service.heap import settle_heap

    gateway = DicomGateway(cast(Any, DiscardingSpool()), ae_title="ACKONLY", port=port)
    gateway.start()
    settle_heap()  # as `statlane serve` does
    threading.Event().wait()  # until SIGTERM


def run_ack_only(work: Workload, scratch: Path) -> dict[str, Any]:
    """Reference: statlane's gateway acknowledges every instance without storing it."""
    port = free_port()
    cmd = [sys.executable, "-m", "benchmarks.ingest", "--ack-only-port", str(port)]
    with server_process(cmd, scratch / "ack-only.log") as server:
        echo(port, "ACKONLY", server)
        sent = send(port, "ACKONLY", work.files, server.pid)
    return {"seconds": sent.seconds, "server_cpu_s": sent.server_cpu_s}


def serve_spool_only(port: int, root: Path) -> None:
    """The second reference SCP: statlane's DicomGateway with its real durable spool, and no
    service behind it (nothing recorded, routed or inferred)."""
    import threading

    from serving.gateway.dimse import DicomGateway
    from serving.gateway.spool import Spool
    from serving.service.heap import settle_heap

    gateway = DicomGateway(Spool(root), ae_title="SPOOL", port=port)
    gateway.start()
    settle_heap()  # as `statlane serve` does
    threading.Event().wait()  # until SIGTERM


def run_spool_only(work: Workload, scratch: Path) -> dict[str, Any]:
    """Reference: statlane's gateway storing durably into the spool, nothing else."""
    port, root = free_port(), scratch / "spool"
    cmd = [sys.executable, "-m", "benchmarks.ingest", "--spool-only-port", str(port)]
    cmd += ["--spool-root", str(root)]
    with server_process(cmd, scratch / "spool-only.log") as server:
        echo(port, "SPOOL", server)
        sent = send(port, "SPOOL", work.files, server.pid)
    stored = sum(1 for _ in root.glob("instances/*/*/*.dcm"))
    if stored != len(work.files):
        raise SystemExit(f"the spool holds {stored} of {len(work.files)} instances")
    return {"seconds": sent.seconds, "server_cpu_s": sent.server_cpu_s}


def _service_config(var: Path, quiet: dict[str, float]) -> dict[str, Any]:
    """statlane.yaml for one run: free ports, everything under ``var``, the default rules."""
    return {
        "var_dir": str(var),
        "dicom": {"ae_title": "STATLANE", "host": "127.0.0.1", "port": free_port()},
        "http": {"host": "127.0.0.1", "port": 0},
        "hl7": {"host": "127.0.0.1", "port": 0},
        "assembly": {"quiet_period_s": quiet},
        "destinations": {"local-folder": {"type": "folder", "path": str(var / "results")}},
        "runtime": {"device": "cpu", "preprocess_workers": 1},
    }


def last_spooled_at(store: Any, study_uid: str) -> datetime:
    """When the study's last instance was written to the spool (file mtime, before its fsync,
    rename and C-STORE response): the newest mtime of its instances' files, UTC."""
    paths = [
        i.path
        for s in store.series_of(study_uid)
        for i in store.instances_of(s.series_instance_uid)
    ]
    newest_ns = max(os.stat(p).st_mtime_ns for p in paths)
    return datetime.fromtimestamp(newest_ns / 1e9, UTC)


def _study_timings(db_url: str, work: Workload, exited: datetime, quiet: dict[str, float]) -> Any:
    """Wait until every study's task reached the engine; per-study times from the job store."""
    from serving.jobstore import JobStore

    store = JobStore(db_url, clock=lambda: datetime.now(UTC))
    try:
        deadline = time.monotonic() + TASK_TIMEOUT_S
        while True:
            tasks = {uid: store.tasks(study_uid=uid) for uid in work.study_uids}
            if all(ts and all(t.started_at for t in ts) for ts in tasks.values()):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"statlane started no task within {TASK_TIMEOUT_S:.0f} s: {tasks}")
            time.sleep(0.05)
        studies = []
        for uid, expected in zip(work.study_uids, work.study_sizes, strict=True):
            series, study = store.series_of(uid), store.study(uid)
            received = sum(s.instance_count for s in series)
            if received != expected or study is None or study.completed_at is None:
                raise SystemExit(f"statlane recorded {received} of {expected} instances")
            task = min(tasks[uid], key=lambda t: t.created_at)
            assert task.started_at is not None
            last = last_spooled_at(store, uid)
            recorded = max(s.last_instance_at for s in series)
            done, queued = study.completed_at, task.created_at
            studies.append(
                {
                    "instances": received,
                    "task_priority": task.priority.value,
                    "quiet_period_s": quiet[task.priority.value],
                    "last_instance_to_study_complete_s": (done - last).total_seconds(),
                    "study_complete_to_task_queued_s": (queued - done).total_seconds(),
                    "last_instance_to_task_queued_s": (queued - last).total_seconds(),
                    "last_instance_to_task_started_s": (task.started_at - last).total_seconds(),
                    "storescu_exit_to_task_queued_s": (queued - exited).total_seconds(),
                    "last_instance_recorded_to_task_queued_s": (queued - recorded).total_seconds(),
                }
            )
        return studies
    finally:
        store.close()


def run_statlane(work: Workload, scratch: Path, quiet: dict[str, float]) -> dict[str, Any]:
    """statlane: ``statlane serve`` in a subprocess stores every instance durably."""
    from serving.config import ServiceConfig

    raw = _service_config(scratch / "var", quiet)
    config = ServiceConfig.model_validate(raw)  # fail here rather than in the subprocess
    config_path, ports_path = scratch / "statlane.yaml", scratch / "ports.json"
    config_path.write_text(json.dumps(raw), encoding="utf-8")  # JSON is YAML
    cmd = [sys.executable, "-m", "serving.cli", "serve", "--config", str(config_path)]
    started = time.perf_counter()
    log_path = scratch / "serve.log"
    with server_process([*cmd, "--ports-file", str(ports_path)], log_path) as server:
        while not ports_path.is_file():
            if server.poll() is not None or time.perf_counter() - started > STARTUP_TIMEOUT_S:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise SystemExit(f"statlane serve did not start ({server.returncode}):\n{tail}")
            time.sleep(0.05)
        echo(int(json.loads(ports_path.read_text())["dicom"]), "STATLANE", server)
        startup = time.perf_counter() - started
        sent = send(config.dicom.port, "STATLANE", work.files, server.pid)
        studies = _study_timings(config.db_url, work, sent.exited, quiet)
    return {
        "seconds": sent.seconds,
        "server_cpu_s": sent.server_cpu_s,
        "service_startup_s": startup,
        "studies": studies,
    }
