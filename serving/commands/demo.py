"""``statlane demo``: the whole product end to end on embedded defaults, in about two minutes.

It starts ``statlane serve`` in this process (free ports, everything under ``--out``), has a
simulated RIS send HL7 orders over MLLP and simulated modalities send synthetic studies over
real C-STORE at a realistic pace: CT heads with and without bleeds (one bleed from the emergency
department ordered *routine*), chest radiographs, chest CTs. It prints what happens live, and at
the end the arrival order next to the worklist order with red flags, latency per class, deadline
misses, where the result objects are, and a PNG of the flagged key slice with its box.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

from models.synthetic import generate_study
from models.synthetic.spec import SyntheticStudy

# (label, kind, generator options, HL7 order priority or None for no order)
_STREAM: tuple[tuple[str, str, dict[str, Any], str | None], ...] = (
    ("CT head", "ct-head", {}, "R"),
    ("CR chest", "cr-chest", {}, "R"),
    ("CT chest", "ct-chest", {}, "R"),
    ("DX chest, PTX", "dx-chest", {"finding": True}, "S"),
    ("CT head (stat order)", "ct-head", {}, "S"),
    ("CR chest", "cr-chest", {}, "R"),
    ("CT head, bleed (stat)", "ct-head", {"finding": True}, "S"),
    ("CT chest, nodule", "ct-chest", {"finding": True}, "R"),
    ("DX chest", "dx-chest", {}, None),
    ("CT head", "ct-head", {}, "R"),
    ("CR chest", "cr-chest", {}, "R"),
    ("DX chest", "dx-chest", {}, "R"),
    ("CR chest", "cr-chest", {}, "R"),
    ("CT head", "ct-head", {}, "R"),
    ("CT head, bleed (ED, routine order)", "ct-head", {"finding": True}, "R"),
    ("DX chest", "dx-chest", {}, "R"),
)
_MATRIX = {"ct-head": 256, "ct-chest": 192, "cr-chest": 512, "dx-chest": 512}


def add_parser(subparsers: Any) -> None:
    """Register ``statlane demo``."""
    parser = subparsers.add_parser(
        "demo", help="run the service end to end on synthetic studies (about 2 minutes)"
    )
    parser.add_argument("--out", type=Path, default=Path("var/demo"), help="working folder")
    parser.add_argument("--seed", type=int, default=7, help="seed of the synthetic studies")
    parser.add_argument(
        "--interval", type=float, default=2.5, help="seconds between studies (arrival pace)"
    )
    parser.add_argument("--studies", type=int, default=len(_STREAM), help="how many to send")
    parser.set_defaults(func=run)


@dataclass
class _Sent:
    index: int
    label: str
    study: SyntheticStudy
    order: str | None
    acknowledged_at: datetime | None = None


def run(args: argparse.Namespace) -> int:
    """Run the demo; 0 when every study was processed and the bleed was flagged."""
    from serving.config import ServiceConfig
    from serving.service.app import Service
    from serving.service.heap import settle_heap

    out: Path = args.out
    if out.exists():
        shutil.rmtree(out)
    (out / "studies").mkdir(parents=True)
    stream = _STREAM[: max(1, min(args.studies, len(_STREAM)))]
    print(f"statlane demo: {len(stream)} synthetic studies, one every {args.interval:g} s")
    generated = []
    for index, (label, kind, options, order) in enumerate(
        tqdm(stream, desc="synthesize", unit="study", file=sys.stderr), start=1
    ):
        study = generate_study(
            kind, out / "studies", seed=args.seed * 100 + index, matrix=_MATRIX[kind], **options
        )
        generated.append(_Sent(index, label, study, order))

    config = ServiceConfig.model_validate(
        {
            "var_dir": out / "var",
            "dicom": {"port": 0},
            "http": {"host": "127.0.0.1", "port": 0},
            "hl7": {"host": "127.0.0.1", "port": 0},
            "assembly": {"quiet_period_s": {"stat": 0.5, "urgent": 1.0, "routine": 2.0}},
            "destinations": {"local-folder": {"type": "folder", "path": str(out / "results")}},
        }
    )
    service = Service(config)
    ports = service.start()
    settle_heap()  # this process is the service now: the start-up heap is never walked again
    print(
        f"service up: DICOM STATLANE@{ports.dicom}, REST http://127.0.0.1:{ports.http}"
        f"/worklist, HL7 MLLP {ports.hl7}"
    )
    started = time.monotonic()
    watcher = _Watcher(service, generated, started)
    watcher.start()
    try:
        _send_all(generated, ports.dicom, ports.hl7, args.interval)
        _wait_until_done(service, generated, timeout_s=240.0)
        watcher.stop()
        service.deliver_due(limit=1000)
        return _report(service, generated, out, time.monotonic() - started)
    finally:
        watcher.stop()
        service.stop()


def _send_all(sent: list[_Sent], dicom_port: int, hl7_port: int | None, interval: float) -> None:
    from pynetdicom import AE, StoragePresentationContexts

    from serving.mllp import send_message

    ae = AE(ae_title="DEMO_MODALITY")
    ae.requested_contexts = StoragePresentationContexts
    for item in tqdm(sent, desc="send", unit="study", file=sys.stderr):
        if item.order is not None and hl7_port is not None:
            send_message("127.0.0.1", hl7_port, _orm(item))
        assoc = ae.associate("127.0.0.1", dicom_port, ae_title="STATLANE")
        if not assoc.is_established:
            raise RuntimeError("the service refused the demo modality's association")
        import pydicom

        for path in item.study.files:
            status = assoc.send_c_store(pydicom.dcmread(path))
            if getattr(status, "Status", 0xFFFF) != 0:
                raise RuntimeError(f"C-STORE failed with status {status.Status:#06x}")
        assoc.release()
        item.acknowledged_at = datetime.now(UTC)
        time.sleep(interval)


def _orm(item: _Sent) -> str:
    import pydicom

    ds = pydicom.dcmread(item.study.files[0], stop_before_pixels=True)
    accession = item.study.accession_number
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    return (
        "\r".join(
            [
                f"MSH|^~\\&|RIS|DEMO|STATLANE|DEMO|{stamp}||ORM^O01|DEMO{item.index:04d}|P|2.5.1",
                f"PID|1||{ds.PatientID}^^^DEMO^MR||{ds.PatientName}",
                f"ORC|NW|P{accession}|F{accession}||||^^^^^{item.order}",
                f"OBR|1|P{accession}|F{accession}|{ds.StudyDescription}" + "|" * 14 + accession,
            ]
        )
        + "\r"
    )


class _Watcher:
    """Prints each task's outcome as it happens (no patient data)."""

    def __init__(self, service: Any, sent: list[_Sent], started: float) -> None:
        self.service = service
        self.by_uid = {s.study.study_uid: s for s in sent}
        self.started = started
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)
        self.poll()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.poll()

    def poll(self) -> None:
        from serving.jobstore import TaskState

        for task in self.service.store.tasks():
            if task.task_id in self.seen or task.state not in (TaskState.DONE, TaskState.FAILED):
                continue
            self.seen.add(task.task_id)
            item = self.by_uid.get(task.study_instance_uid)
            label = f"#{item.index:<2} {item.label}" if item else task.study_instance_uid[-12:]
            elapsed = time.monotonic() - self.started
            if task.state is TaskState.FAILED:
                tqdm.write(f"[{elapsed:6.1f} s] {label}: {task.model} FAILED ({task.error})")
                continue
            result = task.result or {}
            present = [f["concept_meaning"] for f in result.get("findings", []) if f["present"]]
            verdict = (
                ("FLAG " + ", ".join(present))
                if result.get("critical_positive")
                else (", ".join(present) or "no finding")
            )
            total = (result.get("stages_s") or {}).get("total")
            tqdm.write(
                f"[{elapsed:6.1f} s] {label:<40} {task.model:<20} {task.priority.value:<7} "
                f"{verdict} ({total:.2f} s in the runtime)"
                if total is not None
                else verdict
            )


