"""Worklist ranking: how AI results change the order, and what happens when AI is late or down."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from router.result import Mode
from router.vocabulary import DeliveryKind
from router.worklist import (
    AIStatus,
    Label,
    UnknownStudyError,
    Worklist,
    WorklistEntry,
    WorklistError,
    rank_changes,
    signal_payload,
    worklist_json,
)
from serving.delivery.base import DeliveryError, Payload
from serving.delivery.publisher import WorklistPublisher

T0 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
BLEED = 15  # the 15th arrival: a non-stat CT head with a bleed
STATS = (4, 9)  # arrivals with a stat order


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def uid(n: int) -> str:
    return f"1.2.826.0.1.3680043.10.1001.{n}"


def entry(n: int, *, stat: bool = False, mode: Mode = Mode.TRIAGE) -> WorklistEntry:
    """The ``n``-th arrival (1-based), one per minute from T0."""
    return WorklistEntry(
        study_uid=uid(n),
        accession=f"ACC{n:04d}",
        arrived_at=T0 + timedelta(minutes=n - 1),
        order_stat=stat,
        mode=mode,
    )


def twenty_studies(
    *, stats: tuple[int, ...] = (), bleed_mode: Mode = Mode.TRIAGE, **worklist_args: float
) -> tuple[Worklist, FakeClock]:
    """20 studies, one a minute; the clock stands one minute after the last arrival."""
    clock = FakeClock(T0 + timedelta(minutes=20))
    worklist = Worklist(clock=clock, **worklist_args)
    for n in range(1, 21):
        worklist.add(entry(n, stat=n in stats, mode=bleed_mode if n == BLEED else Mode.TRIAGE))
    return worklist, clock


def finish_ai(worklist: Worklist) -> None:
    """Every study's AI is done; only the 15th is critical positive."""
    for n in range(1, 21):
        critical = n == BLEED
        summary = "intracranial hemorrhage, 4.2 ml" if critical else "no critical finding"
        worklist.update_ai(uid(n), AIStatus.DONE, critical_positive=critical, summary=summary)


def ranks(rows: list) -> dict[str, int]:
    return {row.study_uid: row.rank for row in rows}


def test_triage_puts_the_bleed_first_with_a_red_flag() -> None:
    worklist, _ = twenty_studies()
    before = worklist.published_order(Mode.TRIAGE)
    assert ranks(before)[uid(BLEED)] == BLEED
    finish_ai(worklist)
    rows = worklist.published_order(Mode.TRIAGE)
    top = rows[0]
    assert (top.rank, top.study_uid, top.accession) == (1, uid(BLEED), "ACC0015")
    assert top.red_flag
    assert top.label is Label.CRITICAL
    assert top.reason == "AI critical finding"
    assert [r.red_flag for r in rows[1:]] == [False] * 19
    assert {r.label for r in rows[1:]} == {Label.NO_CRITICAL}
    # everyone else keeps arrival order, each one place lower if it came before the bleed
    others = [r.study_uid for r in rows[1:]]
    assert others == [uid(n) for n in range(1, 21) if n != BLEED]


def test_shadow_mode_publishes_the_native_order_and_no_red_flag() -> None:
    worklist, _ = twenty_studies()
    finish_ai(worklist)
    published = worklist.published_order(Mode.SHADOW)
    assert published == worklist.native_order()
    bleed = published[BLEED - 1]
    assert (bleed.rank, bleed.study_uid) == (BLEED, uid(BLEED))
    assert not any(r.red_flag for r in published)
    assert {r.label for r in published} == {Label.NONE}
    # computed but not published: the order a shadow pilot logs
    assert worklist.ai_order(include_shadow=True)[0].study_uid == uid(BLEED)


