"""The command line and the report: ``python -m benchmarks.reliability [--smoke] [--out DIR]``."""

from __future__ import annotations

import argparse
import logging
import random
import shutil
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from benchmarks.reliability.peers import Pacs, Serve, say, write_config
from benchmarks.reliability.scenarios import (
    OLD_DEAD_AFTER_S,
    PHASES,
    Sizes,
    burst,
    hostile,
    kill_trial,
    outage,
)
from benchmarks.report import Report, markdown_table, targets_markdown, write_report
from tests.orthanc_peer import free_ports

FULL = Sizes(
    trials=20,
    ct_matrix=128,
    ct_slices=32,
    outage_s=60.0,
    outage_studies=8,
    burst=1000,
    burst_matrix=128,
    burst_senders=4,
    stuck_after_s=120.0,
    quiet_s=1.0,
    bound_s=None,
    rss_settle_s=10.0,
)
SMOKE = Sizes(
    trials=5,
    ct_matrix=128,
    ct_slices=32,
    outage_s=6.0,
    outage_studies=2,
    burst=20,
    burst_matrix=128,
    burst_senders=2,
    stuck_after_s=60.0,
    quiet_s=0.5,
    bound_s=2.0,
    rss_settle_s=2.0,
)

TARGETS: dict[str, dict[str, float]] = {
    "lost_total": {"at_most": 0},
    "duplicated_total": {"at_most": 0},
    "stale_total": {"at_most": 0},
    "stuck_total": {"at_most": 0},
    "outage_dead_letters": {"at_most": 0},
    "modality_pass_fraction": {"at_least": 1.0},
}


