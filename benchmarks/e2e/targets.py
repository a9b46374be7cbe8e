"""The targets, the ratios derived from the runs, and a measured reason for each missed target."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

from benchmarks.e2e.workload import QUIET_S
from benchmarks.report import Report

MACHINE_CORES = len(os.sched_getaffinity(0))  # the cores this process may run on (Linux)
P95_MINUS_QUIET = "statlane_stat_p95_minus_quiet_s"
OVERHEAD = "statlane_orchestration_overhead_p95_s"
FIFO_RATIO = "fifo_stat_p95_over_statlane_stat_p95"
TARGETS = {
    P95_MINUS_QUIET: {"at_most": 5.0},
    OVERHEAD: {"at_most": 1.0},
    FIFO_RATIO: {"at_least": 1.0},
}


def derive(runs: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Ratios from ``runs`` only: the targeted three and informational ones (seconds or
    unitless); a ratio whose inputs are missing (no study of a class) is left out."""
    by = {r["system"]: r for r in runs}
    edf, fifo = by["statlane-edf"], by["baseline-fifo"]

    def p95(run: dict[str, Any], cls: str) -> float:
        return float(run["metrics"][cls].get("p95_s", math.nan))

    def overhead(run: dict[str, Any]) -> float:
        return float(run["stat_overhead_s"].get("p95_s", math.nan))

    ratios = {
        P95_MINUS_QUIET: p95(edf, "stat") - QUIET_S["stat"],
        OVERHEAD: overhead(edf),
        FIFO_RATIO: p95(fifo, "stat") / p95(edf, "stat"),
        "fifo_stat_p95_minus_quiet_s": p95(fifo, "stat") - QUIET_S["stat"],
        "fifo_orchestration_overhead_p95_s": overhead(fifo),
        "statlane_routine_p95_over_fifo_routine_p95": p95(edf, "routine") / p95(fifo, "routine"),
        "statlane_urgent_p95_over_fifo_urgent_p95": p95(edf, "urgent") / p95(fifo, "urgent"),
        "statlane_throughput_over_fifo_throughput": edf["metrics"]["throughput_per_s"]
        / fifo["metrics"]["throughput_per_s"],
    }
    return {k: v for k, v in ratios.items() if math.isfinite(v)}


def largest_stages(run: dict[str, Any], skip: Sequence[str] = ()) -> list[tuple[str, float]]:
    """The three stat stages with the largest p95 (seconds), largest first."""
    stages = [(s, v["p95_s"]) for s, v in run["stat_stages_s"].items() if s not in skip]
    return sorted(stages, key=lambda sv: -sv[1])[:3]


# Why a stage costs what it does, and what in statlane would shorten it. Each names the code it
# is about; ``queue`` depends on whether the service's engine chunks the chest CT.
CAUSES = {
    "queue_whole": (
        "the stat waited in the engine behind routine chest CTs already on the device, run as "
        "whole volumes (the chest CT model is not chunked here) in batches of up to {batch}, "
        "{inference:.1f} s per task at the median ({profile:.2f} s in the latency profile); "
        "{blocking}, and {lanes}. Chunking the model (`runtime.chunking` in its manifest) bounds "
        "the wait to one patch batch; a stat lane removes it."
    ),
    "queue_chunked": (
        "the stat waited in the engine for a preprocessing worker and for the device: here "
        "chest CT patch batches of up to {batch} patches ({inference:.1f} s per chest CT task "
        "at the median, {profile:.2f} s per patch in the latency profile), {blocking}, and "
        "{lanes}. A stat lane lets a stat start next to the batch on the device instead of "
        "after it (`runtime.stat_lanes`)."
    ),
    "assembly_wait": (
        "the quiet period counts from the gateway's acknowledgement, but a study completes only "
        "once the ingest thread has recorded its last instance (`Coordinator.run_ingest` → "
        "`_record_batch`: one job-store transaction per batch, streaming decode of stat-eligible "
        "series) behind the routine instances of other associations, and then waits for the "
        "coordinator loop to route it. Recording stat-eligible studies first would take the "
        "ingest lag out of it."
    ),
    "object_building": (
        "the engine's answer becomes an SR in the outbox on the stat results thread "
        "(`serving/service/outcomes.py` `run_results` → `result_ready`: `_ai_result` builds "
        "it with the headers kept from ingest, the mask follows later; "
        "`serving/delivery/payloads.py` "
        "`enqueue_results` writes and queues the SR before GSPS, SC and SEG are built). It is a "
        "stat stage (`serving/service/stat_gate.py`): background routing, result objects, "
        "deliveries and CPU batches step aside between their steps, but a step under way "
        "(a chest CT patch batch, a SEG) runs to its end, and the ingest thread never waits."
        "{split}"
    ),
    "delivery": (
        "a worker reserved for stat items (`delivery-stat` in `DeliveryWorkers`) is "
        "woken when the SR is queued and sends it on the association kept open for the "
        "destination (`DicomStoreDestination.deliver`, `keep_open_s`); it shares the cores "
        "with Orthanc and with background work already under way."
    ),
    "routing": (
        "stat studies are routed on a thread of their own (`coordinator-stat`: rules, routing "
        "decision, worklist, task creation; its job-store commits wait for no fsync, as a "
        "restart re-routes), which shares the job store's writer lock with the ingest thread "
        "and the cores with background work already under way."
    ),
    "postprocess": (
        "postprocessing runs on the engine's single postprocessing thread, shared with the "
        "routine chest CTs' postprocessing."
    ),
    "inference": (
        "the stat CT head's model shares the cores with preprocessing, ingest, result building, "
        "Orthanc and the machine's other processes (see `other processes (cores)`): its "
        "inference took {inference:.2f} s at the median against {profile:.2f} s in its "
        "manifest's latency profile (measured alone)."
    ),
    "preprocess": "preprocessing shares the cores with everything else on the machine.",
}