def _wait_until_done(service: Any, sent: list[_Sent], timeout_s: float) -> None:
    from serving.jobstore import StudyState

    deadline = time.monotonic() + timeout_s
    final = {StudyState.DONE, StudyState.QUARANTINED}
    uids = [s.study.study_uid for s in sent]
    with tqdm(total=len(uids), desc="results", unit="study", file=sys.stderr) as bar:
        finished = 0
        while time.monotonic() < deadline:
            now_finished = sum(
                1
                for uid in uids
                if (row := service.store.study(uid)) is not None and row.state in final
            )
            bar.update(now_finished - finished)
            finished = now_finished
            if finished == len(uids):
                return
            time.sleep(0.25)
    raise TimeoutError(f"only {finished} of {len(uids)} studies finished in {timeout_s:g} s")


def _report(service: Any, sent: list[_Sent], out: Path, elapsed_s: float) -> int:
    from router.result import Mode
    from router.worklist import worklist_json

    worklist = worklist_json(service.worklist, Mode.TRIAGE)
    native = {r["study_instance_uid"]: r for r in worklist["native"]}
    published = {r["study_instance_uid"]: r for r in worklist["published"]}
    tasks = {t.study_instance_uid: t for t in service.store.tasks()}
    print("\narrival vs worklist (triage mode: AI order published)")
    print(f"{'arr':>3}  {'study':<36} {'order':<6} {'native':>6} {'AI':>4}  {'flag':<4} label")
    for item in sorted(sent, key=lambda s: published[s.study.study_uid]["rank"]):
        uid = item.study.study_uid
        flag = "RED" if published[uid]["red_flag"] else ""
        print(
            f"{item.index:>3}  {item.label:<36} {item.order or '-':<6} "
            f"{native[uid]['rank']:>6} {published[uid]['rank']:>4}  {flag:<4} "
            f"{published[uid]['label']}"
        )

    per_class: dict[str, list[float]] = {}
    misses: dict[str, int] = {}
    for item in sent:
        task = tasks.get(item.study.study_uid)
        if task is None or task.finished_at is None or item.acknowledged_at is None:
            continue
        latency = (task.finished_at - item.acknowledged_at).total_seconds()
        per_class.setdefault(task.priority.value, []).append(latency)
        missed = bool((task.result or {}).get("deadline_missed"))
        misses[task.priority.value] = misses.get(task.priority.value, 0) + missed
    print("\nlast instance acknowledged -> result (seconds; includes the quiet period)")
    print(f"{'class':<8} {'n':>3} {'p50':>6} {'max':>6} {'deadline misses':>16}")
    for cls in ("stat", "urgent", "routine"):
        values = per_class.get(cls)
        if values:
            print(
                f"{cls:<8} {len(values):>3} {statistics.median(values):>6.2f} "
                f"{max(values):>6.2f} {misses.get(cls, 0):>16}"
            )

    delivered = sorted((out / "results").glob("*.dcm"))
    print(
        f"\n{len(delivered)} result objects (SR, GSPS, secondary capture, SEG) in "
        f"{out / 'results'}; job store and audit trail in {out / 'var' / 'statlane.db'}"
    )
    png = _key_slice_png(service, sent, out)
    if png is not None:
        print(f"flagged key slice with its box: {png}")
    print(f"done in {elapsed_s:.0f} s")
    bleed = sent[-1] if sent[-1].study.finding and sent[-1].order == "R" else None
    if bleed is not None and not published[bleed.study.study_uid]["red_flag"]:
        print("the ED bleed was not flagged", file=sys.stderr)
        return 1
    return 0


