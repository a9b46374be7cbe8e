"""What one run measured: each study's latency and stage breakdown, CPU share, engine facts.

Latencies and stages come from the job store and the outbox (seconds); :func:`summary`,
:func:`class_metrics` and :func:`stage_stats` condense them for the report.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from benchmarks.e2e.workload import QUIET_S, Sent
from serving.jobstore import TaskState
from serving.service.app import Service

STAGES = (
    "assembly_wait",
    "routing",
    "queue",
    "preprocess",
    "inference",
    "postprocess",
    "object_building",
    "delivery",
)


@dataclass
class Outcome:
    """What the job store says happened to one sent study (seconds unless named ``_at``)."""

    kind: str
    priority: str
    study_uid: str
    finding: bool
    total_s: float | None
    stages_s: dict[str, float] = field(default_factory=dict)
    quiet_waited_s: float = 0.0
    overhead_s: float | None = None
    ack_lag_s: float | None = None
    deadline_missed: bool = False
    engine_deadline_missed: bool = False
    delivered_at: datetime | None = None
    sr_path: str | None = None
    in_orthanc: bool | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The raw record kept in the JSON (no patient data; UIDs are synthetic)."""
        return {
            "kind": self.kind,
            "priority": self.priority,
            "study_instance_uid": self.study_uid,
            "finding": self.finding,
            "total_s": _r(self.total_s),
            "stages_s": {k: _r(v) for k, v in self.stages_s.items()},
            "quiet_waited_s": _r(self.quiet_waited_s),
            "overhead_s": _r(self.overhead_s),
            "ack_lag_s": _r(self.ack_lag_s),
            "deadline_missed": self.deadline_missed,
            "engine_deadline_missed": self.engine_deadline_missed,
            "in_orthanc": self.in_orthanc,
            "error": self.error,
        }


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def outcomes(service: Service, sent: Sequence[Sent]) -> list[Outcome]:
    """Each sent study's latency and stage breakdown from the job store and outbox."""
    tasks: dict[str, list[Any]] = {}
    for task in service.store.tasks():
        tasks.setdefault(task.study_instance_uid, []).append(task)
    srs = {str(i.task_id): i for i in service.outbox.items() if str(i.kind) == "sr"}
    result = []
    for item in sent:
        s = item.study
        out = Outcome(s.kind, s.priority, s.study_uid, s.finding, None, error=item.error)
        result.append(out)
        study_tasks = tasks.get(s.study_uid, [])
        if item.ack_at is None or not study_tasks:
            out.error = out.error or "no task"
            continue
        task = study_tasks[-1]
        study = service.store.study(s.study_uid)
        last_instance = max(r.last_instance_at for r in service.store.series_of(s.study_uid))
        sr = srs.get(task.task_id)
        if task.state is not TaskState.DONE or sr is None or sr.delivered_at is None:
            out.error = task.error or f"task {task.state.value}, SR not delivered"
            continue
        assert study is not None and study.completed_at is not None
        assert task.started_at is not None
        engine = task.result["stages_s"]
        engine_total = engine["total"]
        work = {k: float(engine[k] or 0.0) for k in ("preprocess", "inference", "postprocess")}
        # The task starts (job store) just before the engine receives it, so the engine's
        # answer is at started_at + engine total on the UTC clock.
        out.stages_s = {
            "assembly_wait": secs(study.completed_at, item.ack_at),
            "routing": secs(task.started_at, study.completed_at),
            "queue": engine_total - sum(work.values()),
            **work,
            "object_building": secs(sr.created_at, task.started_at) - engine_total,
            "delivery": secs(sr.delivered_at, sr.created_at),
        }
        out.total_s = secs(sr.delivered_at, item.ack_at)
        out.quiet_waited_s = min(max(out.stages_s["assembly_wait"], 0.0), QUIET_S[s.priority])
        out.overhead_s = out.total_s - out.quiet_waited_s - work["preprocess"] - work["inference"]
        out.ack_lag_s = secs(item.ack_at, last_instance)
        out.deadline_missed = sr.delivered_at > task.deadline_at
        out.engine_deadline_missed = bool(task.result.get("deadline_missed"))
        out.delivered_at = sr.delivered_at
        out.sr_path = sr.payload_path
    return result


def secs(later: datetime, earlier: datetime) -> float:
    """``later`` minus ``earlier`` in seconds."""
    return (later - earlier).total_seconds()


