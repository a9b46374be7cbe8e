"""Benchmark: stat CT heads under 80% routine load, last instance acknowledged → SR in Orthanc.

The whole service (``serving.service.app.Service``: DIMSE gateway, spool, job store, assembly,
rules, engine on ONNX Runtime CPU, result objects, outbox) runs in this process; a real Orthanc
is the PACS and dcmtk's ``storescu`` is the modality, one association per study.

Workload (identical for every system; the same synthetic studies, the same arrival times):

* background: open-loop Poisson arrivals of routine chest CTs (``ct-chest-nodule``, 100 slices of
  192x192) and urgent chest radiographs (``cxr-pneumothorax``, CR/DX 512x512, half each) at
  ``--load`` (default 0.8) of the capacity measured in this run;
* stat: one CT head (``ich-ct-head``, 32 slices of 256x256) every ``--stat-interval`` seconds on
  its own association, with a random phase;
* quiet periods stat 1.0 s, urgent 2.0 s, routine 3.0 s; deadlines stat 60 s, urgent 300 s,
  routine 3600 s; findings planted in about half the studies (positives add GSPS/SC/SEG).

Capacity is measured first on a fresh, warmed-up service: a closed loop keeps 8 studies of the
background mix in flight (the next sent as soon as one's SR is stored) for 60 s, and capacity is
the rate of SRs stored after the first quarter of that window (studies per second, end to end on
this machine, in this run).

Systems, each on a fresh service and a fresh Orthanc, warmed up with one study of each kind:

* ``baseline-fifo`` - the same service with ``runtime.policy: fifo`` and
  ``runtime.stat_gate_max_wait_s: 0`` (what a naive gateway + worker does: one queue, first
  come first served, and no priority for stat work in the stages around the engine);
* ``statlane-edf`` - statlane's defaults: the ``edf`` policy, and background work stepping
  aside while a stat study is routed, run, built and delivered.

Latency of a study: the C-STORE response for its last instance (UTC, taken when storescu logs it)
→ its SR's outbox item delivered (Orthanc answered the C-STORE with success), seconds; every SR
is then looked up in Orthanc's REST API. The per-stage breakdown comes from the job store and the
task's engine stage times and sums to the latency: assembly wait (ack → study complete),
routing (→ task started), queue (engine: waiting for a preprocessing worker and for a batch),
preprocess, inference, postprocess, object building (engine answer → SR in the outbox: the AI
result, SR/GSPS/SC/SEG written) and delivery (→ Orthanc acknowledged the SR). Orchestration
overhead is the latency minus the quiet period actually waited (at most the configured one)
minus preprocessing and inference.

Usage: ``python -m benchmarks.e2e [--smoke] [--duration S] [--load F] [--stat-interval S]
[--capacity PER_S] [--workdir DIR] [--out DIR]``.

The package: :mod:`~benchmarks.e2e.workload` (classes, studies, arrivals),
:mod:`~benchmarks.e2e.systems` (Orthanc, the service per policy, storescu),
:mod:`~benchmarks.e2e.measure` (latency, stages, CPU, engine facts),
:mod:`~benchmarks.e2e.phases` (capacity, each system, the report), :mod:`~benchmarks.e2e.targets`
(ratios, targets, why a target was missed), :mod:`~benchmarks.e2e.pages` (markdown and figure)
and :mod:`~benchmarks.e2e.cli` (the command line).
"""

from __future__ import annotations

from benchmarks.e2e.cli import main
from benchmarks.e2e.measure import (
    STAGES,
    Outcome,
    class_metrics,
    cpu_share,
    engine_facts,
    machine_busy_s,
    outcomes,
    own_cpu_s,
    runtime_facts,
    stage_stats,
    summary,
    verify_in_orthanc,
)
from benchmarks.e2e.pages import CLASS_COLORS, NOTES, PALETTE, figure, markdown
from benchmarks.e2e.phases import NAME, build_report, measure_capacity, run_system, source_tree
from benchmarks.e2e.systems import (
    SYSTEMS,
    find_storescu,
    finished,
    orthanc,
    running,
    say,
    send_all,
    send_study,
    service_config,
    wait_for_results,
    warm_up,
)
from benchmarks.e2e.targets import (
    CAUSES,
    FIFO_RATIO,
    MACHINE_CORES,
    OVERHEAD,
    P95_MINUS_QUIET,
    TARGETS,
    cause,
    contributors,
    derive,
    largest_stages,
    why_missed,
)
from benchmarks.e2e.workload import (
    CLASSES,
    DEADLINES_S,
    FULL,
    IN_FLIGHT,
    KINDS,
    QUIET_S,
    SEED_BASE,
    SMOKE,
    Mode,
    Sent,
    Study,
    arrivals,
    make_studies,
    with_studies,
)

__all__ = [
    "CAUSES",
    "CLASSES",
    "CLASS_COLORS",
    "DEADLINES_S",
    "FIFO_RATIO",
    "FULL",
    "IN_FLIGHT",
    "KINDS",
    "MACHINE_CORES",
    "NAME",
    "NOTES",
    "OVERHEAD",
    "P95_MINUS_QUIET",
    "PALETTE",
    "QUIET_S",
    "SEED_BASE",
    "SMOKE",
    "STAGES",
    "SYSTEMS",
    "TARGETS",
    "Mode",
    "Outcome",
    "Sent",
    "Study",
    "arrivals",
    "build_report",
    "cause",
    "class_metrics",
    "contributors",
    "cpu_share",
    "derive",
    "engine_facts",
    "figure",
    "find_storescu",
    "finished",
    "largest_stages",
    "machine_busy_s",
    "main",
    "make_studies",
    "markdown",
    "measure_capacity",
    "orthanc",
    "outcomes",
    "own_cpu_s",
    "run_system",
    "running",
    "runtime_facts",
    "say",
    "send_all",
    "send_study",
    "service_config",
    "source_tree",
    "stage_stats",
    "summary",
    "verify_in_orthanc",
    "wait_for_results",
    "warm_up",
    "why_missed",
    "with_studies",
]
