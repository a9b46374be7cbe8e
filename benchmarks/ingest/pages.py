"""The pages a person reads: the markdown report, why a target was missed, and the figure."""

from __future__ import annotations

import statistics
from typing import Any

from benchmarks.ingest.driver import LATENCY_KEYS, QUEUE_KEY, RATE_KEY, TARGETS
from benchmarks.ingest.systems import ACK_ONLY, SPOOL_ONLY, STATLANE, STORESCP
from benchmarks.report import Report, markdown_table, targets_markdown


def _cpu(m: dict[str, Any]) -> str:
    cpu = m["server_cpu_ms_per_instance"]
    return "CPU not measured" if cpu is None else f"{cpu:.1f} ms of server CPU"


def why_missed(report: Report) -> dict[str, str]:
    """Why each target may be missed, from this run's own numbers, and what would close it."""
    m = {r["system"]: r["metrics"] for r in report.runs}
    base, ack, s = m[STORESCP], m[ACK_ONLY], m[STATLANE]
    ack_ratio, goal = report.ratios["gateway_ack_only_rate_over_storescp_rate"], 0.4
    spool = m[SPOOL_ONLY]
    spool_ratio = report.ratios["gateway_spool_rate_over_storescp_rate"]
    rate = (
        f"{report.ratios[RATE_KEY]:.2f}x. Per instance: storescp {base['ms_per_instance']:.1f} "
        f"ms ({_cpu(base)}); statlane's gateway acknowledging without storing "
        f"{ack['ms_per_instance']:.1f} ms ({_cpu(ack)}); the same gateway storing durably "
        f"into the spool, nothing else running, {spool['ms_per_instance']:.1f} ms "
        f"({_cpu(spool)}); statlane serve {s['ms_per_instance']:.1f} ms ({_cpu(s)}). "
        f"(1) The DIMSE layer: the gateway alone reaches {ack_ratio:.2f}x storescp's rate"
        f"{' - under the target before anything is stored' * (ack_ratio < goal)}. C-STORE "
        "requests skip pynetdicom's per-message machinery (`serving/gateway/fast_store.py`: "
        "PDVs routed and the response encoded with struct) and its reactors do not poll "
        "(`reactor.py`). (2) Durability: storescu sends the next instance only after the "
        "response, and the response waits for the joined Part-10 buffer (one 0.5 MB copy), "
        "the synchronized write (a staging file opened with O_DSYNC: the write returns once "
        "the data is on disk) with the header check running alongside on a parser thread "
        "(`instance_header.py`), then the rename and the directory fsync. Medians inside the "
        "gateway (one 500-instance run): synchronized write 0.57 ms, header check 0.33 ms "
        "(overlapped with the write), directory fsync 0.08 ms, 0.97 ms for the whole store: "
        f"{spool_ratio:.2f}x with nothing else running. storescp writes without fsync. "
        "(3) The service around it, in the same interpreter: the ingest thread's job-store "
        "transactions (batched, ~0.25 ms of CPU per instance), the coordinator's wake-ups, "
        "and, once the first study completes by its expected count, its routing and "
        "preprocessing while the second study arrives; all of it holds the GIL the receiving "
        "association needs. Done: the header check overlapped with the synchronized write "
        "(the store's median went from ~1.5 ms to ~1.0 ms), and the start-up heap frozen "
        "after start (`serving/service/heap.py`), which removed ~180 ms full garbage "
        "collections holding the GIL during ingest. Tried, no gain: the gateway and spool in "
        "a child process reporting over a pipe (pickling each header costs the child ~0.35 "
        "ms; the durable write, not the GIL, dominates); a 1 ms GIL switch interval instead "
        "of 5 ms (6 interleaved pairs, within noise); a write-ahead log (one pwrite and "
        "fdatasync per instance into a preallocated segment, ~0.3 ms alone), because the "
        "instance files must still be written and synced in the background: 1.28-1.96 ms per "
        "instance against 0.87-1.06 ms for the write, fsync, rename and directory fsync in the "
        "same loop, the second write of every instance competing for the same disk. What "
        "remains is this disk's sync latency for a new file (the journal commit of its inode "
        "and blocks: overwriting 0.5 MB already allocated and syncing it takes ~0.25 ms)."
    )
    queue = (
        f"{report.ratios[QUEUE_KEY]:.3f} s beyond the quiet period. Last instance -> study "
        f"complete took {s['last_instance_to_study_complete_s']:.3f} s (quiet period "
        f"{s['quiet_period_s']} s plus the coordinator's wake-up); study complete -> task "
        f"queued {s['study_complete_to_task_queued_s']:.3f} s. That is Coordinator.route "
        "before create_task: the identity check over every header, mark_study_complete, the "
        "rule facts built from every header (facts_from_datasets: 20-230 ms for 250 headers, "
        "measured separately, depending on load; reused when the quiet-period check at the "
        "release already built them for the same instances), the routing record and the "
        "worklist entry. "
        + (
            "Here the first study's inference starts at the association release, inside the "
            "last study's quiet period, and shares the cores with that routing, so this "
            "overhead grows with CPU load. "
            if len(report.workload["study_sizes"]) > 1
            else ""
        )
        + "What would close it: create and queue the task before the routing record and the "
        "worklist entry are written, and build the rule facts incrementally as instances "
        "arrive."
    )
    if report.target_status()[QUEUE_KEY]:
        queue = queue.replace("What would close it", "What would shorten it")
    return {RATE_KEY: rate, QUEUE_KEY: queue}


