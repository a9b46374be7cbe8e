"""Resident memory of ``statlane serve`` before, during and after a burst of studies.

Each variant runs in a fresh process (resident memory is per process): the service starts
in-process with its own var folder, dcmtk's ``storescu`` sends ``--studies`` synthetic CT heads
(one association each), and once every task has ended the process sits idle for ``--settle``
seconds. Resident set size (psutil) is sampled every 0.5 s; "before" is taken after one warm-up
study (models, thread pools and inference arenas are made on first use, once). The named
baseline is the same service with ``memory.trim_allocator: false`` (freed heap is not returned
to the system); the candidate trims it. Both release each task's volume once its result is handled.

Target (issue 15): within 60 s after the burst, resident memory is at most 1.3x its level
before the burst. Writes ``benchmarks/results/memory_burst.{json,md,png}``
(``.smoke.*`` with ``--smoke``).

    python -m benchmarks.memory_burst [--smoke] [--studies N] [--settle S] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from benchmarks.e2e.systems import find_storescu
from benchmarks.report import Report, markdown_table, progress, targets_markdown, write_report

NAME = "memory_burst"
TARGETS = {"after_over_before_trim": {"at_most": 1.3}}
VARIANTS = {"no-trim (baseline)": False, "trim": True}


def resident_bytes() -> int:
    """This process's resident set size, bytes."""
    import psutil

    return int(psutil.Process().memory_info().rss)


def _child(studies: int, matrix: int, settle_s: float, trim: bool) -> dict[str, Any]:
    """Run one variant in this process; its samples and summary."""
    from models.synthetic import generate_study
    from serving.config import ServiceConfig
    from serving.jobstore import TaskState
    from serving.service.app import Service

    storescu = find_storescu()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        made = [
            generate_study("ct-head", tmp / "in" / str(i), seed=i, matrix=matrix)
            for i in range(studies)
        ]
        config = ServiceConfig.model_validate(
            {
                "var_dir": tmp / "var",
                "dicom": {"port": 0},
                "http": {"host": "127.0.0.1", "port": 0},
                "hl7": {"enabled": False},
                "assembly": {"quiet_period_s": {"stat": 0.3, "urgent": 0.3, "routine": 0.3}},
                "destinations": {"local-folder": {"type": "folder", "path": str(tmp / "out")}},
                "runtime": {"device": "cpu"},
                "memory": {"trim_allocator": trim, "trim_interval_s": 5.0},
            }
        )
        samples: list[tuple[float, int]] = []
        stop = threading.Event()
        t0 = time.monotonic()

        def sample() -> None:
            while not stop.is_set():
                samples.append((time.monotonic() - t0, resident_bytes()))
                stop.wait(0.5)

        service = Service(config)
        service.start()
        sampler = threading.Thread(target=sample, daemon=True)
        ended = (TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED)

        def send(batch: list[Any]) -> None:
            for study in batch:
                subprocess.run(
                    [str(storescu), "-aec", "STATLANE", "127.0.0.1", str(service.ports.dicom)]
                    + [str(p) for p in study.files],
                    check=True,
                    capture_output=True,
                )
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                tasks = service.store.tasks()
                routed = {t.study_instance_uid for t in tasks}
                if routed >= {s.study_uid for s in batch} and all(t.state in ended for t in tasks):
                    return
                time.sleep(0.5)

        try:
            started = resident_bytes()
            sampler.start()
            send(made[:1])  # warm-up: models, thread pools and arenas are made on first use
            time.sleep(settle_s / 2)
            before = resident_bytes()
            burst_start = time.monotonic() - t0
            send(made[1:])
            burst_end = time.monotonic() - t0
            time.sleep(settle_s)
            after = resident_bytes()
        finally:
            stop.set()
            service.stop()
    return {
        "trim": trim,
        "started_bytes": started,
        "before_bytes": before,
        "peak_bytes": max(rss for _, rss in samples) if samples else after,
        "after_bytes": after,
        "burst_s": burst_end - burst_start,
        "settle_s": settle_s,
        "samples": [[round(t, 2), rss] for t, rss in samples],
        "burst_end_s": burst_end,
    }


def main(argv: list[str] | None = None) -> int:
    """Run both variants in child processes and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="1 + 3 small studies, 10 s settle")
    # studies: the first warms the service up (models, pools, arenas); the burst is the rest
    parser.add_argument("--studies", type=int, default=None)
    parser.add_argument("--settle", type=float, default=None, help="idle seconds after the burst")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--child", choices=["trim", "no-trim"], help=argparse.SUPPRESS)
    parser.add_argument("--matrix", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    studies = args.studies or (4 if args.smoke else 41)  # the first one warms up
    settle = args.settle if args.settle is not None else (10.0 if args.smoke else 60.0)
    matrix = args.matrix or (128 if args.smoke else 256)
    if args.child:
        print(json.dumps(_child(studies, matrix, settle, args.child == "trim")))
        return 0
    runs = []
    for label, trim in VARIANTS.items():
        progress(f"{label}: {studies} studies, then {settle:.0f} s idle")
        command = [sys.executable, "-m", "benchmarks.memory_burst", "--child"]
        command += ["trim" if trim else "no-trim", "--studies", str(studies)]
        command += ["--settle", str(settle), "--matrix", str(matrix)]
        done = subprocess.run(command, check=True, capture_output=True, text=True)
        run = json.loads(done.stdout.strip().splitlines()[-1])
        run["variant"] = label
        runs.append(run)
    ratios = {
        f"after_over_before_{'trim' if r['trim'] else 'no_trim'}": r["after_bytes"]
        / r["before_bytes"]
        for r in runs
    }
    report = Report(
        benchmark=NAME,
        smoke=args.smoke,
        workload={
            "studies": studies - 1,
            "warm_up_studies": 1,
            "matrix": matrix,
            "settle_s": settle,
            "kind": "ct-head",
        },
        runs=runs,
        ratios=ratios,
        targets=TARGETS,
    )
    mib = 2**20
    rows = [
        [
            r["variant"],
            r["before_bytes"] / mib,
            r["peak_bytes"] / mib,
            r["after_bytes"] / mib,
            r["after_bytes"] / r["before_bytes"],
            r["burst_s"],
        ]
        for r in runs
    ]
    body = markdown_table(
        [
            "variant",
            "before MiB",
            "peak MiB",
            f"after {settle:.0f} s idle MiB",
            "after/before",
            "burst s",
        ],
        rows,
    )
    body += "\n\n" + targets_markdown(report) + "\n"
    figure = Figure(figsize=(8, 4))
    axes = figure.subplots()
    for r in runs:
        times = [t for t, _ in r["samples"]]
        axes.plot(times, [rss / mib for _, rss in r["samples"]], label=r["variant"])
    axes.set_xlabel("seconds since start")
    axes.set_ylabel("resident MiB")
    axes.legend()
    paths = write_report(report, args.out, body, figure)
    progress(f"wrote {paths['md']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