def _key_slice_png(service: Any, sent: list[_Sent], out: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pydicom
    from matplotlib.patches import Rectangle

    for item in reversed(sent):
        for task in service.store.tasks(study_uid=item.study.study_uid):
            result = task.result or {}
            if not result.get("critical_positive") or not result.get("key_images"):
                continue
            key = result["key_images"][0]
            path = next(
                (
                    i.path
                    for s in service.store.series_of(task.study_instance_uid)
                    for i in service.store.instances_of(s.series_instance_uid)
                    if i.sop_instance_uid == key["sop_instance_uid"]
                ),
                None,
            )
            if path is None:
                continue
            ds = pydicom.dcmread(path)
            image = ds.pixel_array * float(ds.get("RescaleSlope", 1)) + float(
                ds.get("RescaleIntercept", 0)
            )
            c0, r0, c1, r1 = key["box_px"]
            fig, ax = plt.subplots(figsize=(6, 6))
            ax.imshow(image, cmap="gray", vmin=0, vmax=80)
            ax.add_patch(
                Rectangle(
                    (c0 - 0.5, r0 - 0.5),
                    c1 - c0 + 1,
                    r1 - r0 + 1,
                    fill=False,
                    edgecolor="red",
                    linewidth=2,
                )
            )
            ax.set_title(f"#{item.index} {item.label}: AI result - preliminary")
            ax.axis("off")
            target = out / "flagged-key-slice.png"
            fig.savefig(target, dpi=100, bbox_inches="tight")
            plt.close(fig)
            return target
    return None
