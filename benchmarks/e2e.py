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
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import yaml
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter, ScalarFormatter

from benchmarks.report import Report, markdown_table, progress, targets_markdown, write_report
from serving.config import ServiceConfig
from serving.jobstore import TaskState
from serving.service.app import Service
from serving.service.heap import settle_heap

NAME = "e2e"
SYSTEMS = (("baseline-fifo", "fifo"), ("statlane-edf", "edf"))
CLASSES = ("stat", "urgent", "routine")
QUIET_S = {"stat": 1.0, "urgent": 2.0, "routine": 3.0}
DEADLINES_S = {"stat": 60.0, "urgent": 300.0, "routine": 3600.0}
# kind -> (priority class the default rules give it, matrix in pixels, slices or None)
KINDS: dict[str, tuple[str, int, int | None]] = {
    "ct-head": ("stat", 256, None),
    "ct-chest": ("routine", 192, 100),
    "cr-chest": ("urgent", 512, None),
    "dx-chest": ("urgent", 512, None),
}
MACHINE_CORES = len(os.sched_getaffinity(0))  # the cores this process may run on (Linux)
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
P95_MINUS_QUIET = "statlane_stat_p95_minus_quiet_s"
OVERHEAD = "statlane_orchestration_overhead_p95_s"
FIFO_RATIO = "fifo_stat_p95_over_statlane_stat_p95"
TARGETS = {
    P95_MINUS_QUIET: {"at_most": 5.0},
    OVERHEAD: {"at_most": 1.0},
    FIFO_RATIO: {"at_least": 1.0},
}


@dataclass(frozen=True)
class Study:
    """One synthetic study on disk, sent at most once per service."""

    kind: str
    seed: int
    finding: bool
    study_uid: str
    files: tuple[Path, ...]

    @property
    def priority(self) -> str:
        """The priority class the default rules give this kind."""
        return KINDS[self.kind][0]


@dataclass
class Sent:
    """A study handed to storescu: when it was due (offset, seconds) and when it was acked."""

    study: Study
    due_s: float
    ack_at: datetime | None = None
    error: str | None = None


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


_STARTED = time.monotonic()


def say(message: str) -> None:
    """Progress on stderr with the seconds since the benchmark started."""
    progress(f"{time.monotonic() - _STARTED:6.1f} s  {message}")


def _int_key(item: tuple[str, Any]) -> int:
    return int(item[0])


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


# ---- studies and arrivals ----------------------------------------------------------------------


def make_studies(root: Path, wanted: Sequence[tuple[str, int, bool]]) -> list[Study]:
    """Generate ``(kind, seed, finding)`` studies under ``root`` (reused when already there).

    ``root/index.json`` remembers what was written; the generator is deterministic, so a study
    with the same kind, seed, finding and size is the same files.
    """
    from models.synthetic import generate_study

    root.mkdir(parents=True, exist_ok=True)
    index_path = root / "index.json"
    index: dict[str, Any] = json.loads(index_path.read_text()) if index_path.exists() else {}
    studies = []
    for kind, seed, finding in wanted:
        _, matrix, slices = KINDS[kind]
        key = f"{kind}:{seed}:{int(finding)}:{matrix}:{slices}"
        entry = index.get(key)
        if entry is None or not all(Path(f).exists() for f in entry["files"]):
            made = generate_study(
                kind, root, seed=seed, finding=finding, matrix=matrix, slices=slices
            )
            entry = {"uid": made.study_uid, "files": [str(f) for f in made.files]}
            index[key] = entry
            index_path.write_text(json.dumps(index))
        studies.append(Study(kind, seed, finding, entry["uid"], tuple(map(Path, entry["files"]))))
    return studies


def arrivals(
    rate_per_s: float, duration_s: float, ct_fraction: float, stat_interval_s: float, seed: int
) -> list[tuple[float, str]]:
    """``(offset_s, kind)`` sorted by time: Poisson background at ``rate_per_s`` plus a stat CT
    head every ``stat_interval_s`` seconds (random phase), all within ``duration_s``."""
    rng = np.random.default_rng(seed)
    plan: list[tuple[float, str]] = []
    t, radiographs = float(rng.exponential(1.0 / rate_per_s)), 0
    while t < duration_s:
        if rng.random() < ct_fraction:
            plan.append((t, "ct-chest"))
        else:
            plan.append((t, ("cr-chest", "dx-chest")[radiographs % 2]))
            radiographs += 1
        t += float(rng.exponential(1.0 / rate_per_s))
    t = float(rng.uniform(0.2, 0.8)) * stat_interval_s
    while t < duration_s:
        plan.append((t, "ct-head"))
        t += stat_interval_s
    return sorted(plan)


def with_studies(plan: Sequence[tuple[float, str]], root: Path, first_seed: int) -> list[Sent]:
    """One distinct study per arrival (findings on every other study of a kind)."""
    count: dict[str, int] = {}
    wanted = []
    for i, (_, kind) in enumerate(plan):
        n = count[kind] = count.get(kind, 0) + 1
        wanted.append((kind, first_seed + i, n % 2 == 0))
    studies = make_studies(root, wanted)
    return [Sent(study, offset) for (offset, _), study in zip(plan, studies, strict=True)]


