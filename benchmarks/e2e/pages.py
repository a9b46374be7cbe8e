"""The pages a person reads: the markdown report and the figure (PNG)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter, ScalarFormatter

from benchmarks.e2e.measure import STAGES, Outcome
from benchmarks.e2e.workload import CLASSES, QUIET_S
from benchmarks.report import Report, markdown_table, targets_markdown


def _int_key(item: tuple[str, Any]) -> int:
    return int(item[0])


NOTES = """\
Notes:
- Latency starts at the C-STORE response for the study's last instance as storescu logs it and
  ends at the SR outbox item's `delivered_at` (Orthanc answered the SR's C-STORE with success).
  Every delivered SR was then looked up in Orthanc's REST API (`/tools/lookup` by SOP Instance
  UID). `ack lag` = that response minus the job store's last-instance time (a cross-check of
  the two clocks' agreement; it is small either side of zero).
- Stages sum to the latency. `assembly wait` runs from the acknowledgement to the study being
  complete (the quiet period and whatever delayed its start or its end); `queue` is the
  engine's waiting (for a preprocessing worker and for a batch); `object building` is the
  engine's answer → SR in the outbox (results thread, AI result, SR written; GSPS, SC and
  SEG are built after the SR is queued);
  `delivery` includes the outbox poll interval and the association to Orthanc.
- Orchestration overhead = latency − quiet period actually waited (assembly wait, capped at the
  configured quiet period, so a late completion counts as overhead) − preprocessing − inference.
- `background open at window end`: routine and urgent studies sent during the arrival window
  whose SR was not stored when the window closed; a number that grows with the window means
  the offered load was above what the system sustained in that run.
- Percentiles interpolate linearly; with about one stat study per stat interval, p95 and p99
  lie between the two slowest stat studies.
