"""The four scenarios: SIGKILL trials, a PACS outage, a burst, and hostile connections."""

from __future__ import annotations

import functools
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pydicom

from benchmarks.reliability.audit import open_store, settle
from benchmarks.reliability.peers import Pacs, Sent, Serve, echoscu, say, storescu
from models.synthetic import generate_study
from serving.delivery.outbox import Outbox, RetryPolicy
from serving.jobstore import TaskState
from serving.jobstore.states import OutboxState

PHASES = ("ingest", "quiet", "inference", "delivery", "delivery-pacs-down")
"""When a trial's SIGKILL lands."""

OLD_MAX_ATTEMPTS = 8
"""The policy before the retry window: dead after 8 failed attempts (2+4+...+128 s of backoff,
about 259 s with the attempts themselves)."""
OLD_DEAD_AFTER_S = 259.0


@dataclass(frozen=True)
class Sizes:
    """How big each scenario is (smoke or full)."""

    trials: int
    ct_matrix: int
    ct_slices: int
    outage_s: float
    outage_studies: int
    burst: int
    burst_matrix: int
    burst_senders: int
    stuck_after_s: float
    quiet_s: float
    bound_s: float | None
    rss_settle_s: float


def sop_uids(files: list[Path]) -> set[str]:
    """SOP Instance UIDs of ``files``."""
    return {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}