def test_a_shadow_task_never_flags_in_a_triage_worklist() -> None:
    worklist, _ = twenty_studies(bleed_mode=Mode.SHADOW)
    finish_ai(worklist)
    rows = worklist.published_order(Mode.TRIAGE)
    bleed = rows[BLEED - 1]
    assert (bleed.study_uid, bleed.red_flag, bleed.label) == (uid(BLEED), False, Label.NONE)
    assert not any(r.red_flag for r in rows)
    assert worklist.ai_order(include_shadow=True)[0].study_uid == uid(BLEED)


def test_backend_down_keeps_native_order_and_says_so() -> None:
    worklist, _ = twenty_studies(stats=STATS)
    for n in range(1, 21):
        worklist.update_ai(uid(n), AIStatus.UNAVAILABLE)
    published = worklist.published_order(Mode.TRIAGE)
    native = worklist.native_order()
    assert [r.study_uid for r in published] == [r.study_uid for r in native]
    assert [r.study_uid for r in native[:2]] == [uid(4), uid(9)]  # stat first, then arrival
    assert {r.label for r in published} == {Label.UNAVAILABLE}
    assert not any(r.red_flag for r in published)


def test_late_ai_keeps_native_position_and_is_marked_pending() -> None:
    worklist, clock = twenty_studies(stats=STATS, ai_late_s=420.0)
    finish_ai(worklist)
    worklist.update_ai(uid(BLEED), AIStatus.PENDING)  # the bleed's AI has not answered yet
    rows = worklist.published_order(Mode.TRIAGE)
    assert ranks(rows) == ranks(worklist.native_order())
    bleed = rows[ranks(rows)[uid(BLEED)] - 1]
    assert (bleed.label, bleed.red_flag, bleed.ai_late) == (Label.PENDING, False, False)
    clock.advance(2 * 60)  # the bleed arrived 6 min ago; now 8 min pending > 7 min
    late = {r.study_uid: r for r in worklist.published_order(Mode.TRIAGE)}[uid(BLEED)]
    assert (late.label, late.ai_late, late.rank) == (Label.PENDING, True, bleed.rank)


def test_max_wait_cap_promotes_an_old_routine_study_ahead_of_newer_stats() -> None:
    clock = FakeClock(T0)
    worklist = Worklist(max_wait_s=600.0, clock=clock)
    worklist.add(entry(1))  # routine, arrives at T0
    for n in (5, 12):  # stat, arrive 4 and 11 minutes later
        worklist.add(entry(n, stat=True))
    clock.advance(9 * 60)  # the routine one has waited 9 min < 10 min
    assert [r.study_uid for r in worklist.ai_order()] == [uid(5), uid(12), uid(1)]
    clock.advance(2 * 60)  # 11 min > 10 min: promoted, and older than both stats
    rows = worklist.ai_order()
    assert [r.study_uid for r in rows] == [uid(1), uid(5), uid(12)]
    assert rows[0].reason.startswith("max wait exceeded (660 s > 600 s)")
    # the cap never outranks a red flag
    worklist.update_ai(uid(12), AIStatus.DONE, critical_positive=True)
    assert [r.study_uid for r in worklist.ai_order()] == [uid(12), uid(1), uid(5)]
    # and the native order does not know about the cap
    assert [r.study_uid for r in worklist.native_order()] == [uid(5), uid(12), uid(1)]


def test_two_critical_positives_rank_by_stat_then_arrival() -> None:
    worklist, _ = twenty_studies(stats=(18,))
    for n in (3, 18, 11):
        worklist.update_ai(uid(n), AIStatus.DONE, critical_positive=True)
    top = [r.study_uid for r in worklist.ai_order()[:3]]
    assert top == [uid(18), uid(3), uid(11)]


def test_worklist_json_holds_native_and_published_rows() -> None:
    worklist, clock = twenty_studies()
    finish_ai(worklist)
    document = json.loads(json.dumps(worklist_json(worklist, "triage")))
    assert document["mode"] == "triage"
    assert document["generated_at"] == clock.now.isoformat()
    assert document["native"][BLEED - 1]["study_instance_uid"] == uid(BLEED)
    top = document["published"][0]
    assert top == {
        "rank": 1,
        "study_instance_uid": uid(BLEED),
        "accession_number": "ACC0015",
        "red_flag": True,
        "label": "AI: critical finding",
        "reason": "AI critical finding",
        "ai_late": False,
    }
    shadow = worklist_json(worklist, Mode.SHADOW)
    assert shadow["published"] == shadow["native"]