def machine_busy_s() -> float | None:
    """CPU seconds all cores spent busy since boot (``/proc/stat``), None where unavailable."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    ticks = [int(v) for v in fields[:8]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait


def own_cpu_s() -> float:
    """CPU seconds of this process and its waited-for children (storescu, Orthanc)."""
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


@contextmanager
def cpu_share(into: dict[str, Any]) -> Iterator[None]:
    """Fill ``into`` with the machine's busy cores during the block and how much of that was
    this benchmark (service, Orthanc, storescu) versus other processes (averages, cores)."""
    wall, busy, own = time.monotonic(), machine_busy_s(), own_cpu_s()
    yield
    wall = time.monotonic() - wall
    busy_after = machine_busy_s()
    own = own_cpu_s() - own
    into["wall_s"] = round(wall, 2)
    into["benchmark_cores"] = round(own / wall, 3)
    if busy is not None and busy_after is not None:
        into["machine_busy_cores"] = round((busy_after - busy) / wall, 3)
        into["other_processes_cores"] = round(max(busy_after - busy - own, 0.0) / wall, 3)


def verify_in_orthanc(pacs: Any, records: Sequence[Outcome]) -> int:
    """Look every delivered SR up in Orthanc by SOP Instance UID; returns how many were found."""
    found = 0
    for record in records:
        if record.sr_path is None:
            continue
        uid = str(pydicom.dcmread(record.sr_path, stop_before_pixels=True).SOPInstanceUID)
        hits = pacs.post("/tools/lookup", uid.encode())
        record.in_orthanc = any(h.get("Type") == "Instance" for h in hits or [])
        found += record.in_orthanc
    return found


def runtime_facts(service: Service) -> dict[str, Any]:
    """What the service's engine runs: backend, policy and which models it chunks."""
    runtime = service.runtime
    if runtime is None:
        return {"backend": None, "policy": service.config.runtime.policy, "chunked_models": []}
    models = runtime.engine.models
    chunked = sorted(n for n, e in models.items() if getattr(e, "chunking", None) is not None)
    return {
        "backend": runtime.backend_name,
        "policy": service.config.runtime.policy,
        "models": sorted(models),
        "chunked_models": chunked,
        "max_blocking_s": getattr(runtime.engine.scheduler.policy, "max_blocking_s", None),
        "stat_lanes": runtime.engine.scheduler.config.stat_lanes,
    }


def engine_facts(service: Service) -> dict[str, Any]:
    """Per model (warm-up included): how many tasks ran at each batch size, and their
    inference time against the batch-1 median of the manifest's latency profile (seconds)."""
    facts: dict[str, Any] = {}
    for task in service.store.tasks():
        if task.result is None:
            continue
        model = facts.setdefault(task.model, {"batch_sizes": {}, "inference": []})
        size = str(task.result.get("batch_size"))
        model["batch_sizes"][size] = model["batch_sizes"].get(size, 0) + 1
        model["inference"].append(task.result["stages_s"]["inference"] or 0.0)
    manifests = service.runtime.manifests if service.runtime is not None else {}
    for name, model in facts.items():
        times = model.pop("inference")
        model["inference_median_s"] = float(np.median(times))
        model["inference_max_s"] = float(np.max(times))
        manifest = manifests.get(name)
        if manifest is not None and manifest.latency:
            model["profile_batch1_median_s"] = manifest.latency[0].points[0].median_s
    return facts


def summary(values: Sequence[float]) -> dict[str, Any]:
    """p50/p95/p99/max/mean (linear interpolation) and count of ``values`` (seconds)."""
    if not values:
        return {"count": 0}
    a = np.asarray(values, dtype=float)
    stats = {f"p{q}_s": float(np.percentile(a, q)) for q in (50, 95, 99)}
    return {**stats, "max_s": float(a.max()), "mean_s": float(a.mean()), "count": len(a)}


def class_metrics(records: Sequence[Outcome]) -> dict[str, Any]:
    """Latency summary of one priority class plus undelivered and deadline-miss counts."""
    totals = [r.total_s for r in records if r.total_s is not None]
    return {
        **summary(totals),
        "count": len(totals),
        "sent": len(records),
        "undelivered": len(records) - len(totals),
        "deadline_misses": sum(r.deadline_missed for r in records),
        "engine_deadline_misses": sum(r.engine_deadline_missed for r in records),
    }


def stage_stats(records: Sequence[Outcome]) -> dict[str, dict[str, float]]:
    """Median, p95 and mean of each stage over ``records`` (seconds)."""
    stats = {}
    for stage in STAGES:
        a = np.asarray([r.stages_s[stage] for r in records], dtype=float)
        if a.size:
            stats[stage] = {
                "median_s": float(np.median(a)),
                "p95_s": float(np.percentile(a, 95)),
                "mean_s": float(a.mean()),
            }
    return stats
