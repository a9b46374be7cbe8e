"""An outbox that recovers by itself: transient failures retried for a window, not a count;
destination probes that re-drive a backlog as soon as it answers; the delivery gauges and the
reasons ``/health`` says ``degraded``; the queue depth gauge of an emptied class."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt

from models.synthetic.study import generate_study
from router.vocabulary import PriorityClass
from serving.cli import main
from serving.config import OutboxConfig
from serving.delivery.base import DeliveryError, Payload
from serving.delivery.config import DicomDestinationConfig
from serving.delivery.dicom import _AssociationEvents
from serving.delivery.outbox import Outbox, RetryPolicy
from serving.delivery.probes import DestinationMonitor
from serving.delivery.workers import DeliveryWorkers
from serving.gateway.spool import Spool
from serving.jobstore import JobStore, OutboxState
from serving.metrics import METRICS, Metrics
from serving.service.app import publish_queue_depth
from serving.service.stat_gate import StatGate
from tests.orthanc_peer import free_port

T0 = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)


class FakeClock:
    """A UTC clock and a monotonic clock (seconds) that move only when told to."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def mono(self) -> float:
        return (self.now - T0).total_seconds()

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def outbox(tmp_path: Path, clock: FakeClock) -> Outbox:
    return Outbox(JobStore(f"sqlite:///{tmp_path / 'statlane.db'}", clock=clock), clock=clock)


def _enqueue(outbox: Outbox, key: str, destination: str = "pacs") -> int:
    return outbox.enqueue("t1", destination, "sr", f"/r/{key}.dcm", dedupe_key=key).id


def _fail(outbox: Outbox, item_id: int, retryable: bool = True) -> OutboxState:
    assert outbox.claim(item_id)
    return outbox.failed(item_id, "pacs: cannot connect", retryable=retryable).state


def _gauge(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


# ---- the retry window --------------------------------------------------------------------------


def test_a_four_minute_outage_no_longer_kills_an_item(outbox: Outbox, clock: FakeClock) -> None:
    item = _enqueue(outbox, "a")
    for _ in range(20):  # well past the 8 attempts and 259 s that used to make it dead
        assert _fail(outbox, item) is OutboxState.PENDING
        clock.now = outbox.item(item).next_attempt_at  # type: ignore[union-attr]
    state = outbox.item(item)
    assert state is not None
    assert state.attempts == 20
    assert state.next_attempt_at - state.created_at > timedelta(hours=1)


def test_the_window_ends_the_retries_and_the_last_is_at_its_end(
    tmp_path: Path, clock: FakeClock
) -> None:
    store = JobStore(f"sqlite:///{tmp_path / 's.db'}", clock=clock)
    policy = RetryPolicy(base_delay_s=200.0, max_delay_s=300.0, retry_window_s=1000.0)
    outbox = Outbox(store, policy, clock=clock)
    item = _enqueue(outbox, "a")
    clock.advance(900)
    assert _fail(outbox, item) is OutboxState.PENDING
    after = outbox.item(item)
    assert after is not None
    assert after.next_attempt_at == T0 + timedelta(seconds=1000)  # 900 + 200 s, cut at the end
    clock.now = after.next_attempt_at
    assert _fail(outbox, item) is OutboxState.DEAD


def test_only_a_permanent_failure_is_dead_at_once(outbox: Outbox) -> None:
    assert _fail(outbox, _enqueue(outbox, "a"), retryable=False) is OutboxState.DEAD
    assert _fail(outbox, _enqueue(outbox, "b"), retryable=True) is OutboxState.PENDING


def test_max_attempts_is_still_honoured_when_configured(tmp_path: Path, clock: FakeClock) -> None:
    store = JobStore(f"sqlite:///{tmp_path / 's.db'}", clock=clock)
    outbox = Outbox(store, RetryPolicy(max_attempts=2), clock=clock)
    item = _enqueue(outbox, "a")
    assert _fail(outbox, item) is OutboxState.PENDING
    assert _fail(outbox, item) is OutboxState.DEAD
    with pytest.raises(ValueError, match="retry_window_s"):
        RetryPolicy(retry_window_s=0)


def test_config_check_accepts_max_attempts_and_says_it_is_deprecated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = tmp_path / "old.yaml"
    old.write_text("outbox: {max_attempts: 8, base_delay_s: 2.0, max_delay_s: 300.0}\n")
    assert main(["config", "check", str(old)]) == 0
    assert "max_attempts is deprecated" in capsys.readouterr().err
    new = tmp_path / "new.yaml"
    new.write_text("outbox: {retry_window_s: 3600, probe_interval_s: 2, backlog_alert_s: 60}\n")
    assert main(["config", "check", str(new)]) == 0
    assert "deprecated" not in capsys.readouterr().err


def test_config_keeps_accepting_max_attempts_and_defaults_to_a_day() -> None:
    assert OutboxConfig().retry_window_s == 86400.0
    assert OutboxConfig().max_attempts is None
    assert OutboxConfig(max_attempts=8).max_attempts == 8
    custom = OutboxConfig(retry_window_s=3600, probe_interval_s=2, backlog_alert_s=60)
    assert (custom.retry_window_s, custom.probe_interval_s, custom.backlog_alert_s) == (
        3600,
        2,
        60,
    )


# ---- error classification ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("results", "retryable"),
    [
        ([], True),  # nothing answered: connection refused or timed out
        ([0x02], True),  # rejected-transient (the peer is busy)
        ([0x01], False),  # rejected-permanent (our or its AE title unknown)
        ([0x00], False),  # accepted none of our presentation contexts
    ],
)
def test_a_failed_association_is_retryable_unless_the_peer_said_permanently(
    results: list[int], retryable: bool
) -> None:
    events = _AssociationEvents()
    events.primitives = [SimpleNamespace(result=r) for r in results]
    assert events.retryable() is retryable