METHOD = """## Method

- Every SCP is a process of its own on the same machine and file system, and receives the same
  files from the same `/usr/bin/storescu` command (one association, `TCP_NODELAY=1`). The clock
  runs from storescu's start to its exit: process start, association negotiation, transfer and
  release are inside it, alike for every system. The order rotates each repeat. Server CPU is
  the receiving process's user + system time (all threads, `/proc/PID/stat`) over the same
  window.
- statlane runs as `python -m serving.cli serve --config ...` (what `statlane serve` runs), not
  inside the benchmark: storescp is a process of its own, and so is a deployed statlane. Its
  start-up (imports, model loading) happens before the clock starts (`service_startup_s`).
- dcmtk storescp never fsyncs: an instance it acknowledged can be lost in a power cut. statlane
  acknowledges an instance only once the spool has written it synchronously (O_DSYNC),
  renamed it into place and fsynced that directory entry;
  the coordinator records it in the job store (SQLite WAL; instance rows at
  `synchronous=NORMAL`, the spool being the durability point that a restart rescans).
  `gateway-ack-only` is statlane's own DICOM gateway with a spool that keeps nothing, and
  `gateway-spool` the same gateway with its real durable spool and no service behind it: they
  separate the DIMSE layer's share of the gap from that of durability, and both from the
  service's own work (recording, routing and inference of studies as they complete).
- `sync(2)` runs after every run, outside the clock, so one run's unwritten pages are not
  flushed during the next.
- Last instance -> task queued: from the spool file mtime of the study's newest instance (written
  by its synchronized write, just before the rename and C-STORE response; kernel file-time
  granularity, a few ms at most, erring towards a longer latency) to the job store's task
  `created_at` (state `queued`,
  UTC, microseconds); `started_at` is when the task was handed to the engine and the study's
  `completed_at` when assembly declared it complete. Two cross-checks: storescu's exit on this
  benchmark's clock, and the series' `last_instance_at` in the job store (stamped when the
  coordinator records the instance, which may trail its acknowledgement).
- A study is complete once the association that carried it was released and its quiet period
  has passed since its last instance. The headline is the study holding the association's last
  instance; an earlier study in the same association waits for the release too (by design), so
  its row includes the rest of the transfer.
- Shared machine: other jobs ran on the same 2 cores. Rates are compared within the run; each
  repeat's rate is listed to show the spread.
"""