# ---- peers -------------------------------------------------------------------------------------


def source_tree() -> dict[str, Any]:
    """The statlane code measured: commit and the files changed in the working tree."""
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> list[str]:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        return done.stdout.splitlines() if done.returncode == 0 else []

    changed = [line[3:] for line in git("status", "--porcelain") if len(line) > 3]
    return {"commit": next(iter(git("rev-parse", "HEAD")), None), "uncommitted": changed}


def find_storescu() -> Path:
    """dcmtk's storescu (never pynetdicom's same-named app in the virtual environment)."""
    for folder in ("/usr/bin", "/usr/local/bin", "/opt/homebrew/bin"):
        candidate = Path(folder) / "storescu"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise SystemExit("dcmtk's storescu not found; install dcmtk (apt-get install dcmtk)")


@contextmanager
def orthanc(workdir: Path) -> Iterator[Any]:
    """A fresh Orthanc (no DICOMweb plugin needed) under ``workdir``, stopped on exit."""
    if shutil.which("Orthanc") is None:
        raise SystemExit("Orthanc not found; install it (apt-get install orthanc)")
    from tests.orthanc_peer import orthanc_server

    with orthanc_server(workdir, dicomweb=False) as peer:
        yield peer


def send_study(storescu: Path, port: int, sent: Sent, calling_ae: str) -> None:
    """Send one study on one association; sets ``sent.ack_at`` to when the last C-STORE
    response arrived (UTC, read from storescu's verbose log as it is written)."""
    files = sent.study.files
    command = [str(storescu), "-v", "-aet", calling_ae, "-aec", "STATLANE"]
    command += ["127.0.0.1", str(port), *map(str, files)]
    env = dict(os.environ, TCP_NODELAY="1")
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
    )
    assert process.stderr is not None
    acked = 0
    tail: list[str] = []
    for line in process.stderr:
        if "Received Store Response" in line:
            sent.ack_at = datetime.now(UTC)
            acked += "Success" in line
        tail = [*tail[-5:], line.strip()]
    if process.wait() != 0 or acked != len(files):
        sent.error = f"storescu rc {process.returncode}, {acked}/{len(files)} acked: {tail}"
        say(f"send failed ({sent.study.kind}): {sent.error}")


# ---- one service -------------------------------------------------------------------------------


def service_config(workdir: Path, policy: str, pacs_port: int) -> ServiceConfig:
    """The benchmark's configuration: default rules sending to Orthanc, the stated quiet periods
    and deadlines, free ports, everything under ``workdir``."""
    rules = yaml.safe_load(
        (Path(__file__).parents[1] / "router" / "rules" / "default.yaml").read_text()
    )
    rules["defaults"]["destinations"] = ["pacs"]
    rules["defaults"]["deadlines_s"] = dict(DEADLINES_S)
    rules_path = workdir / "rules.yaml"
    rules_path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return ServiceConfig.model_validate(
        {
            "var_dir": workdir / "var",
            "rules": rules_path,
            "dicom": {"host": "127.0.0.1", "port": 0},
            "http": {"host": "127.0.0.1", "port": 0},
            "hl7": {"enabled": False},
            "assembly": {"quiet_period_s": QUIET_S},
            "deadlines_s": DEADLINES_S,
            "runtime": {
                "device": "cpu",
                "policy": policy,
                # the naive baseline gives stat studies no priority outside the engine either
                "stat_gate_max_wait_s": 0.0 if policy == "fifo" else 1.0,
            },
            "destinations": {
                "pacs": {
                    "type": "dicom",
                    "ae_title": "ORTHANC",
                    "host": "127.0.0.1",
                    "port": pacs_port,
                }
            },
        }
    )