# ---- probes and re-drive -----------------------------------------------------------------------


@dataclass
class FakeDestination:
    """A destination that is up or down, and stores or answers out of resources."""

    name: str = "pacs"
    up: bool = False
    status: str = "ok"
    probes: int = 0

    def probe(self) -> None:
        self.probes += 1
        if not self.up:
            raise DeliveryError(True, f"{self.name}: cannot connect")

    def deliver(self, payload: Payload) -> None:
        if not self.up:
            raise DeliveryError(True, f"{self.name}: cannot connect")
        if self.status != "ok":
            raise DeliveryError(True, f"{self.name}: status 0xA700")


def _monitor(outbox: Outbox, pacs: FakeDestination, clock: FakeClock) -> DestinationMonitor:
    return DestinationMonitor(
        outbox, {"pacs": pacs}, metrics=Metrics(), mono=clock.mono, probe_interval_s=5.0
    )


def test_a_destination_that_answers_again_gets_its_backlog_now(
    outbox: Outbox, clock: FakeClock
) -> None:
    pacs = FakeDestination()
    monitor = _monitor(outbox, pacs, clock)
    items = [_enqueue(outbox, k) for k in "abc"]
    assert monitor.tick() == []
    assert pacs.probes == 0  # nothing in backoff: nothing to probe
    for item in items:
        for _ in range(9):  # deep in backoff: the next attempt minutes away
            _fail(outbox, item)
    assert outbox.due() == []
    assert monitor.tick() == []
    assert monitor.state("pacs").up is False
    assert "cannot connect" in monitor.state("pacs").reason
    assert _gauge(monitor.metrics, "statlane_destination_up", destination="pacs") == 0.0
    clock.advance(2)
    monitor.tick()
    assert pacs.probes == 1  # not before probe_interval_s
    pacs.up = True
    clock.advance(3)
    assert monitor.tick() == ["pacs"]
    assert [i.id for i in outbox.due()] == items  # due now, not after their backoff
    assert all(i.attempts == 9 for i in outbox.due())
    assert monitor.state("pacs").up is True
    assert _gauge(monitor.metrics, "statlane_destination_up", destination="pacs") == 1.0


def test_a_peer_that_answers_but_keeps_failing_is_not_redriven_again(
    outbox: Outbox, clock: FakeClock
) -> None:
    pacs = FakeDestination(up=True, status="out of resources")
    monitor = _monitor(outbox, pacs, clock)
    monitor.delivered("pacs")  # known up
    item = _enqueue(outbox, "a")
    _fail(outbox, item)
    clock.advance(1)
    assert monitor.tick() == []  # it answers the probe, but it was never down: backoff stands
    assert outbox.due() == []


def test_a_failed_delivery_asks_for_a_probe_at_once(outbox: Outbox, clock: FakeClock) -> None:
    pacs = FakeDestination()
    monitor = _monitor(outbox, pacs, clock)
    _fail(outbox, _enqueue(outbox, "a"))
    monitor.tick()
    assert pacs.probes == 1
    monitor.failed("pacs", DeliveryError(True, "pacs: cannot connect"))
    assert monitor.wanted.is_set()
    monitor.tick()  # at once, not after probe_interval_s
    assert pacs.probes == 2


def test_gauges_and_health_reasons(outbox: Outbox, clock: FakeClock) -> None:
    pacs = FakeDestination()
    monitor = _monitor(outbox, pacs, clock)
    assert monitor.problems() == []
    first = _enqueue(outbox, "a")
    _enqueue(outbox, "b")
    _fail(outbox, _enqueue(outbox, "c"), retryable=False)
    clock.advance(400)
    _fail(outbox, first)  # in backoff: probed
    monitor.tick()
    metrics = monitor.metrics
    assert _gauge(metrics, "statlane_outbox_backlog", destination="pacs") == 2.0
    assert _gauge(metrics, "statlane_outbox_oldest_pending_seconds", destination="pacs") == 400.0
    assert _gauge(metrics, "statlane_outbox_dead_letters", destination="pacs") == 1.0
    reasons = monitor.problems(backlog_alert_s=300)
    assert reasons == [
        "destination pacs is down: pacs: cannot connect",
        "destination pacs has 2 item(s) waiting, the oldest for 400 s (over 300 s)",
        "destination pacs has 1 dead letter(s) (statlane outbox retry --dead)",
    ]
    assert monitor.problems(backlog_alert_s=3600) == [reasons[0], reasons[2]]