def render(report: Report) -> tuple[str, Any]:
    """Markdown body and figure for ``report``."""
    from matplotlib.figure import Figure

    w, s = report.workload, report.runs[-1]["metrics"]
    rows = []
    for run in report.runs:
        m = run["metrics"]
        kept = "synced write + rename (spool)" if m["durable_before_ack"] else "buffered writes"
        kept = kept if m["stores_instances"] else "nothing (reference)"
        each = ", ".join(f"{v:.1f}" for v in m["instances_per_s_each"])
        cpu = "n/a" if m["server_cpu_ms_per_instance"] is None else m["server_cpu_ms_per_instance"]
        rows.append([run["system"], kept, m["instances_per_s"], m["ms_per_instance"], cpu])
        rows[-1] += [m["mib_per_s"], each]
    header = ["system", "on disk before ack", "instances/s (median)", "ms/instance"]
    header += ["server CPU ms/instance", "MiB/s", "instances/s each repeat"]
    latency_rows = [
        [
            r + 1,
            f"{i + 1}/{len(studies)}",
            st["instances"],
            st["task_priority"],
            st["quiet_period_s"],
        ]
        + [st[k] for k in LATENCY_KEYS]
        for r, studies in enumerate(s["studies_per_repeat"])
        for i, st in enumerate(studies)
    ]
    latency_header = ["repeat", "study", "instances", "priority", "quiet s", "last -> complete s"]
    latency_header += ["complete -> queued s", "last -> queued s", "last -> started s"]
    latency_header += ["storescu exit -> queued s", "last recorded -> queued s"]
    why, met = why_missed(report), report.target_status()[QUEUE_KEY]
    body = (
        f"{w['instances']} CT instances ({w['kind']}, studies of {w['study_sizes']} slices, "
        f"{w['matrix']}x{w['matrix']}, {w['bytes'] / 2**20:.0f} MiB) sent by dcmtk storescu in "
        f"one association; {w['repeats']} repeat(s), order rotating. Code measured: commit "
        f"{w['code']['commit']}, uncommitted changes under serving/: "
        f"{', '.join(w['code']['uncommitted_serving_files']) or 'none'}.\n\n"
        + markdown_table(header, rows)
        + "\n\n## Last instance -> task queued (statlane)\n\n"
        + markdown_table(latency_header, latency_rows)
        + "\n\n## Ratios and targets\n\n"
        + targets_markdown(report, why)
        + (f"\n\n**{QUEUE_KEY} (met), where the time goes:** {why[QUEUE_KEY]}" if met else "")
        + "\n\n"
        + METHOD
    )
    fig = Figure(figsize=(11, 4))
    ax_r, ax_q = fig.subplots(1, 2)
    names = [r["system"] for r in report.runs]
    colors = ["tab:gray", "tab:blue", "tab:purple", "tab:green"]
    ax_r.bar(names, [r["metrics"]["instances_per_s"] for r in report.runs], color=colors)
    for x, run in enumerate(report.runs):
        each = run["metrics"]["instances_per_s_each"]
        ax_r.plot([x] * len(each), each, "k.", zorder=3)
    target = TARGETS[RATE_KEY]["at_least"] * report.runs[0]["metrics"]["instances_per_s"]
    ax_r.axhline(target, color="tab:red", ls="--", label="target: 0.4 x storescp")
    ax_r.set_ylabel("instances/s (bars: median, dots: repeats)")
    ax_r.tick_params(axis="x", labelsize=8)
    ax_r.legend(fontsize=8)
    quiet = s["quiet_period_s"]
    last = [studies[-1] for studies in s["studies_per_repeat"]]
    bars = {
        "last -> complete\nminus quiet": [
            x["last_instance_to_study_complete_s"] - quiet for x in last
        ],
        "complete ->\nqueued": [x["study_complete_to_task_queued_s"] for x in last],
        "last -> queued\nminus quiet": [x["last_instance_to_task_queued_s"] - quiet for x in last],
        "last -> started\nminus quiet": [
            x["last_instance_to_task_started_s"] - quiet for x in last
        ],
    }
    medians = [statistics.median(v) for v in bars.values()]
    ax_q.bar(list(bars), medians, color=["tab:gray", "tab:olive", "tab:green", "tab:cyan"])
    for x, values in enumerate(bars.values()):
        ax_q.plot([x] * len(values), values, "k.", zorder=3)
    ax_q.axhline(0.1, color="tab:red", ls="--", label="target: queued within quiet + 0.1 s")
    ax_q.set_ylabel(f"seconds beyond the {quiet} s quiet period")
    ax_q.tick_params(axis="x", labelsize=8)
    ax_q.legend(fontsize=8)
    fig.suptitle(f"DICOM ingest: {w['instances']} x {w['matrix']}^2 CT instances from storescu")
    return body, fig