@contextmanager
def running(workdir: Path, policy: str) -> Iterator[tuple[Service, Any]]:
    """A fresh Orthanc and a fresh service with ``policy`` under ``workdir`` (wiped first)."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    with orthanc(workdir / "orthanc") as pacs:
        service = Service(service_config(workdir, policy, pacs.dicom_port))
        service.start()
        settle_heap()  # as `statlane serve` does, for every policy alike
        try:
            yield service, pacs
        finally:
            service.stop()


def send_all(service: Service, storescu: Path, sent: Sequence[Sent], *, paced: bool) -> float:
    """Send every study open loop at its ``due_s`` offset (``paced``) or back to back.

    Returns the monotonic start time. Each study has its own association and thread, so a slow
    send never delays the next arrival.
    """
    start = time.monotonic()
    port = service.ports.dicom
    if not paced:
        for item in sent:
            send_study(storescu, port, item, f"BENCH_{item.study.kind[:3].upper()}")
        return start
    with ThreadPoolExecutor(max_workers=32, thread_name_prefix="modality") as pool:
        for item in sent:
            delay = start + item.due_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pool.submit(send_study, storescu, port, item, f"BENCH_{item.study.kind[:3].upper()}")
    return start


def finished(service: Service) -> set[str]:
    """Study UIDs whose SR was delivered or whose task failed."""
    by_task = {t.task_id: t for t in service.store.tasks()}
    done = {
        by_task[i.task_id].study_instance_uid
        for i in service.outbox.items()
        if str(i.kind) == "sr" and i.delivered_at is not None and i.task_id in by_task
    }
    return done | {t.study_instance_uid for t in by_task.values() if t.state is TaskState.FAILED}


def wait_for_results(service: Service, sent: Sequence[Sent], timeout_s: float) -> int:
    """Wait until every acknowledged study's SR is delivered or its task failed; returns how
    many are still open at ``timeout_s`` (seconds)."""
    wanted = {s.study.study_uid for s in sent if s.error is None}
    deadline = time.monotonic() + timeout_s
    last_report = 0.0
    while True:
        open_count = len(wanted - finished(service))
        if open_count == 0 or time.monotonic() > deadline:
            return open_count
        if time.monotonic() - last_report > 15:
            say(f"  waiting for {open_count} SRs")
            last_report = time.monotonic()
        time.sleep(0.5)


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
            "assembly_wait": _secs(study.completed_at, item.ack_at),
            "routing": _secs(task.started_at, study.completed_at),
            "queue": engine_total - sum(work.values()),
            **work,
            "object_building": _secs(sr.created_at, task.started_at) - engine_total,
            "delivery": _secs(sr.delivered_at, sr.created_at),
        }
        out.total_s = _secs(sr.delivered_at, item.ack_at)
        out.quiet_waited_s = min(max(out.stages_s["assembly_wait"], 0.0), QUIET_S[s.priority])
        out.overhead_s = out.total_s - out.quiet_waited_s - work["preprocess"] - work["inference"]
        out.ack_lag_s = _secs(item.ack_at, last_instance)
        out.deadline_missed = sr.delivered_at > task.deadline_at
        out.engine_deadline_missed = bool(task.result.get("deadline_missed"))
        out.delivered_at = sr.delivered_at
        out.sr_path = sr.payload_path
    return result


def _secs(later: datetime, earlier: datetime) -> float:
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


# ---- phases ------------------------------------------------------------------------------------


def warm_up(service: Service, storescu: Path, studies: Sequence[Study]) -> None:
    """Run one study of each kind through the service (first inference, first association)."""
    sent = [Sent(s, 0.0) for s in studies]
    send_all(service, storescu, sent, paced=True)
    open_count = wait_for_results(service, sent, timeout_s=120.0)
    if open_count:
        say(f"  warm-up: {open_count} SRs still open after 120 s")


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
    metrics["throughput_per_s"] = len(background) / max(_secs(last, started), 1e-9)
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


# ---- report ------------------------------------------------------------------------------------


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
        "`serving/service/delivery.py` "
        "`enqueue_results` writes and queues the SR before GSPS, SC and SEG are built). It is a "
        "stat stage (`serving/service/stat_gate.py`): background routing, result objects, "
        "deliveries and CPU batches step aside between their steps, but a step under way "
        "(a chest CT patch batch, a SEG) runs to its end, and the ingest thread never waits."
        "{split}"
    ),
    "delivery": (
        "a worker reserved for stat items (`delivery-stat` in `Service._delivery_loop`) is "
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


# ---- main --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mode:
    """Defaults of a full run and of ``--smoke`` (seconds)."""

    duration_s: float
    stat_interval_s: float
    calibration_s: float  # the closed-loop capacity measurement
    warmup: bool


FULL = Mode(duration_s=120.0, stat_interval_s=10.0, calibration_s=60.0, warmup=True)
SMOKE = Mode(duration_s=12.0, stat_interval_s=4.0, calibration_s=15.0, warmup=False)
IN_FLIGHT = 8  # studies in flight while capacity is measured
SEED_BASE = 2_000_000  # far from the reference models' training seeds


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


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; see the module docstring."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.e2e", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--smoke", action="store_true", help="12 s per system, no warm-up (CI)")
    parser.add_argument("--duration", type=float, default=0.0, help="arrival window per system, s")
    parser.add_argument("--load", type=float, default=0.8, help="background load / capacity")
    parser.add_argument(
        "--ct-fraction", type=float, default=0.5, help="chest CTs in the background"
    )
    parser.add_argument(
        "--stat-interval", type=float, default=0.0, help="seconds between stat CT heads"
    )
    parser.add_argument("--capacity", type=float, default=0.0, help="studies/s; skips measuring it")
    parser.add_argument(
        "--drain-timeout", type=float, default=300.0, help="wait for SRs after the window, s"
    )
    parser.add_argument("--seed", type=int, default=7, help="arrival process seed")
    parser.add_argument("--workdir", type=Path, help="studies (kept), services and Orthanc (wiped)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("pynetdicom", "highdicom"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    report, records = build_report(args)
    paths = write_report(
        report, args.out, markdown(report, why_missed(report)), figure(report.runs, records)
    )
    for key, ok in report.target_status().items():
        say(f"{key} = {report.ratios.get(key, math.nan):.3f}: {'met' if ok else 'MISSED'}")
    say(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
