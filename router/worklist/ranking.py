"""Worklist ranking: the native order, the AI order with red flags, and the one that is published.

Pure logic with an injected clock (``Callable[[], datetime]``, timezone-aware): no threads, no
I/O. Two orders are kept side by side so turnaround can be compared before and after AI:

- **native order**: stat orders first, then arrival. This is the worklist the site had without
  statlane; it never shows anything the AI said.
- **AI order**: visible critical positives first (red flag), then stat-level entries, then the
  rest, each group by arrival. Stat-level means a stat order *or* an entry that has waited longer
  than ``max_wait_s`` (the maximum-wait cap, so red flags never starve routine work). Entries
  whose AI is pending, late or unavailable are not moved by the AI: they keep the position the
  native ordering (plus the cap) gives them, and their label says why.

Which order is published depends on the deployment mode: shadow publishes the native order (the
AI order is still computed for the pilot report), triage and assistant publish the AI order.
An entry whose own AI task runs in shadow mode never gets a red flag or an AI label in the
published order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from router.result import Mode


class AIStatus(StrEnum):
    """Where a study's AI result stands."""

    PENDING = "pending"
    DONE = "done"
    UNAVAILABLE = "unavailable"  # backend down, deadline missed and given up, or task failed
    # No rule asked for inference on this study; or, with a summary (the reason), the series
    # is outside the model's declared domain and no inference ran.
    NOT_APPLICABLE = "not-applicable"
    UNRELIABLE = "unreliable"  # the model ran, but its output is too extreme to be believed


class Label(StrEnum):
    """What a worklist row says about the AI."""

    CRITICAL = "AI: critical finding"
    PENDING = "AI pending"
    UNAVAILABLE = "AI unavailable"
    NO_CRITICAL = "AI: no critical finding"
    NOT_APPLICABLE = "AI not applicable"  # the series is outside the model's domain
    UNRELIABLE = "AI result unreliable"  # never a red flag
    NONE = ""  # no AI shown: native order, no AI task, or a shadow-mode task


class WorklistError(ValueError):
    """A worklist operation that cannot be applied (one line, names the study by UID)."""


class UnknownStudyError(WorklistError, LookupError):
    """The study is not on the worklist."""


