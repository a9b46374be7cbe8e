"""Benchmark: durable DICOM ingest, statlane against dcmtk ``storescp``, sent by dcmtk ``storescu``.

Workload: synthetic CT studies written once by ``models.synthetic.generate_study`` (full: 500
instances as two 250-slice chest CTs, 512x512, 1.25 mm; ``--smoke``: one 40-slice head CT at
128x128). Each system is a process of its own and receives the same files from one
``/usr/bin/storescu`` association; each repeat runs all three, the order rotating:

* ``dcmtk-storescp`` - the baseline: ``storescp +xa -od DIR``, buffered writes, no fsync;
* ``gateway-ack-only`` - a reference: statlane's own DICOM gateway (pynetdicom, same AE
  settings and handlers) with a spool that keeps nothing: the ceiling of the DIMSE layer;
* ``statlane-durable`` - ``statlane serve`` with a fresh var dir, the default rules and a short
  quiet period: an instance is acknowledged once the spool has it on disk (synchronized
  write, rename, directory fsync).

Measured: instances/s (storescu start to exit), the server's CPU per instance, and for statlane
the time from the last instance (its spool file) to its task being queued and started (job
store). :data:`METHOD` (also in the markdown) says how, and why it is fair.

Usage: ``python -m benchmarks.ingest [--instances 500] [--repeats 3] [--smoke] [--out DIR]``.

The package: :mod:`~benchmarks.ingest.peers` (dcmtk, SCP processes, one transfer),
:mod:`~benchmarks.ingest.workload` (the synthetic studies), :mod:`~benchmarks.ingest.systems`
(the four systems), :mod:`~benchmarks.ingest.driver` (repeats, metrics, ratios, targets),
:mod:`~benchmarks.ingest.pages` (markdown and figure) and :mod:`~benchmarks.ingest.cli` (the
command line).
"""

from __future__ import annotations

from benchmarks.ingest.cli import main
from benchmarks.ingest.driver import (
    LATENCY_KEYS,
    NAME,
    QUEUE_KEY,
    RATE_KEY,
    TARGETS,
    build_report,
    code_state,
    measure,
    system_metrics,
)
from benchmarks.ingest.pages import METHOD, render, why_missed
from benchmarks.ingest.peers import (
    DCMTK_DIRS,
    Transfer,
    dcmtk,
    echo,
    free_port,
    process_cpu_s,
    send,
    server_process,
)
from benchmarks.ingest.systems import (
    ACK_ONLY,
    SPOOL_ONLY,
    STARTUP_TIMEOUT_S,
    STATLANE,
    STORESCP,
    SYSTEMS,
    TASK_TIMEOUT_S,
    DiscardingSpool,
    last_spooled_at,
    run_ack_only,
    run_spool_only,
    run_statlane,
    run_storescp,
    serve_ack_only,
    serve_spool_only,
)
from benchmarks.ingest.workload import FULL, SLICE_LIMITS, SMOKE, Workload, generate, study_sizes

__all__ = [
    "ACK_ONLY",
    "DCMTK_DIRS",
    "FULL",
    "LATENCY_KEYS",
    "METHOD",
    "NAME",
    "QUEUE_KEY",
    "RATE_KEY",
    "SLICE_LIMITS",
    "SMOKE",
    "SPOOL_ONLY",
    "STARTUP_TIMEOUT_S",
    "STATLANE",
    "STORESCP",
    "SYSTEMS",
    "TARGETS",
    "TASK_TIMEOUT_S",
    "DiscardingSpool",
    "Transfer",
    "Workload",
    "build_report",
    "code_state",
    "dcmtk",
    "echo",
    "free_port",
    "generate",
    "last_spooled_at",
    "main",
    "measure",
    "process_cpu_s",
    "render",
    "run_ack_only",
    "run_spool_only",
    "run_statlane",
    "run_storescp",
    "send",
    "serve_ack_only",
    "serve_spool_only",
    "server_process",
    "study_sizes",
    "system_metrics",
    "why_missed",
]
