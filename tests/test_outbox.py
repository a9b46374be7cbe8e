"""The outbox: exact backoff, dead letters, operator retry, exclusive claims, and its CLI."""

from __future__ import annotations

import argparse
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypedDict

import pytest

from router.vocabulary import DeliveryKind, PriorityClass
from serving.commands import outbox as outbox_command
from serving.delivery.outbox import Outbox, RetryPolicy
from serving.jobstore import EntityKind, JobStore, OutboxState, TransitionError, UnknownEntityError

T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'statlane.db'}"


@pytest.fixture
def store(db_url: str, clock: FakeClock) -> JobStore:
    return JobStore(db_url, clock=clock)


@pytest.fixture
def outbox(store: JobStore) -> Outbox:
    return Outbox(store, RetryPolicy(max_attempts=4))


def enqueue(
    outbox: Outbox, key: str, priority: PriorityClass = PriorityClass.ROUTINE, kind: str = "sr"
) -> int:
    item = outbox.enqueue(
        "task-1", "pacs", kind, f"/results/{key}.dcm", dedupe_key=key, priority=priority
    )
    return item.id


def test_backoff_delays_are_exact_and_capped() -> None:
    policy = RetryPolicy()
    assert [policy.delay_after(n) for n in range(1, 11)] == [
        2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 300.0, 300.0,
    ]  # fmt: skip
    assert policy.delay_after(100_000) == 300.0
    slow = RetryPolicy(base_delay_s=5.0, factor=3.0, max_delay_s=100.0)
    assert [slow.delay_after(n) for n in range(1, 5)] == [5.0, 15.0, 45.0, 100.0]
    with pytest.raises(ValueError, match="start at 1"):
        policy.delay_after(0)


class _PolicyFields(TypedDict, total=False):
    """RetryPolicy fields a test overrides."""

    base_delay_s: float
    factor: float
    max_delay_s: float
    max_attempts: int


@pytest.mark.parametrize(
    "kwargs",
    [{"base_delay_s": 0.0}, {"factor": 0.5}, {"max_delay_s": 1.0}, {"max_attempts": 0}],
)
def test_a_nonsensical_policy_is_refused(kwargs: _PolicyFields) -> None:
    with pytest.raises(ValueError, match="retry policy needs"):
        RetryPolicy(**kwargs)


def test_enqueue_is_idempotent_and_keeps_the_payload_type(outbox: Outbox) -> None:
    first = outbox.enqueue("task-1", "ris", "hl7", payload="MSH|^~\\&|STATLANE", dedupe_key="oru")
    again = outbox.enqueue("task-1", "ris", "hl7", payload="different", dedupe_key="oru")
    assert again == first
    assert first.payload == "MSH|^~\\&|STATLANE"
    raw = outbox.enqueue("task-1", "hook", DeliveryKind.WEBHOOK, payload=b"\x00{}", dedupe_key="w")
    assert raw.payload == b"\x00{}"
    assert (first.state, first.attempts, first.next_attempt_at) == (OutboxState.PENDING, 0, T0)
    assert len(outbox.items()) == 2


def test_an_outbox_clock_stamps_its_items(store: JobStore) -> None:
    own = FakeClock(T0 + timedelta(hours=1))
    item = Outbox(store, clock=own).enqueue("task-1", "pacs", "seg", "/x", dedupe_key="k")
    assert (item.created_at, item.next_attempt_at) == (own.now, own.now)
    assert store.transitions(str(item.id))[0].at == own.now


def test_enqueue_refuses_unknown_kinds_and_empty_items(outbox: Outbox) -> None:
    with pytest.raises(ValueError, match="delivery kind 'pdf'"):
        outbox.enqueue("task-1", "pacs", "pdf", "/x.pdf", dedupe_key="k")
    with pytest.raises(ValueError, match="needs a payload_path or a payload"):
        outbox.enqueue("task-1", "pacs", "sr", dedupe_key="k")


def test_failures_back_off_then_the_item_dies(outbox: Outbox, clock: FakeClock) -> None:
    item_id = enqueue(outbox, "sr-1")
    for attempt, delay in [(1, 2.0), (2, 4.0), (3, 8.0)]:
        assert outbox.claim(item_id)
        failed = outbox.failed(item_id, "PACS refused association")
        assert (failed.state, failed.attempts) == (OutboxState.PENDING, attempt)
        assert failed.next_attempt_at == clock.now + timedelta(seconds=delay)
        assert failed.last_error == "PACS refused association"
        clock.advance(delay - 0.001)
        assert outbox.due() == []
        clock.advance(0.001)
        assert [i.id for i in outbox.due()] == [item_id]
    assert outbox.claim(item_id)
    dead = outbox.failed(item_id, "PACS refused association")
    assert (dead.state, dead.attempts) == (OutboxState.DEAD, 4)
    clock.advance(3600)
    assert outbox.due() == []
    steps = [(t.from_state, t.to_state) for t in outbox.store.transitions(str(item_id))]
    assert steps == [(None, "pending")] + [("pending", "sending"), ("sending", "pending")] * 3 + [
        ("pending", "sending"),
        ("sending", "dead"),
    ]