def run(sizes: Sizes, workdir: Path, seed: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every scenario in order on one Orthanc and one var dir; (runs, workload)."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    data = workdir / "studies"
    rng = random.Random(seed)
    pacs = Pacs(workdir / "orthanc", (free_ports(2)[0], free_ports(2)[1]))
    serve = Serve(workdir, write_config(workdir, pacs, sizes.quiet_s, sizes.bound_s))
    runs: list[dict[str, Any]] = []
    pacs.start()
    try:
        say(f"service started in {serve.start():.1f} s (pid {serve.pid})")
        phases = [PHASES[i % len(PHASES)] for i in range(sizes.trials)]
        rng.shuffle(phases)
        for index, phase in enumerate(phases):
            runs.append(
                {"scenario": "kill", **kill_trial(index, phase, rng, serve, pacs, sizes, data)}
            )
        runs.append({"scenario": "outage", **outage(serve, pacs, sizes, data)})
        runs.append({"scenario": "burst", **burst(serve, pacs, sizes, data, rng)})
        for row in hostile(serve, data):
            runs.append({"scenario": "hostile", **row})
    finally:
        serve.stop()
        pacs.stop()
    workload = {
        "seed": seed,
        "sizes": sizes.__dict__,
        "kill_phases": list(PHASES),
        "modality": "dcmtk storescu/echoscu from 127.0.0.1; hostile peers from 127.0.0.2",
        "pacs": "Orthanc (Debian package), DICOM C-STORE destination",
        "service": "statlane serve, separate process, SIGKILL by PID, restarted on the same var",
        "studies": f"synthetic ct-head {sizes.ct_matrix}x{sizes.ct_matrix}x{sizes.ct_slices} "
        f"(kill trials), dx-chest {sizes.burst_matrix}x{sizes.burst_matrix} (outage, burst)",
        "listener_bounds": "defaults (association 5 s, HTTP header 10 s, MLLP frame 10 s)"
        if sizes.bound_s is None
        else f"{sizes.bound_s} s for association, HTTP header and MLLP frame (smoke)",
        "pacs_outage": "Orthanc killed (SIGKILL), then started on the same storage and ports",
        "outbox": "defaults: 24 h retry window, 5 s probes, backoff 2 s doubling to 300 s",
        "baseline": "counts: the expectation 0; outage: backoff alone (no probe re-drive) and "
        f"the old 8-attempt policy, dead after ~{OLD_DEAD_AFTER_S:.0f} s",
    }
    return runs, workload


def ratios(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Totals over every scenario, and the outage and hostile figures."""
    counted = [r for r in runs if r["scenario"] in ("kill", "outage", "burst")]
    out = {
        f"{key}_total": float(sum(r[key] for r in counted))
        for key in ("lost", "duplicated", "stale", "stuck")
    }
    kills = [r for r in runs if r["scenario"] == "kill"]
    out["kill_trials_clean_fraction"] = sum(
        not (r["lost"] or r["duplicated"] or r["stale"] or r["stuck"]) for r in kills
    ) / max(1, len(kills))
    [gone] = [r for r in runs if r["scenario"] == "outage"]
    out["outage_dead_letters"] = float(gone["dead_letters"])
    out["outage_recovered_s"] = float(gone["recovered_s"])
    out["outage_backoff_only_over_measured"] = float(
        gone["backoff_only_last_retry_after_return_s"]
    ) / max(0.001, float(gone["recovered_s"]))
    hostile_rows = [r for r in runs if r["scenario"] == "hostile"]
    out["modality_pass_fraction"] = sum(bool(r["modality_ok"]) for r in hostile_rows) / max(
        1, len(hostile_rows)
    )
    [big] = [r for r in runs if r["scenario"] == "burst"]
    out["burst_rss_peak_over_start"] = big["rss_peak_bytes"] / max(1, big["rss_start_bytes"])
    out["burst_deadline_misses"] = float(big["deadline_misses"])
    return out


def markdown(report: Report) -> str:
    """The results page."""
    runs = report.runs
    kills = [r for r in runs if r["scenario"] == "kill"]
    text = ["## Targets", "", targets_markdown(report), "", "## SIGKILL trials", ""]
    text.append(
        markdown_table(
            [
                "trial",
                "phase",
                "kill +s",
                "acked before kill",
                "acknowledged",
                "lost",
                "dup",
                "stale",
                "stuck",
                "restart s",
                "settle s",
            ],
            [
                [
                    r["trial"],
                    r["phase"],
                    r["kill_delay_s"],
                    r["acked_before_kill"],
                    r["acknowledged"],
                    r["lost"],
                    r["duplicated"],
                    r["stale"],
                    r["stuck"],
                    r["restart_s"],
                    r["settle_s"],
                ]
                for r in kills
            ],
        )
    )
    [gone] = [r for r in runs if r["scenario"] == "outage"]
    text += [
        "",
        "## PACS outage",
        "",
        markdown_table(["measure", "value"], [[k, v] for k, v in gone.items() if k != "scenario"]),
    ]
    text += [
        "",
        "`recovered_s`: from Orthanc answering again to every SR stored (probe re-drive); "
        "`backoff_only_last_retry_after_return_s`: when exponential backoff alone would next "
        "have retried the last item (baseline). The old policy (8 attempts) dead-letters every "
        f"item of an outage longer than ~{OLD_DEAD_AFTER_S:.0f} s, which then waits for an "
        "operator's `statlane outbox retry`.",
    ]
    [big] = [r for r in runs if r["scenario"] == "burst"]
    text += [
        "",
        "## Burst",
        "",
        markdown_table(["measure", "value"], [[k, v] for k, v in big.items() if k != "scenario"]),
    ]
    hostile_rows = [r for r in runs if r["scenario"] == "hostile"]
    text += ["", "## Hostile connections (from 127.0.0.2) with a modality (127.0.0.1)", ""]
    text.append(
        markdown_table(
            ["scenario", "modality ok", "storescu s", "echoscu s", "hostile closed"],
            [
                [
                    r["case"],
                    r["modality_ok"],
                    r["modality_s"],
                    r.get("echo_s", "n/a"),
                    r["hostile_closed"],
                ]
                for r in hostile_rows
            ],
        )
    )
    text += [
        "",
        "A trial's SIGKILL lands a seeded random delay (`kill +s`) after its phase is seen "
        "from outside: the Success response for a random instance of the association "
        "(ingest; `kill +s` is then that instance's number), the last instance acknowledged "
        "(quiet), a "
        "task running in the job store (inference), an outbox item present (delivery; often "
        "the SR is already stored by then, settle ≈ 0 s), or the item's first failed attempt "
        "with Orthanc killed (delivery-pacs-down; Orthanc restarts 1-3 s after the service). "
        "`acked before kill`: instances the modality got Success for before the kill; it "
        "resends the rest after the restart. `acknowledged`: in the end. Settled RSS is read "
        f"{report.workload['sizes']['rss_settle_s']:.0f} s after the burst drained.",
    ]
    return "\n".join(text)


def figure(runs: list[dict[str, Any]]) -> Figure:
    """Kill trials' settle time by phase, and the hostile scenarios' modality latency."""
    fig = Figure(figsize=(11, 4))
    left, right = fig.subplots(1, 2)
    kills = [r for r in runs if r["scenario"] == "kill"]
    colors = [
        "tab:green" if not (r["lost"] or r["duplicated"] or r["stale"] or r["stuck"]) else "tab:red"
        for r in kills
    ]
    left.bar(
        [f"{r['trial']}\n{r['phase'][:8]}" for r in kills],
        [r["settle_s"] for r in kills],
        color=colors,
    )
    left.set_ylabel("seconds from restart to settled")
    left.set_title("SIGKILL trials (green: nothing lost/dup/stale/stuck)")
    left.tick_params(axis="x", labelsize=6, labelrotation=90)
    hostile_rows = [r for r in runs if r["scenario"] == "hostile"]
    right.barh(
        [r["case"] for r in hostile_rows],
        [r["modality_s"] for r in hostile_rows],
        color=["tab:green" if r["modality_ok"] else "tab:red" for r in hostile_rows],
    )
    right.set_xlabel("storescu seconds (one study)")
    right.set_title("modality under hostile connections")
    fig.tight_layout()
    return fig


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; see the package docstring."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reliability")
    parser.add_argument("--smoke", action="store_true", help="5 trials, tiny sizes (< 90 s)")
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--workdir", type=Path, default=Path("var/bench-reliability"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminated)  # so the peers are stopped on the way out
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    runs, workload = run(SMOKE if args.smoke else FULL, args.workdir, args.seed)
    report = Report("reliability", args.smoke, workload, runs, ratios(runs), dict(TARGETS))
    paths = write_report(report, args.out, markdown(report), figure(runs))
    for key, ok in report.target_status().items():
        say(f"{key} = {report.ratios.get(key)}: {'met' if ok else 'MISSED'}")
    say(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0