- The service, its engine threads, Orthanc and storescu share this machine's cores; capacity is
  measured end to end on the same machine in the same run, so `load` is relative to it.
  `other processes (cores)` is the average CPU that processes outside this benchmark used
  during a system's run (from `/proc/stat` minus this benchmark's own CPU time): on a shared
  machine it says how much of the cores the measurement really had."""


def markdown(report: Report, why: dict[str, str]) -> str:
    """The page a person reads first."""
    w = report.workload
    cap, tree = w["capacity"], w.get("statlane_tree", {})
    lines = [
        f"Stat CT heads (one every {w['stat_interval_s']} s, own association) while routine chest "
        f"CTs and urgent radiographs arrive open loop (Poisson) at {w['load']:.0%} of the "
        f"measured capacity ({cap['capacity_per_s']:.3f} studies/s → "
        f"{w['background_rate_per_s']:.3f} studies/s) for {w['duration_s']} s per system. "
        f"Quiet periods: stat {QUIET_S['stat']} s, urgent {QUIET_S['urgent']} s, routine "
        f"{QUIET_S['routine']} s. Latency: last instance acknowledged → SR stored in Orthanc.",
        "",
        f"Arrivals per system: {w['arrivals']}. Sizes: {w['sizes']}.",
        "",
        f"Capacity: {cap['method']}.",
        "",
        f"statlane measured: commit `{(tree.get('commit') or 'unknown')[:12]}` with "
        f"{len(tree.get('uncommitted', []))} files changed in the working tree (listed in the "
        "JSON).",
        "",
        "## Latency per class (seconds)",
        "",
    ]
    rows = []
    for run in report.runs:
        for cls in CLASSES:
            m = run["metrics"][cls]
            rows.append(
                [
                    run["system"],
                    cls,
                    m["sent"],
                    m["count"],
                    *(m.get(k, "n/a") for k in ("p50_s", "p95_s", "p99_s", "max_s")),
                    m["deadline_misses"],
                ]
            )
    header = ["system", "class", "sent", "SR stored", "p50", "p95", "p99", "max", "deadline misses"]
    lines += [markdown_table(header, rows), "", "## Stat per stage (seconds: median / p95)", ""]
    systems = [r["system"] for r in report.runs]
    stage_rows = []
    for stage in STAGES:
        row: list[Any] = [stage.replace("_", " ")]
        for run in report.runs:
            v = run["stat_stages_s"].get(stage)
            row.append("n/a" if v is None else f"{v['median_s']:.3f} / {v['p95_s']:.3f}")
        stage_rows.append(row)
    lines += [markdown_table(["stage", *systems], stage_rows), ""]
    rows = []
    for run in report.runs:
        o, lag, m = run["stat_overhead_s"], run["stat_ack_lag_s"], run["metrics"]
        rows.append(
            [
                run["system"],
                o.get("p50_s", "n/a"),
                o.get("p95_s", "n/a"),
                o.get("max_s", "n/a"),
                lag.get("p95_s", "n/a"),
                w["background_rate_per_s"],
                m["throughput_per_s"],
                m["open_at_window_end"],
                f"{run['orthanc']['srs_found_in_orthanc']}/{run['orthanc']['srs_delivered']}",
                run["cpu"].get("other_processes_cores", "n/a"),
            ]
        )
    header = [
        "system",
        "stat overhead p50",
        "stat overhead p95",
        "stat overhead max",
        "stat ack lag p95",
        "offered /s",
        "background SRs /s",
        "background open at window end",
        "SRs found in Orthanc",
        "other processes (cores)",
    ]
    lines += ["## Overhead, throughput, Orthanc", "", markdown_table(header, rows), ""]
    rows = [
        [
            run["system"],
            model,
            ", ".join(f"{n}: {c}" for n, c in sorted(facts["batch_sizes"].items(), key=_int_key)),
            facts["inference_median_s"],
            facts["inference_max_s"],
            facts.get("profile_batch1_median_s", "n/a"),
        ]
        for run in report.runs
        for model, facts in sorted(run["engine"].items())
    ]
    header = ["system", "model", "tasks per batch size", "inference median", "inference max"]
    header += ["profile batch 1 median"]
    lines += ["## Engine (seconds; warm-up included)", "", markdown_table(header, rows), ""]
    lines += ["## Targets", "", targets_markdown(report, why), ""]
    info = [[k, v] for k, v in report.ratios.items() if k not in report.targets]
    lines += ["Other ratios (no target):", "", markdown_table(["ratio", "value"], info), ""]
    lines += [NOTES, ""]
    return "\n".join(lines)


# One colour per stage, in STAGES order.
PALETTE = ["#9e9e9e", "#795548", "#e53935", "#fb8c00", "#1e88e5", "#43a047", "#00acc1"]
PALETTE += ["#fdd835"]
CLASS_COLORS = {"stat": "#e53935", "urgent": "#fb8c00", "routine": "#1e88e5"}


def figure(runs: Sequence[dict[str, Any]], records: dict[str, list[Outcome]]) -> Figure:
    """Per stat study stacked stages for each system, and the latency CDF per class."""
    fig = Figure(figsize=(16, 5))
    axes = fig.subplots(1, len(runs) + 1)
    colors = dict(zip(STAGES, PALETTE, strict=True))
    stat = {
        run["system"]: [r for r in records[run["system"]] if r.priority == "stat" and r.total_s]
        for run in runs
    }
    top = max((r.total_s or 0.0 for rs in stat.values() for r in rs), default=1.0)
    for ax, run in zip(axes, runs, strict=False):
        studies = stat[run["system"]]
        bottom = np.zeros(len(studies))
        for stage in STAGES:
            values = np.array([max(r.stages_s[stage], 0.0) for r in studies])
            ax.bar(range(len(studies)), values, bottom=bottom, color=colors[stage], label=stage)
            bottom += values
        ax.axhline(QUIET_S["stat"] + 5.0, color="k", ls="--", lw=1, label="quiet period + 5 s")
        ax.set(ylim=(0, top * 1.1), xticks=range(len(studies)), ylabel="last ack → SR stored (s)")
        ax.set(title=f"{run['system']}: stat CT heads", xlabel="stat study (arrival order)")
    axes[0].legend(fontsize=7, loc="upper left")
    ax = axes[-1]
    for run in runs:
        dotted = run["system"] != "statlane-edf"
        for cls in CLASSES:
            mine = [r.total_s for r in records[run["system"]] if r.priority == cls and r.total_s]
            if mine:
                x = np.sort(mine)
                y = np.arange(1, x.size + 1) / x.size
                ax.step(
                    np.r_[x[0], x],
                    np.r_[0.0, y],
                    where="post",
                    ls=":" if dotted else "-",
                    color=CLASS_COLORS[cls],
                    label=f"{run['system']} {cls}",
                )
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    low, high = ax.get_xlim()
    ax.set_xticks([t for t in (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500) if low <= t <= high])
    ax.set_xlim(low, high)
    ax.set(xlabel="last ack → SR stored (s, log)", ylabel="fraction of studies")
    ax.set(title="latency CDF per class (dotted: baseline)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
