"""The driver: every system once per repeat, the order rotating, then metrics and ratios."""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.ingest.systems import (
    ACK_ONLY,
    SPOOL_ONLY,
    STATLANE,
    STORESCP,
    SYSTEMS,
    run_ack_only,
    run_spool_only,
    run_statlane,
    run_storescp,
)
from benchmarks.ingest.workload import FULL, SMOKE, Workload, generate
from benchmarks.report import Report, progress

NAME = "ingest"
RATE_KEY = "statlane_rate_over_storescp_rate"
QUEUE_KEY = "last_instance_to_task_queued_minus_quiet_s"
TARGETS = {RATE_KEY: {"at_least": 0.4}, QUEUE_KEY: {"at_most": 0.1}}
LATENCY_KEYS = (
    "last_instance_to_study_complete_s",
    "study_complete_to_task_queued_s",
    "last_instance_to_task_queued_s",
    "last_instance_to_task_started_s",
    "storescu_exit_to_task_queued_s",
    "last_instance_recorded_to_task_queued_s",
)


def measure(work: Workload, root: Path, repeats: int, quiet: dict[str, float]) -> dict[str, list]:
    """Every system once per repeat, the order rotating; raw records per system."""
    raw: dict[str, list[dict[str, Any]]] = {s: [] for s in SYSTEMS}
    n = len(work.files)
    for r in range(repeats):
        shift = r % len(SYSTEMS)
        for system in SYSTEMS[shift:] + SYSTEMS[:shift]:
            scratch = root / f"run-{r}-{system}"
            scratch.mkdir()
            progress(f"[{r + 1}/{repeats}] {system}: {n} instances, one storescu association")
            if system == STORESCP:
                record = run_storescp(work, scratch)
            elif system == ACK_ONLY:
                record = run_ack_only(work, scratch)
            elif system == SPOOL_ONLY:
                record = run_spool_only(work, scratch)
            else:
                record = run_statlane(work, scratch, quiet)
            raw[system].append(record)
            line = f"    {n / record['seconds']:.1f} instances/s ({record['seconds']:.2f} s)"
            if "studies" in record:
                last = record["studies"][-1]["last_instance_to_task_queued_s"]
                line += f"; last instance -> task queued {last:.3f} s"
            progress(line)
            os.sync()  # this run's dirty pages reach the disk before the next run's clock starts
            shutil.rmtree(scratch)
    return raw


def system_metrics(system: str, records: list[dict[str, Any]], work: Workload) -> dict[str, Any]:
    """Raw seconds and server CPU seconds per repeat, and the derived medians, of one system."""
    seconds = [r["seconds"] for r in records]
    cpu = [r["server_cpu_s"] for r in records]
    n, median = len(work.files), statistics.median(seconds)
    metrics: dict[str, Any] = {
        "durable_before_ack": system in (STATLANE, SPOOL_ONLY),
        "stores_instances": system != ACK_ONLY,
        "seconds": seconds,
        "median_s": median,
        "instances": n,
        "bytes": work.total_bytes,
        "instances_per_s": n / median,
        "instances_per_s_each": [n / s for s in seconds],
        "ms_per_instance": 1000 * median / n,
        "mib_per_s": work.total_bytes / 2**20 / median,
        "server_cpu_s": cpu,
        "server_cpu_ms_per_instance": None if None in cpu else 1000 * statistics.median(cpu) / n,
    }
    if system == STATLANE:
        last = [r["studies"][-1] for r in records]  # the study holding the last instance
        metrics.update({key: statistics.median(s[key] for s in last) for key in LATENCY_KEYS})
        metrics["quiet_period_s"] = last[0]["quiet_period_s"]
        metrics["task_priority"] = last[0]["task_priority"]
        metrics["service_startup_s"] = [r["service_startup_s"] for r in records]
        metrics["studies_per_repeat"] = [r["studies"] for r in records]
    return metrics


def code_state() -> dict[str, Any]:
    """The commit measured and any uncommitted change under ``serving/`` (the ingest path)."""
    git = ["git", "-C", str(Path(__file__).resolve().parents[2])]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--", "serving"], capture_output=True, text=True
    )
    changed = [line[3:] for line in dirty.stdout.splitlines()]
    return {"commit": head.stdout.strip() or None, "uncommitted_serving_files": changed}


def build_report(args: argparse.Namespace) -> Report:
    """Generate the input, measure every system, derive ratios."""
    sizes = dict(SMOKE if args.smoke else FULL)
    if args.instances and not args.smoke:
        sizes["instances"] = args.instances
    repeats = args.repeats or (1 if args.smoke else 3)
    quiet = dict(sizes["quiet_period_s"])
    with tempfile.TemporaryDirectory(prefix="statlane-bench-ingest-", dir=args.tmp) as tmp:
        work = generate(Path(tmp), sizes)
        raw = measure(work, Path(tmp), repeats, quiet)
    metrics = {system: system_metrics(system, raw[system], work) for system in SYSTEMS}
    runs: list[dict[str, Any]] = [{"system": k, "metrics": v} for k, v in metrics.items()]
    rate = {k: v["instances_per_s"] for k, v in metrics.items()}
    s = metrics[STATLANE]
    ratios = {
        RATE_KEY: rate[STATLANE] / rate[STORESCP],
        "gateway_ack_only_rate_over_storescp_rate": rate[ACK_ONLY] / rate[STORESCP],
        "statlane_rate_over_gateway_ack_only_rate": rate[STATLANE] / rate[ACK_ONLY],
        "gateway_spool_rate_over_storescp_rate": rate[SPOOL_ONLY] / rate[STORESCP],
        QUEUE_KEY: s["last_instance_to_task_queued_s"] - s["quiet_period_s"],
        "last_instance_to_task_started_minus_quiet_s": s["last_instance_to_task_started_s"]
        - s["quiet_period_s"],
    }
    workload = {
        "studies": f"synthetic {sizes['kind']} (models.synthetic.generate_study), seed = index",
        "kind": sizes["kind"],
        "instances": len(work.files),
        "study_sizes": work.study_sizes,
        "matrix": sizes["matrix"],
        "slice_thickness_mm": sizes["slice_thickness_mm"],
        "bytes": work.total_bytes,
        "transfer_syntax": "explicit VR little endian (uncompressed)",
        "sender": "dcmtk storescu, one association, TCP_NODELAY=1, 127.0.0.1",
        "quiet_period_s": quiet,
        "repeats": repeats,
        "order": "rotating per repeat: " + " -> ".join(SYSTEMS) + ", then shifted by one",
        "timing": "wall clock (perf_counter) from storescu start to exit; medians over repeats",
        "statlane": "statlane serve subprocess, fresh var dir, default rules, runtime on CPU",
        "baseline": "dcmtk storescp +xa -od DIR subprocess: buffered writes, no fsync",
        "between_runs": "sync(2), then the run's files are deleted (outside the clock)",
        "code": code_state(),
    }
    targets = {k: dict(v) for k, v in TARGETS.items()}
    return Report(NAME, args.smoke, workload, runs, ratios, targets)