def test_rank_changes_report_moves_arrivals_and_departures() -> None:
    worklist, _ = twenty_studies()
    before = worklist.published_order(Mode.TRIAGE)
    finish_ai(worklist)
    worklist.remove(uid(20))
    after = worklist.published_order(Mode.TRIAGE)
    changes = {c.study_uid: c for c in rank_changes(before, after)}
    assert (changes[uid(BLEED)].old_rank, changes[uid(BLEED)].new_rank) == (15, 1)
    assert changes[uid(BLEED)].red_flag
    assert (changes[uid(14)].old_rank, changes[uid(14)].new_rank) == (14, 15)
    assert (changes[uid(20)].old_rank, changes[uid(20)].new_rank) == (20, None)
    assert changes[uid(1)].label is Label.NO_CRITICAL  # label changed, rank did not
    assert rank_changes(after, after) == []


class RecordingDestination:
    name = "recording"

    def __init__(self, fail_for: str = "") -> None:
        self.bodies: list[dict] = []
        self.fail_for = fail_for

    def deliver(self, payload: Payload) -> None:
        assert payload.kind is DeliveryKind.WORKLIST
        assert isinstance(payload.body, dict)
        if payload.body["study_instance_uid"] == self.fail_for:
            raise DeliveryError(True, "webhook down")
        self.bodies.append(payload.body)


def test_publisher_signals_the_bleed_jump_and_retries_failures() -> None:
    worklist, clock = twenty_studies()
    destination = RecordingDestination()
    publisher = WorklistPublisher(worklist, destination, Mode.TRIAGE)
    assert len(publisher.publish().delivered) == 20  # every study is new
    destination.bodies.clear()
    destination.fail_for = uid(BLEED)
    worklist.update_ai(uid(BLEED), AIStatus.DONE, critical_positive=True, summary="bleed")
    report = publisher.publish()
    assert [c.study_uid for c, _ in report.failed] == [uid(BLEED)]
    assert len(report.delivered) == 14  # studies 1..14 moved down one place
    destination.fail_for = ""
    report = publisher.publish()
    assert [c.study_uid for c in report.delivered] == [uid(BLEED)]
    assert destination.bodies[-1] == signal_payload(report.delivered[0], clock.now)
    assert destination.bodies[-1] == {
        "type": "statlane.worklist.rank",
        "at": clock.now.isoformat(),
        "study_instance_uid": uid(BLEED),
        "accession_number": "ACC0015",
        "old_rank": 15,
        "new_rank": 1,
        "red_flag": True,
        "label": "AI: critical finding",
    }
    assert publisher.publish().delivered == []


def test_shadow_publisher_sends_nothing_when_ai_finds_a_bleed() -> None:
    worklist, _ = twenty_studies()
    destination = RecordingDestination()
    publisher = WorklistPublisher(worklist, destination, Mode.SHADOW)
    publisher.publish()
    finish_ai(worklist)
    assert publisher.publish().delivered == []


def test_errors_name_the_study() -> None:
    worklist, _ = twenty_studies()
    with pytest.raises(WorklistError, match=r"already on the worklist"):
        worklist.add(entry(3))
    with pytest.raises(UnknownStudyError, match=r"1\.2\.3 is not on the worklist"):
        worklist.update_ai("1.2.3", AIStatus.DONE)
    with pytest.raises(WorklistError, match="critical_positive needs ai_status 'done'"):
        worklist.update_ai(uid(1), AIStatus.PENDING, critical_positive=True)
    with pytest.raises(WorklistError, match="timezone-aware"):
        WorklistEntry(uid(99), "A", datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="'finished' is not a valid AIStatus"):
        worklist.update_ai(uid(1), "finished")