def utc_now() -> datetime:
    """The wall clock, timezone-aware (the default clock; tests inject their own)."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class WorklistEntry:
    """One study waiting to be read.

    Attributes:
        study_uid: Study Instance UID.
        accession: Accession number (shown on the worklist, never logged).
        arrived_at: When the study arrived (timezone-aware).
        order_stat: The order or study priority is stat (native flag, independent of AI).
        ai_status: Where the AI result stands.
        critical_positive: The AI found a critical finding (only meaningful when ``done``).
        summary: Findings summary text, no PHI (e.g. ``"intracranial hemorrhage, 4.2 ml"``);
            for ``not-applicable`` and ``unreliable``, why (e.g. ``"slices 1, model needs
            30..2000"``), shown as the row's ``note``.
        mode: Mode of the AI task; a shadow task's result never reaches the published order.
    """

    study_uid: str
    accession: str
    arrived_at: datetime
    order_stat: bool = False
    ai_status: AIStatus = AIStatus.PENDING
    critical_positive: bool = False
    summary: str = ""
    mode: Mode = Mode.TRIAGE

    def __post_init__(self) -> None:
        if not self.study_uid:
            raise WorklistError("worklist entry needs a Study Instance UID")
        if self.arrived_at.tzinfo is None:
            raise WorklistError(f"study {self.study_uid}: arrived_at must be timezone-aware")
        object.__setattr__(self, "ai_status", AIStatus(self.ai_status))
        object.__setattr__(self, "mode", Mode(self.mode))
        if self.critical_positive and self.ai_status is not AIStatus.DONE:
            raise WorklistError(
                f"study {self.study_uid}: critical_positive needs ai_status 'done', "
                f"not {self.ai_status.value!r}"
            )


@dataclass(frozen=True)
class Row:
    """One line of a published worklist.

    Attributes:
        rank: 1-based position.
        study_uid: Study Instance UID.
        accession: Accession number.
        red_flag: Shown with a red flag (visible AI critical finding).
        label: What the row says about the AI.
        reason: Why the row is at this position, one short phrase.
        ai_late: The AI result is pending longer than the worklist's ``ai_late_s``.
        note: Why the AI is not applicable or unreliable (no PHI); empty otherwise.
    """

    rank: int
    study_uid: str
    accession: str
    red_flag: bool
    label: Label
    reason: str
    ai_late: bool = False
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``ai_note`` only when there is a note)."""
        data: dict[str, Any] = {
            "rank": self.rank,
            "study_instance_uid": self.study_uid,
            "accession_number": self.accession,
            "red_flag": self.red_flag,
            "label": self.label.value,
            "reason": self.reason,
            "ai_late": self.ai_late,
        }
        if self.note:
            data["ai_note"] = self.note
        return data


class Worklist:
    """The studies waiting to be read, ranked natively and with AI.

    Args:
        max_wait_s: Maximum wait, seconds; an entry waiting longer is promoted to stat level
            in the AI order so nothing starves.
        ai_late_s: After this many seconds pending (counted from arrival) the AI is late: the
            row says so and the study keeps its native position.
        clock: Returns the current time, timezone-aware.
    """

    def __init__(
        self,
        max_wait_s: float = 3600.0,
        ai_late_s: float = 300.0,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        if max_wait_s <= 0 or ai_late_s <= 0:
            raise WorklistError(
                f"max_wait_s and ai_late_s must be positive, got {max_wait_s} and {ai_late_s}"
            )
        self.max_wait_s = float(max_wait_s)
        self.ai_late_s = float(ai_late_s)
        self.clock = clock
        self._entries: dict[str, WorklistEntry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def entries(self) -> tuple[WorklistEntry, ...]:
        """Every entry, in insertion order."""
        return tuple(self._entries.values())

    def entry(self, study_uid: str) -> WorklistEntry | None:
        """The study's entry, or None when it is not on the worklist."""
        return self._entries.get(study_uid)

    def add(self, entry: WorklistEntry) -> None:
        """Put a study on the worklist; raises ``WorklistError`` if it is already there."""
        if entry.study_uid in self._entries:
            raise WorklistError(f"study {entry.study_uid} is already on the worklist")
        self._entries[entry.study_uid] = entry

    def remove(self, study_uid: str) -> WorklistEntry:
        """Take a study off the worklist (it was read); raises ``UnknownStudyError``."""
        try:
            return self._entries.pop(study_uid)
        except KeyError:
            raise UnknownStudyError(f"study {study_uid} is not on the worklist") from None

    def update_ai(
        self,
        study_uid: str,
        status: AIStatus | str,
        critical_positive: bool = False,
        summary: str = "",
    ) -> WorklistEntry:
        """Record the AI outcome of a study and return the updated entry.

        Raises ``UnknownStudyError`` for a study not on the worklist and ``WorklistError`` when
        ``critical_positive`` is set without a ``done`` status.
        """
        entry = self._entries.get(study_uid)
        if entry is None:
            raise UnknownStudyError(f"study {study_uid} is not on the worklist")
        updated = replace(
            entry,
            ai_status=AIStatus(status),
            critical_positive=critical_positive,
            summary=summary,
        )
        self._entries[study_uid] = updated
        return updated

    def native_order(self) -> list[Row]:
        """Stat orders first, then arrival; no AI label, no red flag."""
        ordered = sorted(self._entries.values(), key=_native_key)
        return [
            Row(
                rank=i,
                study_uid=e.study_uid,
                accession=e.accession,
                red_flag=False,
                label=Label.NONE,
                reason="stat order" if e.order_stat else "routine, arrival order",
            )
            for i, e in enumerate(ordered, start=1)
        ]

    def ai_order(self, now: datetime | None = None, *, include_shadow: bool = False) -> list[Row]:
        """Visible critical positives, then stat level (stat or past ``max_wait_s``), then arrival.

        Args:
            now: The time to rank at; the injected clock when None.
            include_shadow: Let shadow-mode tasks' results count (the unpublished order a
                shadow pilot logs); never use it for a published order.
        """
        now = self.clock() if now is None else now
        placed = [self._place(e, now, include_shadow) for e in self._entries.values()]
        placed.sort(key=lambda p: p.key)
        return [
            Row(
                rank=i,
                study_uid=p.entry.study_uid,
                accession=p.entry.accession,
                red_flag=p.red_flag,
                label=p.label,
                reason=p.reason,
                ai_late=p.ai_late,
                note=p.entry.summary if p.label in _NOTED else "",
            )
            for i, p in enumerate(placed, start=1)
        ]

    def published_order(self, mode: Mode | str, now: datetime | None = None) -> list[Row]:
        """The order the clinical worklist shows: native in shadow mode, the AI order otherwise."""
        if Mode(mode) is Mode.SHADOW:
            return self.native_order()
        return self.ai_order(now)

    def _place(self, entry: WorklistEntry, now: datetime, include_shadow: bool) -> _Placed:
        visible = include_shadow or entry.mode is not Mode.SHADOW
        waited_s = (now - entry.arrived_at).total_seconds()
        promoted = not entry.order_stat and waited_s > self.max_wait_s
        red_flag = visible and entry.ai_status is AIStatus.DONE and entry.critical_positive
        ai_late = entry.ai_status is AIStatus.PENDING and waited_s > self.ai_late_s
        if red_flag:
            reason = "AI critical finding"
        elif entry.order_stat:
            reason = "stat order"
        elif promoted:
            reason = f"max wait exceeded ({waited_s:.0f} s > {self.max_wait_s:.0f} s)"
        else:
            reason = "routine, arrival order"
        stat_level = entry.order_stat or promoted
        key = (not red_flag, not stat_level, entry.arrived_at, entry.study_uid)
        return _Placed(entry, key, red_flag, _label(entry, visible), reason, visible and ai_late)


@dataclass(frozen=True)
class _Placed:
    entry: WorklistEntry
    key: tuple[bool, bool, datetime, str]
    red_flag: bool
    label: Label
    reason: str
    ai_late: bool


def _native_key(entry: WorklistEntry) -> tuple[bool, datetime, str]:
    return (not entry.order_stat, entry.arrived_at, entry.study_uid)


_NOTED = (Label.NOT_APPLICABLE, Label.UNRELIABLE)


def _label(entry: WorklistEntry, visible: bool) -> Label:
    if not visible:
        return Label.NONE
    if entry.ai_status is AIStatus.DONE:
        return Label.CRITICAL if entry.critical_positive else Label.NO_CRITICAL
    if entry.ai_status is AIStatus.PENDING:
        return Label.PENDING
    if entry.ai_status is AIStatus.UNAVAILABLE:
        return Label.UNAVAILABLE
    if entry.ai_status is AIStatus.UNRELIABLE:
        return Label.UNRELIABLE
    if entry.ai_status is AIStatus.NOT_APPLICABLE and entry.summary:
        return Label.NOT_APPLICABLE  # out of the model's domain (no rule asked: no label)
    return Label.NONE


def rows_json(rows: Iterable[Row]) -> list[dict[str, Any]]:
    """Rows in JSON-ready form."""
    return [row.to_dict() for row in rows]


def worklist_json(
    worklist: Worklist, mode: Mode | str, now: datetime | None = None
) -> dict[str, Any]:
    """What ``GET /worklist`` returns: the native and the published order, with their rows.

    Args:
        worklist: The worklist.
        mode: Deployment mode; shadow publishes the native order.
        now: The time to rank at; the worklist's clock when None.
    """
    now = worklist.clock() if now is None else now
    mode = Mode(mode)
    return {
        "mode": mode.value,
        "generated_at": now.isoformat(),
        "max_wait_s": worklist.max_wait_s,
        "ai_late_s": worklist.ai_late_s,
        "native": rows_json(worklist.native_order()),
        "published": rows_json(worklist.published_order(mode, now)),
    }