def test_a_permanent_failure_is_dead_at_once(outbox: Outbox) -> None:
    item_id = enqueue(outbox, "sr-1")
    outbox.claim(item_id)
    dead = outbox.failed(item_id, "0xA900 dataset does not match SOP class", retryable=False)
    assert (dead.state, dead.attempts) == (OutboxState.DEAD, 1)


def test_retry_revives_dead_items(outbox: Outbox, clock: FakeClock) -> None:
    ids = [enqueue(outbox, f"sr-{n}") for n in range(3)]
    for item_id in ids[:2]:
        outbox.claim(item_id)
        outbox.failed(item_id, "rejected", retryable=False)
    with pytest.raises(TransitionError, match=f"outbox {ids[2]}: cannot go from pending"):
        outbox.retry(ids[2])
    with pytest.raises(ValueError, match="not both"):
        outbox.retry(ids[0], all_dead=True)
    revived_at = clock.advance(60)
    (one,) = outbox.retry(ids[0])
    assert (one.state, one.attempts, one.next_attempt_at) == (OutboxState.PENDING, 0, revived_at)
    assert [i.id for i in outbox.retry(all_dead=True)] == [ids[1]]
    assert outbox.items(OutboxState.DEAD) == []
    assert [i.id for i in outbox.due()] == [ids[2], ids[0], ids[1]]  # by next attempt


def test_claim_is_exclusive_across_threads(outbox: Outbox) -> None:
    ids = [enqueue(outbox, f"sr-{n}") for n in range(10)]
    threads = 4
    wins: dict[int, list[bool]] = {item_id: [] for item_id in ids}
    start = threading.Barrier(threads)
    lock = threading.Lock()

    def worker() -> None:
        start.wait()
        for item_id in ids:
            won = outbox.claim(item_id)
            with lock:
                wins[item_id].append(won)

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for one in workers:
        one.start()
    for one in workers:
        one.join()
    assert all(sorted(results) == [False] * (threads - 1) + [True] for results in wins.values())
    assert len(outbox.items(OutboxState.SENDING)) == len(ids)


def test_due_puts_stat_first_then_the_oldest(outbox: Outbox, clock: FakeClock) -> None:
    routine_old = enqueue(outbox, "routine-old")
    clock.advance(1)
    urgent = enqueue(outbox, "urgent", PriorityClass.URGENT)
    clock.advance(1)
    stat_new = enqueue(outbox, "stat-new", PriorityClass.STAT)
    routine_new = enqueue(outbox, "routine-new")
    assert [i.id for i in outbox.due()] == [stat_new, urgent, routine_old, routine_new]
    assert [i.id for i in outbox.due(limit=2)] == [stat_new, urgent]
    assert [i.id for i in outbox.due(now=T0)] == [routine_old]
    assert outbox.due()[0].priority == PriorityClass.STAT


def test_restart_returns_interrupted_sends_to_pending(outbox: Outbox) -> None:
    sending, waiting = enqueue(outbox, "a"), enqueue(outbox, "b")
    outbox.claim(sending)
    assert outbox.reset_sending() == [sending]
    assert {i.id for i in outbox.items(OutboxState.PENDING)} == {sending, waiting}
    assert outbox.store.transitions(str(sending), EntityKind.OUTBOX)[-1].detail == {
        "reason": "interrupted"
    }


def test_delivery_needs_a_claim(outbox: Outbox, clock: FakeClock) -> None:
    item_id = enqueue(outbox, "a")
    with pytest.raises(TransitionError, match="cannot go from pending to delivered"):
        outbox.delivered(item_id)
    outbox.claim(item_id)
    done = outbox.delivered(item_id)
    assert (done.state, done.delivered_at) == (OutboxState.DELIVERED, T0)
    assert outbox.claim(item_id) is False
    with pytest.raises(UnknownEntityError, match="outbox 999 is not in the job store"):
        outbox.claim(999)