def cause(stage: str, run: dict[str, Any]) -> str:
    """The explanation of one stage for ``run`` (see :data:`CAUSES`)."""
    if stage == "queue":
        chest: dict[str, Any] = next((v for m, v in run["engine"].items() if "ct-chest" in m), {})
        chunked = any("ct-chest" in m for m in run["runtime"]["chunked_models"])
        blocking = run["runtime"].get("max_blocking_s")
        return CAUSES["queue_chunked" if chunked else "queue_whole"].format(
            blocking=(
                "the service passes no `max_blocking_s` to `make_policy` "
                "(`serving/service/runtime.py` `build_runtime`), so nothing else bounds a "
                "routine batch's duration"
                if blocking is None
                else f"routine batches are bounded to {blocking} s (`max_blocking_s`)"
            ),
            lanes=(
                f"{run['runtime'].get('stat_lanes')} stat lane(s) ran stats next to a busy device"
                if run["runtime"].get("stat_lanes")
                else "no stat lane was configured, so a stat waits for the batch on the device"
            ),
            batch=max((int(b) for b in chest.get("batch_sizes", {})), default=1),
            inference=chest.get("inference_median_s", math.nan),
            profile=chest.get("profile_batch1_median_s", math.nan),
        )
    if stage == "object_building":
        split = run.get("stat_object_building_s", {})
        pos, neg = split.get("positive", {}), split.get("negative", {})
        text = ""
        if pos.get("count") and neg.get("count"):
            text = (
                f" Stat studies with a finding took "
                f"{pos['p50_s']:.2f} s at the median, those without {neg['p50_s']:.2f} s."
            )
        return CAUSES["object_building"].format(split=text)
    if stage == "inference":
        head: dict[str, Any] = next((v for m, v in run["engine"].items() if "ich" in m), {})
        return CAUSES["inference"].format(
            inference=head.get("inference_median_s", math.nan),
            profile=head.get("profile_batch1_median_s", math.nan),
        )
    return CAUSES[stage]


def contributors(run: dict[str, Any], skip: Sequence[str]) -> list[tuple[str, float]]:
    """The three largest stat stages at p95 (seconds), counting the assembly wait only beyond
    the quiet period (the quiet period itself is the design, not a delay)."""
    stages = dict(largest_stages(run, skip=(*skip, "assembly_wait")))
    wait = run["stat_stages_s"].get("assembly_wait", {}).get("p95_s", 0.0)
    stages["assembly_wait"] = max(wait - QUIET_S["stat"], 0.0)
    return sorted(stages.items(), key=lambda sv: -sv[1])[:3]


def why_missed(report: Report) -> dict[str, str]:
    """A measured reason and what would close it, for each missed target (in target order; a
    stage explained under an earlier target is referred to, not repeated)."""
    by = {r["system"]: r for r in report.runs}
    edf, fifo = by["statlane-edf"], by["baseline-fifo"]
    ratios, met = report.ratios, report.target_status()
    explained: set[str] = set()

    def explain(stages: list[tuple[str, float]]) -> str:
        parts = []
        for i, (stage, p95) in enumerate(stages, 1):
            why = "see above." if stage in explained else cause(stage, edf)
            explained.add(stage)
            label = stage.replace("_", " ")
            if stage == "assembly_wait":
                label += " beyond the quiet period"
            parts.append(f"({i}) **{label}** (p95 {p95:.2f} s): {why}")
        return " ".join(parts)

    busy = edf["cpu"].get("other_processes_cores")
    shared = (
        f" Processes outside the benchmark used {busy:.2f} of the {MACHINE_CORES} cores on "
        "average during this run, which lengthens every stage."
        if isinstance(busy, float) and busy > 0.25
        else ""
    )
    over, overhead = ratios.get(P95_MINUS_QUIET, math.nan), ratios.get(OVERHEAD, math.nan)
    why = {}
    if not met[P95_MINUS_QUIET]:
        why[P95_MINUS_QUIET] = (
            f"statlane's stat p95 is {over + QUIET_S['stat']:.2f} s, {over:.2f} s over the "
            f"{QUIET_S['stat']} s quiet period (the assembly wait counts only beyond it). "
            f"Largest stat stages at p95: {explain(contributors(edf, skip=()))}{shared}"
        )
    if not met[OVERHEAD]:
        why[OVERHEAD] = (
            f"the stat orchestration overhead p95 is {overhead:.2f} s. Largest overhead stages "
            f"at p95: {explain(contributors(edf, skip=('preprocess', 'inference')))}{shared}"
        )
    if not met[FIFO_RATIO]:
        why[FIFO_RATIO] = (
            f"fifo's stat p95 ({fifo['metrics']['stat'].get('p95_s', math.nan):.2f} s) is "
            f"not above statlane's ({edf['metrics']['stat'].get('p95_s', math.nan):.2f} s): "
            "the stat studies' waits behind routine work did not differ between the policies by "
            "more than the noise of this run; a longer --duration (more stat samples) or a higher "
            "--load separates them."
        )
    return why