# ---- metrics -----------------------------------------------------------------------------------


def test_queue_depth_of_an_emptied_class_reads_zero() -> None:
    metrics = Metrics()
    publish_queue_depth(metrics, {"stat": 5, "routine": 1})
    assert _gauge(metrics, "statlane_queue_depth", priority="stat") == 5.0
    publish_queue_depth(metrics, {})  # the engine is empty
    for priority in PriorityClass:
        assert _gauge(metrics, "statlane_queue_depth", priority=priority.value) == 0.0


def test_deadline_misses_are_counted_by_class_and_model() -> None:
    [spec] = [m for m in METRICS if m.name == "statlane_deadline_misses_total"]
    assert spec.labels == ("priority", "model")


# ---- a PACS down for 10 minutes (scaled: 1 s real = 100 s) ------------------------------------

SCALE = 100.0
VERIFICATION = "1.2.840.10008.1.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


class ScaledClock:
    """Real time, running ``SCALE`` times faster from ``T0``."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def __call__(self) -> datetime:
        return T0 + timedelta(seconds=(time.monotonic() - self.start) * SCALE)


class Pacs:
    """A pynetdicom storage SCP (with Verification) that can go down and come back."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.received: list[str] = []
        self.server: Any = None

    def _store(self, event: Any) -> int:
        self.received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    def start(self) -> None:
        ae = AE(ae_title="PACS")
        ae.add_supported_context(VERIFICATION, ImplicitVRLittleEndian)
        ae.add_supported_context(CT_IMAGE, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None


@pytest.fixture
def pacs() -> Iterator[Pacs]:
    peer = Pacs(free_port())
    try:
        yield peer
    finally:
        peer.stop()


def _wait(condition: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_a_pacs_down_for_ten_minutes_gets_everything_seconds_after_it_returns(
    tmp_path: Path, pacs: Pacs
) -> None:
    files = generate_study("ct-head", tmp_path / "ct", seed=5, slices=32, matrix=32).files[:4]
    utc = ScaledClock()
    store = JobStore(f"sqlite:///{tmp_path / 'statlane.db'}", clock=utc)
    outbox = Outbox(store, RetryPolicy(), clock=utc)  # the defaults: 2 s doubling up to 300 s
    config = DicomDestinationConfig(
        type="dicom", ae_title="PACS", host="127.0.0.1", port=pacs.port, timeout_s=2.0
    )
    workers = DeliveryWorkers(
        outbox, {"pacs": config}, metrics=Metrics(), gate=StatGate(), probe_interval_s=0.05
    )
    for k, path in enumerate(files):
        outbox.enqueue("t1", "pacs", "sc", str(path), dedupe_key=f"k{k}")
    workers.start()
    try:
        assert _wait(lambda: workers.monitor.state("pacs").up is False, 5.0)
        # Down for at least 10 minutes, and until every item waits over 150 s for its next
        # attempt (within the next 300 s: each is in the capped backoff by then).
        outage_ends = T0 + timedelta(minutes=10)
        while True:
            assert not outbox.items(OutboxState.DEAD)
            waiting = outbox.items(OutboxState.PENDING)
            next_by_backoff = min((i.next_attempt_at for i in waiting), default=utc())
            gap = next_by_backoff - utc()
            if len(waiting) == len(files) and utc() >= outage_ends and gap > timedelta(seconds=150):
                break  # none is being sent, and backoff alone would wait 150 s or more
            workers.wake()  # idle workers wait in real seconds: keep them on the scaled clock
            time.sleep(0.01)
        assert len(waiting) == len(files)
        assert min(i.attempts for i in waiting) >= 8  # the old limit would have killed them
        pacs.start()
        returned = time.monotonic()

        def all_delivered() -> bool:
            workers.wake()
            return len(outbox.items(OutboxState.DELIVERED)) == len(files)

        assert _wait(all_delivered, 10.0)
        assert time.monotonic() - returned < 1.5
        delivered = outbox.items(OutboxState.DELIVERED)
        assert max(i.delivered_at for i in delivered if i.delivered_at) < next_by_backoff
        assert len(set(pacs.received)) == len(files)
        assert not outbox.items(OutboxState.DEAD)
        assert workers.monitor.state("pacs").up is True
    finally:
        workers.stop()


def test_the_spool_says_when_its_disk_is_low(tmp_path: Path) -> None:
    mib = 2**20
    free = {"bytes": 2048 * mib}
    spool = Spool(tmp_path / "spool", min_free_bytes=512 * mib, free_bytes=lambda _: free["bytes"])
    assert spool.low_disk() is None
    free["bytes"] = 520 * mib
    assert spool.low_disk() == (
        "spool disk low: 520 MiB free, 512 MiB reserved; large instances are refused"
    )