# ---- statlane outbox ------------------------------------------------------------------------


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="statlane")
    outbox_command.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    status: int = args.func(args)
    return status


def test_cli_lists_and_retries(
    outbox: Outbox, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    alive, dead = enqueue(outbox, "a", kind="gsps"), enqueue(outbox, "b")
    outbox.claim(alive)
    outbox.failed(alive, "timeout after 30 s")
    outbox.claim(dead)
    outbox.failed(dead, "0xA900 " + "x" * 100, retryable=False)
    outbox.store.close()

    assert cli("outbox", "list", "--db", db_url) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:5] == ["id", "destination", "kind", "state", "tries"]
    assert lines[1].split()[:7] == [
        str(alive), "pacs", "gsps", "pending", "1", "2024-05-01T08:00:02", "timeout",
    ]  # fmt: skip
    assert lines[2].split()[:6] == [str(dead), "pacs", "sr", "dead", "1", "-"]
    assert lines[2].endswith("...")
    assert len(lines) == 3

    assert cli("outbox", "list", "--state", "dead", "--db", db_url) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2

    assert cli("outbox", "retry", str(alive), "--db", db_url) == 1
    assert f"outbox {alive}: cannot go from pending to pending" in capsys.readouterr().err
    assert cli("outbox", "retry", "--dead", "--db", db_url) == 0
    assert capsys.readouterr().out.strip() == f"1 item(s) moved back to pending: {dead}"
    assert cli("outbox", "retry", "--db", db_url) == 2


def test_cli_finds_the_store_from_the_environment(
    tmp_path: Path,
    db_url: str,
    store: JobStore,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("STATLANE_DB", db_url)
    assert cli("outbox", "list") == 0
    assert "(no items)" in capsys.readouterr().out
    missing = tmp_path / "nowhere" / "statlane.db"
    assert cli("outbox", "list", "--db", f"sqlite:///{missing}") == 1
    assert f"no job store at {missing}" in capsys.readouterr().err
    assert not missing.parent.exists()


def test_due_can_be_limited_to_one_class(outbox: Outbox) -> None:
    routine = enqueue(outbox, "r")
    stat = enqueue(outbox, "s", PriorityClass.STAT)
    urgent = enqueue(outbox, "u", PriorityClass.URGENT)
    assert [i.id for i in outbox.due()] == [stat, urgent, routine]
    assert [i.id for i in outbox.due(priority=PriorityClass.STAT)] == [stat]
    assert [i.id for i in outbox.due(priority=PriorityClass.ROUTINE)] == [routine]


def test_next_due_at_is_the_earliest_pending_item_of_the_class(
    outbox: Outbox, clock: FakeClock
) -> None:
    assert outbox.next_due_at() is None
    routine = enqueue(outbox, "a")
    clock.advance(10)
    stat = enqueue(outbox, "b", PriorityClass.STAT)
    assert outbox.next_due_at() == T0
    assert outbox.next_due_at(PriorityClass.STAT) == T0 + timedelta(seconds=10)
    assert outbox.claim(routine)
    outbox.failed(routine, "PACS down")  # pending again, due after the first backoff (2 s)
    assert outbox.next_due_at(PriorityClass.ROUTINE) == clock.now + timedelta(seconds=2)
    assert outbox.next_due_at() == T0 + timedelta(seconds=10)  # the stat item, due earlier
    assert outbox.claim(stat)
    outbox.delivered(stat)
    assert outbox.next_due_at(PriorityClass.STAT) is None
    assert outbox.next_due_at() == clock.now + timedelta(seconds=2)


def test_an_idle_delivery_worker_sleeps_until_the_next_item_is_due(
    outbox: Outbox, clock: FakeClock
) -> None:
    from serving.delivery.workers import IDLE_DELIVERY_POLL_S, MIN_DELIVERY_WAIT_S, DeliveryWorkers
    from serving.metrics import Metrics
    from serving.service.stat_gate import StatGate

    workers = DeliveryWorkers(outbox, {}, metrics=Metrics(), gate=StatGate())

    def wait_s() -> float:
        return workers.idle_wait_s(None)

    assert wait_s() == IDLE_DELIVERY_POLL_S  # nothing pending: poll for other processes' retries
    item = enqueue(outbox, "a")
    assert wait_s() == MIN_DELIVERY_WAIT_S  # due now (another worker has it): no spinning
    assert outbox.claim(item)
    outbox.failed(item, "PACS down")  # due in 2 s
    assert wait_s() == IDLE_DELIVERY_POLL_S
    clock.advance(1.7)
    assert wait_s() == pytest.approx(0.3)
