"""The benchmark's phases: capacity on a closed loop, then every system under the workload.

:func:`build_report` runs them in order and gathers the runs, the derived ratios and the targets
into one :class:`benchmarks.report.Report`.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.e2e.measure import (
    Outcome,
    class_metrics,
    cpu_share,
    engine_facts,
    outcomes,
    runtime_facts,
    secs,
    stage_stats,
    summary,
    verify_in_orthanc,
)
from benchmarks.e2e.systems import (
    SYSTEMS,
    find_storescu,
    finished,
    running,
    say,
    send_all,
    send_study,
    wait_for_results,
    warm_up,
)
from benchmarks.e2e.targets import TARGETS, derive
from benchmarks.e2e.workload import (
    CLASSES,
    DEADLINES_S,
    FULL,
    IN_FLIGHT,
    KINDS,
    QUIET_S,
    SEED_BASE,
    SMOKE,
    Sent,
    Study,
    arrivals,
    make_studies,
    with_studies,
)
from benchmarks.report import Report

NAME = "e2e"


def source_tree() -> dict[str, Any]:
    """The statlane code measured: commit and the files changed in the working tree."""
    root = Path(__file__).resolve().parents[2]

    def git(*args: str) -> list[str]:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        return done.stdout.splitlines() if done.returncode == 0 else []

    changed = [line[3:] for line in git("status", "--porcelain") if len(line) > 3]
    return {"commit": next(iter(git("rev-parse", "HEAD")), None), "uncommitted": changed}


def measure_capacity(
    workdir: Path,
    storescu: Path,
    pool: Sequence[Study],
    warmup: Sequence[Study],
    window_s: float,
) -> dict[str, Any]:
    """Closed loop on a fresh, warmed-up service: ``IN_FLIGHT`` slots each keep one study of
    the background mix in flight (chest CT and radiograph in turn, the next sent as soon as the
    previous one's SR is stored) for ``window_s`` seconds; capacity is the rate of SRs stored
    after the first quarter of the window (studies/s)."""
    chests = iter([s for s in pool if s.kind == "ct-chest"])
    films = iter([s for s in pool if s.kind != "ct-chest"])
    cpu: dict[str, Any] = {}
    with cpu_share(cpu), running(workdir, "edf") as (service, _):
        if warmup:
            warm_up(service, storescu, warmup)
        port, sent = service.ports.dicom, list[Sent]()
        slots: list[Sent | None] = [None] * IN_FLIGHT
        chest_next = [i % 2 == 0 for i in range(IN_FLIGHT)]  # each slot alternates kinds
        start, t0 = time.monotonic(), datetime.now(UTC)
        with ThreadPoolExecutor(max_workers=IN_FLIGHT, thread_name_prefix="modality") as senders:
            while time.monotonic() - start < window_s:
                done = finished(service)
                for i, current in enumerate(slots):
                    if (
                        current is not None
                        and current.error is None
                        and current.study.study_uid not in done
                    ):
                        continue
                    study = next(chests if chest_next[i] else films, None)
                    if study is None:  # a fast machine: measure over the time so far
                        window_s = time.monotonic() - start
                        say(f"capacity: the study pool ran out after {window_s:.0f} s")
                        break
                    chest_next[i] = not chest_next[i]
                    item = slots[i] = Sent(study, time.monotonic() - start)
                    sent.append(item)
                    senders.submit(send_study, storescu, port, item, "BENCH_CAPACITY")
                time.sleep(0.25)
        records = outcomes(service, sent)
    skip = window_s / 4
    t_skip, t_end = t0 + timedelta(seconds=skip), t0 + timedelta(seconds=window_s)
    counted = [
        r for r in records if r.delivered_at is not None and t_skip < r.delivered_at <= t_end
    ]
    if not counted:
        raise SystemExit(f"capacity: no SR came out of the service within {window_s} s")
    return {
        "method": f"closed loop, {IN_FLIGHT} studies of the background mix in flight for "
        f"{window_s:.0f} s on a warmed-up service; SRs stored after the first {skip:.0f} s "
        "per second",
        "studies_sent": len(sent),
        "srs_counted": len(counted),
        "counted_by_kind": {k: sum(r.kind == k for r in counted) for k in KINDS if k != "ct-head"},
        "capacity_per_s": len(counted) / (window_s - skip),
        "cpu": cpu,
    }


def run_system(
    system: str,
    policy: str,
    workdir: Path,
    storescu: Path,
    warmup: Sequence[Study],
    sent: Sequence[Sent],
    drain_timeout_s: float,
) -> tuple[dict[str, Any], list[Outcome]]:
    """One system under the workload: warm up, send, drain, collect, verify in Orthanc."""
    fresh = [Sent(s.study, s.due_s) for s in sent]
    cpu: dict[str, Any] = {}
    with cpu_share(cpu), running(workdir / system, policy) as (service, pacs):
        runtime = runtime_facts(service)
        if warmup:
            say(f"{system}: warming up")
            warm_up(service, storescu, warmup)
        say(f"{system}: sending {len(fresh)} studies")
        start_mono = time.monotonic()
        started = datetime.now(UTC)
        send_all(service, storescu, fresh, paced=True)
        sent_s = time.monotonic() - start_mono
        say(f"{system}: all sent; waiting for the last SRs")
        open_count = wait_for_results(service, fresh, timeout_s=drain_timeout_s)
        records = outcomes(service, fresh)
        found = verify_in_orthanc(pacs, records)
        engine = engine_facts(service)
    delivered = [r for r in records if r.total_s is not None]
    last = max((r.delivered_at for r in delivered if r.delivered_at), default=started)
    metrics: dict[str, Any] = {
        c: class_metrics([r for r in records if r.priority == c]) for c in CLASSES
    }
    background = [r for r in delivered if r.priority != "stat"]
    window_end = started + timedelta(seconds=max((s.due_s for s in fresh), default=0.0))
    metrics["open_at_window_end"] = sum(
        r.priority != "stat" and (r.delivered_at is None or r.delivered_at > window_end)
        for r in records
    )
    metrics["throughput_per_s"] = len(background) / max(secs(last, started), 1e-9)
    metrics["sending_s"] = round(sent_s, 3)
    metrics["open_after_drain"] = open_count
    stat = [r for r in delivered if r.priority == "stat"]
    run: dict[str, Any] = {
        "system": system,
        "policy": policy,
        "metrics": metrics,
        "stat_stages_s": stage_stats(stat),
        "stat_overhead_s": summary([r.overhead_s for r in stat if r.overhead_s is not None]),
        # A positive study's SR is enqueued after its GSPS, SC and SEG are built.
        "stat_object_building_s": {
            label: summary([r.stages_s["object_building"] for r in stat if r.finding is positive])
            for label, positive in (("positive", True), ("negative", False))
        },
        "stat_ack_lag_s": summary([r.ack_lag_s for r in stat if r.ack_lag_s is not None]),
        "orthanc": {"srs_delivered": len(delivered), "srs_found_in_orthanc": found},
        "runtime": runtime,
        "engine": engine,
        "cpu": cpu,
        "studies": [r.to_json() for r in records],
    }
    say(
        f"{system}: stat p95 {metrics['stat'].get('p95_s')} s, overhead p95 "
        f"{run['stat_overhead_s'].get('p95_s')} s, {found}/{len(delivered)} SRs in Orthanc"
    )
    return run, records


def build_report(args: argparse.Namespace) -> tuple[Report, dict[str, list[Outcome]]]:
    """Measure capacity, build the workload, run every system, derive the ratios."""
    mode = SMOKE if args.smoke else FULL
    duration = args.duration or mode.duration_s
    interval = args.stat_interval or mode.stat_interval_s
    storescu = find_storescu()
    workdir = args.workdir or Path(tempfile.gettempdir()) / "statlane-bench-e2e"
    root = workdir / "studies"
    warmup = []
    if mode.warmup:
        warm = [("ct-head", SEED_BASE + 900, True), ("ct-chest", SEED_BASE + 901, True)]
        warmup = make_studies(root, [*warm, ("cr-chest", SEED_BASE + 902, True)])
    if args.capacity:
        capacity: dict[str, Any] = {
            "method": "given with --capacity",
            "capacity_per_s": args.capacity,
        }
    else:
        # Distinct studies for the window up to 1.2 studies/s (a faster machine measures over
        # the time until the pool runs out).
        count = int(mode.calibration_s * 1.2) + 2 * IN_FLIGHT
        wanted = [
            (("ct-chest", "cr-chest", "ct-chest", "dx-chest")[i % 4], SEED_BASE + i, i % 3 == 1)
            for i in range(count)
        ]
        say(f"capacity: generating a pool of {len(wanted)} studies")
        pool = make_studies(root, wanted)
        say(f"capacity: closed loop for {mode.calibration_s:.0f} s on a fresh service")
        capacity = measure_capacity(
            workdir / "capacity", storescu, pool, warmup, mode.calibration_s
        )
        say(f"capacity: {capacity['capacity_per_s']:.3f} studies/s")
    rate = args.load * float(capacity["capacity_per_s"])
    plan = arrivals(rate, duration, args.ct_fraction, interval, args.seed)
    say(f"workload: {len(plan)} arrivals in {duration:.0f} s; generating studies")
    sent = with_studies(plan, root, SEED_BASE + 10_000)
    kinds: dict[str, int] = {}
    for _, kind in plan:
        kinds[kind] = kinds.get(kind, 0) + 1
    workload = {
        "duration_s": duration,
        "load": args.load,
        "capacity": capacity,
        "background_rate_per_s": round(rate, 4),
        "background_mix": {
            "ct-chest (routine)": args.ct_fraction,
            "cr/dx-chest (urgent)": round(1 - args.ct_fraction, 3),
        },
        "stat_interval_s": interval,
        "arrivals": kinds,
        "sizes": {
            k: {"matrix": m, "slices": n or (32 if k == "ct-head" else 1)}
            for k, (_, m, n) in KINDS.items()
        },
        "quiet_period_s": QUIET_S,
        "deadlines_s": DEADLINES_S,
        "warmup_studies": len(warmup),
        "seed": args.seed,
        "sender": "dcmtk storescu, one association per study, TCP_NODELAY=1",
        "service": "in process; ONNX Runtime CPU, 2 preprocessing workers, 2 delivery workers",
        "statlane_tree": source_tree(),
    }
    runs, records = [], {}
    for system, policy in SYSTEMS:
        run, outcome = run_system(
            system, policy, workdir, storescu, warmup, sent, drain_timeout_s=args.drain_timeout
        )
        run["load"] = args.load
        runs.append(run)
        records[system] = outcome
    report = Report(NAME, args.smoke, workload, runs, derive(runs), dict(TARGETS))
    return report, records
