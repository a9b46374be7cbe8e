"""Bounded storage and memory: spool retention, the in-flight memory budget, allocator trims."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE

# The SOP class names are made at import time; pynetdicom's types do not list them.
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from models.synthetic import SyntheticStudy, generate_study
from router.vocabulary import PriorityClass
from serving.config import ServiceConfig
from serving.delivery.outbox import Outbox
from serving.gateway.budget import MemoryBudget, OverBudget
from serving.gateway.dimse import DicomGateway
from serving.gateway.spool import InstanceSource, Spool, StoredInstance
from serving.gateway.stow import StowServer
from serving.jobstore import JobStore, StudyState
from serving.metrics import Metrics
from serving.service.retention import AllocatorTrim, SpoolRetention, glibc_malloc_trim
from serving.service.streaming import StreamingVolumes

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
BOUNDARY = "bounded-boundary"


class FakeClock:
    """UTC and monotonic time that move only when told to."""

    def __init__(self) -> None:
        self.now = T0
        self.mono_s = 0.0

    def __call__(self) -> datetime:
        return self.now

    def mono(self) -> float:
        return self.mono_s

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
        self.mono_s += seconds


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> SyntheticStudy:
    return generate_study("ct-head", tmp_path_factory.mktemp("head"), seed=21, matrix=32)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _spool_study(spool: Spool, study: SyntheticStudy) -> list[StoredInstance]:
    source = InstanceSource("MODALITY", "127.0.0.1", "dimse", "a1")
    return [spool.store(path.read_bytes(), source) for path in study.files]


def _record(store: JobStore, stored: list[StoredInstance]) -> None:
    for item in stored:
        store.record_instance(
            item.study_instance_uid,
            item.series_instance_uid,
            item.sop_instance_uid,
            str(item.path),
            "ACC1",
            "PAT1",
            "MODALITY",
            "CT",
        )


def _done_study_with_delivery(
    store: JobStore, outbox: Outbox, stored: list[StoredInstance], *, deliver: bool
) -> int:
    """A routed study whose one task is done, with one outbox item (delivered if asked)."""
    study_uid, series_uid = stored[0].study_instance_uid, stored[0].series_instance_uid
    store.mark_study_complete(study_uid, {series_uid: len(stored)})
    store.set_study_state(study_uid, StudyState.ROUTED)
    task = store.create_task(
        study_uid,
        series_uid,
        rule_name="ct-head-ed",
        model_name="ich-ct-head",
        model_version="1",
        priority=PriorityClass.STAT,
        deadline_at=T0 + timedelta(minutes=1),
        mode="triage",
        destinations=["pacs"],
    )
    attempt = store.start_task(task.task_id)
    item = outbox.enqueue(task.task_id, "pacs", "sr", payload=b"x", dedupe_key=f"k:{task.task_id}")
    assert store.finish_task(task.task_id, attempt, {"ok": True})
    assert store.finish_study(study_uid)
    if deliver:
        assert outbox.claim(item.id)
        outbox.delivered(item.id)
    return item.id


def test_a_settled_study_is_pruned_after_its_grace_period_and_audited(
    tmp_path: Path, head: SyntheticStudy, clock: FakeClock
) -> None:
    spool = Spool(tmp_path / "spool", min_free_bytes=0, clock=clock)
    store = JobStore(f"sqlite:///{tmp_path / 'db.sqlite'}", clock=clock)
    outbox = Outbox(store, clock=clock)
    metrics = Metrics()
    stored = _spool_study(spool, head)
    total = sum(s.size_bytes for s in stored)
    assert spool.stored_bytes == total
    _record(store, stored)
    item_id = _done_study_with_delivery(store, outbox, stored, deliver=False)
    retention = SpoolRetention(
        spool, store, metrics, grace_s=60.0, interval_s=10.0, mono=clock.mono
    )
    clock.advance(120)
    assert retention.prune_due() == 0  # its result is not delivered yet: kept
    assert outbox.claim(item_id)
    outbox.delivered(item_id)
    clock.advance(30)
    assert retention.prune_due() == 0  # delivered 30 s ago: inside the grace period
    clock.advance(31)
    assert retention.prune_due() == 1
    assert all(not s.path.exists() for s in stored)
    assert list(spool.instances_dir.iterdir()) == []  # empty study directories go too
    assert spool.stored_bytes == 0
    assert metrics.counter("statlane_spool_pruned_bytes_total") == total
    assert metrics.counter("statlane_spool_pruned_instances_total") == len(stored)
    (event,) = [e for e in store.audit_events() if e.event == "spool-pruned"]
    assert event.study_instance_uid == head.study_uid
    assert event.detail == {"instances": len(stored), "bytes": total, "already_absent": 0}
    prune = store.spool_prune(head.study_uid)
    assert prune is not None
    assert prune.bytes_removed == total
    # the rows keep their paths; a second look prunes nothing again
    assert retention.prune_due() == 0
    rows = store.instances_of(stored[0].series_instance_uid)
    assert [r.path for r in rows] == [str(s.path) for s in stored]


def test_null_grace_keeps_everything_and_dead_items_count_as_settled(
    tmp_path: Path, head: SyntheticStudy, clock: FakeClock
) -> None:
    spool = Spool(tmp_path / "spool", min_free_bytes=0, clock=clock)
    store = JobStore(f"sqlite:///{tmp_path / 'db.sqlite'}", clock=clock)
    outbox = Outbox(store, clock=clock)
    stored = _spool_study(spool, head)
    _record(store, stored)
    item_id = _done_study_with_delivery(store, outbox, stored, deliver=False)
    assert outbox.claim(item_id)
    outbox.failed(item_id, "refused", retryable=False)  # dead
    keep = SpoolRetention(spool, store, Metrics(), grace_s=None, interval_s=1.0, mono=clock.mono)
    clock.advance(10**6)
    assert keep.prune_due() == 0
    assert all(s.path.exists() for s in stored)
    now = SpoolRetention(spool, store, Metrics(), grace_s=0.0, interval_s=1.0, mono=clock.mono)
    assert now.maybe_prune() == 1
    assert all(not s.path.exists() for s in stored)


def test_a_late_instance_after_a_prune_is_what_is_left_on_disk(
    tmp_path: Path, head: SyntheticStudy, clock: FakeClock
) -> None:
    """A late instance reopens the pruned study; its re-run can read only the late one."""
    spool = Spool(tmp_path / "spool", min_free_bytes=0, clock=clock)
    store = JobStore(f"sqlite:///{tmp_path / 'db.sqlite'}", clock=clock)
    outbox = Outbox(store, clock=clock)
    source = InstanceSource("MODALITY", "127.0.0.1", "dimse", "a1")
    first = [spool.store(path.read_bytes(), source) for path in head.files[:-1]]
    _record(store, first)
    _done_study_with_delivery(store, outbox, first, deliver=True)
    retention = SpoolRetention(
        spool, store, Metrics(), grace_s=5.0, interval_s=1.0, mono=clock.mono
    )
    clock.advance(6)
    assert retention.prune_due() == 1
    clock.advance(1)
    late = spool.store(head.files[-1].read_bytes(), source)
    _record(store, [late])
    rows = store.instances_of(late.series_instance_uid)
    on_disk = [r.sop_instance_uid for r in rows if Path(r.path).exists()]
    assert on_disk == [late.sop_instance_uid]
    assert retention.prune_due() == 0  # the late instance is inside the grace period
    assert late.path.exists()


def test_spool_remove_touches_only_spool_files(tmp_path: Path, head: SyntheticStudy) -> None:
    spool = Spool(tmp_path / "spool", min_free_bytes=0)
    outside = tmp_path / "outside.dcm"
    outside.write_bytes(b"keep me")
    assert spool.remove(outside) == 0
    assert outside.exists()
    stored = _spool_study(spool, head)[0]
    assert spool.remove(stored.path) == stored.size_bytes
    assert spool.remove(stored.path) == 0  # gone already


def test_memory_budget_refuses_past_its_limit_and_recovers() -> None:
    budget = MemoryBudget(100)
    assert budget.try_reserve(150)  # alone: one oversized reservation is taken
    assert not budget.try_reserve(1)
    budget.release(150)
    with budget.reserve(60):
        with pytest.raises(OverBudget), budget.reserve(50):
            pass
        assert budget.in_use_bytes == 60
    assert budget.in_use_bytes == 0
    assert budget.refused == 2


@pytest.mark.parametrize("fast_path", [True, False])
def test_c_store_over_the_memory_budget_is_refused_with_a700(
    tmp_path: Path, head: SyntheticStudy, fast_path: bool
) -> None:
    budget = MemoryBudget(1024 * 1024)
    assert budget.try_reserve(1024 * 1024)  # something else holds the whole budget
    spool = Spool(tmp_path / "spool", min_free_bytes=0)
    gateway = DicomGateway(spool, port=0, host="127.0.0.1", fast_path=fast_path, budget=budget)
    with gateway:
        ae = AE(ae_title="PYSCU")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", gateway.port, ae_title="STATLANE")
        assert assoc.is_established
        refused = int(assoc.send_c_store(head.files[0]).Status)
        budget.release(1024 * 1024)  # the other holder is done: the resend is taken
        taken = int(assoc.send_c_store(head.files[0]).Status)
        assoc.release()
    assert (refused, taken) == (0xA700, 0x0000)
    assert budget.in_use_bytes == 0
    assert len(list(spool.instances_dir.rglob("*.dcm"))) == 1


def _post(server: StowServer, body: bytes) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.port}/dicomweb/studies", data=body, method="POST"
    )
    request.add_header(
        "Content-Type", f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def _multipart(files: list[Path]) -> bytes:
    chunks = [
        f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + path.read_bytes()
        + b"\r\n"
        for path in files
    ]
    return b"".join([*chunks, f"--{BOUNDARY}--\r\n".encode()])


def test_stow_over_the_memory_budget_is_503_with_retry_after(
    tmp_path: Path, head: SyntheticStudy
) -> None:
    budget = MemoryBudget(1024 * 1024)
    assert budget.try_reserve(1024 * 1024)
    spool = Spool(tmp_path / "spool", min_free_bytes=0)
    with StowServer(spool, host="127.0.0.1", port=0, budget=budget, retry_after_s=7) as server:
        status, headers, _ = _post(server, _multipart(head.files[:2]))
        assert (status, headers.get("Retry-After")) == (503, "7")
        assert list(spool.instances_dir.rglob("*.dcm")) == []
        budget.release(1024 * 1024)
        status, _, raw = _post(server, _multipart(head.files[:2]))
    assert status == 200
    assert "00081199" in json.loads(raw)
    assert budget.in_use_bytes == 0
    assert len(list(spool.instances_dir.rglob("*.dcm"))) == 2


def test_allocator_trim_runs_once_per_idle_spell_and_can_be_switched_off() -> None:
    now = [0.0]
    calls: list[int] = []

    def trim() -> int:
        calls.append(1)
        return 1

    trims = AllocatorTrim(enabled=True, interval_s=30.0, mono=lambda: now[0], trim=trim)
    assert trims.idle()
    assert not trims.idle()  # nothing ran since
    trims.note_busy()
    now[0] = 10.0
    assert not trims.idle()  # within the interval
    now[0] = 31.0
    assert trims.idle()
    assert len(calls) == 2
    off = AllocatorTrim(enabled=False, interval_s=1.0, mono=lambda: now[0], trim=trim)
    assert not off.available
    assert not off.idle()
    if glibc_malloc_trim() is not None:  # Linux/glibc: the real call works
        assert AllocatorTrim(enabled=True, interval_s=1.0, mono=lambda: 0.0).idle()


def test_config_keys_have_defaults_and_null_keeps_forever() -> None:
    config = ServiceConfig()
    assert config.spool.retention_grace_s == 3600.0
    assert config.memory.inflight_budget_bytes == 2 * 1024**3
    config = ServiceConfig.model_validate({"spool": {"retention_grace_s": None}})
    assert config.spool.retention_grace_s is None
    with pytest.raises(ValueError, match="retention_grace_s"):
        ServiceConfig.model_validate({"spool": {"retention_grace_s": -1}})


def test_streamed_slices_no_task_reads_can_be_dropped(head: SyntheticStudy) -> None:
    streaming = StreamingVolumes()
    try:
        series_uid = str(pydicom.dcmread(head.files[0], stop_before_pixels=True).SeriesInstanceUID)
        for path in head.files[:2]:
            streaming.offer(series_uid, "CT", str(path))
        assert streaming.take("no-such-series", [], timeout_s=30) is None  # waits for decoding
        assert streaming.held_series == 1
        assert streaming.discard([series_uid, "other"]) == 1
        assert streaming.held_series == 0
    finally:
        streaming.stop()


def test_a_stow_request_alone_is_never_refused_for_its_own_parts(
    tmp_path: Path, head: SyntheticStudy
) -> None:
    body = _multipart(head.files[:3])
    budget = MemoryBudget(len(body) + 1024)  # the body fits; body plus a part does not
    spool = Spool(tmp_path / "spool", min_free_bytes=0)
    with StowServer(spool, host="127.0.0.1", port=0, budget=budget) as server:
        status, _, _ = _post(server, body)
    assert status == 200
    assert len(list(spool.instances_dir.rglob("*.dcm"))) == 3
    assert budget.in_use_bytes == 0


def test_a_part_over_the_budget_fails_with_a700_while_another_request_holds_it(
    tmp_path: Path, head: SyntheticStudy
) -> None:
    budget = MemoryBudget(1024 * 1024)
    spool = Spool(tmp_path / "spool", min_free_bytes=0)
    server = StowServer(spool, host="127.0.0.1", port=0, budget=budget)
    body = _multipart(head.files[:1])
    assert budget.try_reserve(1024 * 1024 - 10)  # another request's body
    answer = server.store_body(body, BOUNDARY, study_uid=None, address="127.0.0.1", request_id="r1")
    assert answer.http_status == 409
    failed = json.loads(answer.body)["00081198"]["Value"]
    assert [item["00081197"]["Value"][0] for item in failed] == [0xA700]