def wait_until(predicate: Callable[[], bool], timeout_s: float, step_s: float = 0.05) -> bool:
    """Poll ``predicate`` until true or ``timeout_s`` seconds pass; whether it became true."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step_s)
    return False


def _task_state(serve: Serve, study_uid: str, states: set[TaskState]) -> bool:
    store = open_store(serve.workdir / "var")
    try:
        return any(t.state in states for t in store.tasks(study_uid=study_uid))
    finally:
        store.close()


def _items_of(serve: Serve, study_uid: str) -> list[Any]:
    store = open_store(serve.workdir / "var")
    try:
        ids = {t.task_id for t in store.tasks(study_uid=study_uid)}
        return [i for i in Outbox(store).items() if i.task_id in ids]
    finally:
        store.close()


def kill_trial(
    index: int, phase: str, rng: random.Random, serve: Serve, pacs: Pacs, sizes: Sizes, data: Path
) -> dict[str, Any]:
    """One SIGKILL trial in ``phase``: send a study, kill the service at a random moment of that
    phase, restart it on the same var dir (the modality resends what was not acknowledged) and
    judge the study once everything settles or ``stuck_after_s`` passes."""
    study = generate_study(
        "ct-head",
        data / f"trial{index}",
        seed=1000 + index,
        finding=rng.random() < 0.5,
        matrix=sizes.ct_matrix,
        slices=sizes.ct_slices,
    )
    files = list(study.files)
    port = serve.ports["dicom"]
    delay_s = 0.0
    kill_after = 0
    note = ""
    acked: list[Path] = []
    pacs_down = phase == "delivery-pacs-down"
    if pacs_down:
        pacs.crash()
    if phase == "ingest":
        # Killed right after a random instance's Success response: mid-association.
        kill_after = rng.randint(1, len(files) - 1)
        delay_s = float(kill_after)

        def kill_at(count: int) -> None:
            if count == kill_after:
                serve.kill()

        acked = list(storescu(port, files, on_ack=kill_at).acknowledged)
        note = f"killed after Success for instance {kill_after}; {len(acked)} acknowledged"
    else:
        sent = storescu(port, files)
        acked = list(sent.acknowledged)
        if phase == "quiet":
            delay_s = rng.uniform(0.0, sizes.quiet_s)
            time.sleep(delay_s)
        elif phase == "inference":
            wait_until(lambda: _task_state(serve, study.study_uid, {TaskState.RUNNING}), 60)
            delay_s = rng.uniform(0.0, 0.3)
            time.sleep(delay_s)
        else:  # delivery, with or without the PACS
            wait_until(lambda: bool(_items_of(serve, study.study_uid)), 90)
            if pacs_down:
                wait_until(
                    lambda: any(i.attempts >= 1 for i in _items_of(serve, study.study_uid)), 60
                )
            delay_s = rng.uniform(0.0, 0.1)
            time.sleep(delay_s)
        serve.kill()
        note = f"{len(acked)}/{len(files)} acknowledged"
    acked_before = len(acked)
    restart_s = serve.start()
    if len(acked) < len(files):  # the modality sends again what was not acknowledged
        resent = storescu(serve.ports["dicom"], [f for f in files if f not in acked])
        acked += resent.acknowledged
    if pacs_down:
        time.sleep(rng.uniform(1.0, 3.0))
        pacs.start()
    verdicts, waited = settle(
        pacs, serve.workdir / "var", {study.study_uid: sop_uids(acked)}, sizes.stuck_after_s
    )
    [v] = verdicts
    say(
        f"trial {index:2d} {phase:18s} "
        + (f"kill after ack {kill_after}" if phase == "ingest" else f"kill +{delay_s:.2f} s")
        + f": lost {v.lost} dup {v.duplicated} "
        f"stale {v.stale} stuck {v.stuck} ({waited:.1f} s to settle)"
    )
    return {
        "trial": index,
        "phase": phase,
        "kill_delay_s": round(delay_s, 3),
        "note": note,
        "acked_before_kill": acked_before,
        "restart_s": round(restart_s, 2),
        "settle_s": round(waited, 2),
        **asdict(v),
    }


def outage(serve: Serve, pacs: Pacs, sizes: Sizes, data: Path) -> dict[str, Any]:
    """Orthanc down for ``outage_s`` while results are produced; then back. Measures the time
    from Orthanc answering again to the last SR stored, and the dead letters; the baseline is
    when plain backoff (no probe re-drive) would have retried each item next."""
    studies = [
        generate_study("dx-chest", data / "outage", seed=5000 + i, matrix=sizes.burst_matrix)
        for i in range(sizes.outage_studies)
    ]
    pacs.crash()
    down_at = time.monotonic()
    say(f"outage: Orthanc down for {sizes.outage_s:.0f} s, {len(studies)} studies sent")
    acked: dict[str, set[str]] = {}
    for study in studies:
        sent = storescu(serve.ports["dicom"], list(study.files))
        acked[study.study_uid] = sop_uids(sent.acknowledged)
    time.sleep(max(0.0, down_at + sizes.outage_s - time.monotonic()))
    back_at = pacs.start()
    verdicts, _ = settle(pacs, serve.workdir / "var", acked, sizes.stuck_after_s)
    recovered_s = time.monotonic() - back_at
    store = open_store(serve.workdir / "var")
    try:
        ids = {t.task_id for uid in acked for t in store.tasks(study_uid=uid)}
        items = [i for i in Outbox(store).items() if i.task_id in ids]
    finally:
        store.close()
    delivered = [i for i in items if i.delivered_at is not None]
    # The newest result delivered, measured by the job store's clock against the PACS's return
    wall_back = time.time() - (time.monotonic() - back_at)
    last = max((i.delivered_at.timestamp() for i in delivered if i.delivered_at), default=0.0)
    last_delivered_s = max(0.0, last - wall_back) if last else None
    # Baseline: exponential backoff alone (default 2 s doubling to 300 s) retries each item at
    # created + 2 + 4 + ...; the first such attempt after the PACS returns is its recovery.
    policy = RetryPolicy()
    wall_down = wall_back - (back_at - down_at)
    baseline: list[float] = []
    old_dead = 0
    for item in items:
        at = item.created_at.timestamp()
        attempt = 1
        while at < wall_back:
            at += policy.delay_after(attempt)
            attempt += 1
        if at >= wall_down and attempt - 1 >= OLD_MAX_ATTEMPTS:
            old_dead += 1
        baseline.append(at - wall_back)
    result = {
        "outage_s": round(back_at - down_at, 2),
        "studies": len(studies),
        "items": len(items),
        "delivered": len(delivered),
        "dead_letters": sum(i.state is OutboxState.DEAD for i in items),
        "recovered_s": round(recovered_s, 2),
        "last_delivered_after_return_s": None
        if last_delivered_s is None
        else round(last_delivered_s, 2),
        "backoff_only_last_retry_after_return_s": round(max(baseline, default=0.0), 2),
        "old_policy_dead_letters": old_dead,
        "old_policy_dead_after_s": OLD_DEAD_AFTER_S,
        "lost": sum(v.lost for v in verdicts),
        "duplicated": sum(v.duplicated for v in verdicts),
        "stale": sum(v.stale for v in verdicts),
        "stuck": sum(v.stuck for v in verdicts),
    }
    say(
        f"outage: {result['dead_letters']} dead letters; all SRs in Orthanc "
        f"{recovered_s:.1f} s after its return (backoff alone: "
        f"{result['backoff_only_last_retry_after_return_s']} s)"
    )
    return result


def burst(serve: Serve, pacs: Pacs, sizes: Sizes, data: Path, rng: random.Random) -> dict[str, Any]:
    """``burst`` single-image radiographs at once (a few stat), from ``burst_senders`` parallel
    associations; peak and settled RSS (bytes), spool size (bytes) and stat deadline misses."""
    priorities = ["STAT" if rng.random() < 0.05 else "ROUTINE" for _ in range(sizes.burst)]
    studies = [
        generate_study(
            "dx-chest", data / "burst", seed=9000 + i, matrix=sizes.burst_matrix, priority=p
        )
        for i, p in enumerate(priorities)
    ]
    say(f"burst: {len(studies)} studies generated, sending")
    files = [f for s in studies for f in s.files]
    misses_before = serve.metric("statlane_deadline_misses_total")
    rss_base = serve.rss_bytes()
    peak = [rss_base]
    spool_peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.25):
            peak[0] = max(peak[0], serve.rss_bytes())
            spool_peak[0] = max(spool_peak[0], du(serve.workdir / "var" / "spool"))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    chunks = [files[i :: sizes.burst_senders] for i in range(sizes.burst_senders)]
    results: list[Sent] = []
    senders = [
        threading.Thread(target=lambda c=c: results.append(storescu(serve.ports["dicom"], c)))
        for c in chunks
    ]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    sent_s = time.monotonic() - started
    acked_uids = sop_uids([f for r in results for f in r.acknowledged])
    by_study = {s.study_uid: sop_uids(list(s.files)) & acked_uids for s in studies}
    say(f"burst: {len(acked_uids)}/{len(files)} acknowledged in {sent_s:.1f} s; draining")
    timeout = sizes.stuck_after_s + sizes.burst * 1.5
    verdicts, waited = settle(pacs, serve.workdir / "var", by_study, timeout)
    drained_s = time.monotonic() - started
    stop.set()
    sampler.join()
    time.sleep(sizes.rss_settle_s)
    settled_rss = serve.rss_bytes()
    result = {
        "studies": len(studies),
        "stat_studies": priorities.count("STAT"),
        "acknowledged": len(acked_uids),
        "send_s": round(sent_s, 2),
        "drain_s": round(drained_s, 2),
        "studies_per_s": round(len(studies) / drained_s, 3),
        "rss_start_bytes": rss_base,
        "rss_peak_bytes": peak[0],
        "rss_settled_bytes": settled_rss,
        "spool_peak_bytes": spool_peak[0],
        "spool_settled_bytes": du(serve.workdir / "var" / "spool"),
        "deadline_misses": serve.metric("statlane_deadline_misses_total") - misses_before,
        "lost": sum(v.lost for v in verdicts),
        "duplicated": sum(v.duplicated for v in verdicts),
        "stale": sum(v.stale for v in verdicts),
        "stuck": sum(v.stuck for v in verdicts),
        "waited_s": round(waited, 2),
    }
    say(
        f"burst: drained in {drained_s:.1f} s, RSS peak {peak[0] / 2**20:.0f} MiB, settled "
        f"{settled_rss / 2**20:.0f} MiB, deadline misses {result['deadline_misses']:.0f}"
    )
    return result


def du(path: Path) -> int:
    """Bytes of the regular files under ``path`` (0 when it does not exist)."""
    if not path.exists():
        return 0
    total = 0
    for entry in path.rglob("*"):
        try:
            if entry.is_file():
                total += entry.stat().st_size
        except OSError:
            continue
    return total


HOSTILE_ADDRESS = "127.0.0.2"
"""Hostile peers connect from here, the modality from 127.0.0.1 (per-address limits apply)."""


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(
        ("127.0.0.1", port), timeout=5, source_address=(HOSTILE_ADDRESS, 0)
    )
    return sock


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        return sock.recv(65536) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except (TimeoutError, OSError):
        return False


def _trickle(
    sock: socket.socket, payload: bytes, stop: threading.Event, closed: list[float]
) -> None:
    started = time.monotonic()
    for byte in payload * 100:
        if stop.is_set():
            return
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            closed.append(time.monotonic() - started)
            return
        time.sleep(0.1)


def _became_true(closed: list[float]) -> bool:
    """Whether the trickling thread saw its connection closed within 20 s."""
    return wait_until(lambda: bool(closed), 20.0)


def hostile(serve: Serve, data: Path) -> list[dict[str, Any]]:
    """Each hostile connection pattern from 127.0.0.2 while a real modality (storescu from
    127.0.0.1) sends a study: did it get through, how long it took (s), and whether the hostile
    connections were closed."""
    study = generate_study("dx-chest", data / "hostile", seed=7001, matrix=64)
    files = list(study.files)
    ports = serve.ports
    baseline = storescu(ports["dicom"], files, calling_ae="MODALITY")
    rows: list[dict[str, Any]] = [
        {
            "case": "none (baseline)",
            "modality_ok": baseline.returncode == 0 and len(baseline.acknowledged) == len(files),
            "modality_s": round(baseline.seconds, 3),
            "hostile_closed": None,
        }
    ]

    def with_modality(
        name: str, hostile_socks: list[socket.socket], closed: Callable[[], bool]
    ) -> None:
        sent = storescu(ports["dicom"], files)
        ok_echo, echo_s = echoscu(ports["dicom"])
        was_closed = closed()
        for sock in hostile_socks:
            sock.close()
        row = {
            "case": name,
            "modality_ok": sent.returncode == 0
            and len(sent.acknowledged) == len(files)
            and ok_echo,
            "modality_s": round(sent.seconds, 3),
            "echo_s": round(echo_s, 3),
            "hostile_closed": was_closed,
        }
        say(
            f"hostile {name}: modality {'ok' if row['modality_ok'] else 'FAILED'} "
            f"in {sent.seconds:.2f} s"
        )
        rows.append(row)

    # 1. a 6-byte PDU header declaring 4 GiB
    socks = [_connect(ports["dicom"]) for _ in range(2)]
    for sock in socks:
        sock.sendall(bytes([0x01, 0]) + (4 * 1024**3 - 1).to_bytes(4, "big"))
    with_modality("pdu-header-4GiB", socks, lambda: all(_closed_within(s, 3.0) for s in socks))
    # 2. 20 silent TCP connections
    socks = []
    for _ in range(20):
        try:
            socks.append(_connect(ports["dicom"]))
        except OSError:
            break
    with_modality(
        "20-silent-dicom-connections", socks, lambda: all(_closed_within(s, 10.0) for s in socks)
    )
    # 3. slow-loris HTTP request line, one byte per 100 ms
    for name, port, payload in (
        ("http-slow-loris", ports["http"], b"GET /health HTTP/1.1\r\nHost: x\r\n"),
        ("mllp-unframed-trickle", ports["hl7"], b"MSH|^~\\&|"),
    ):
        sock = _connect(port)
        stop = threading.Event()
        closed: list[float] = []
        thread = threading.Thread(target=_trickle, args=(sock, payload, stop, closed), daemon=True)
        thread.start()
        with_modality(name, [], functools.partial(_became_true, closed))
        stop.set()
        thread.join()
        sock.close()
    return rows
