"""Worklist signals: what changed between two published orders, sent to a destination (webhook).

A change is a study that moved, appeared, left, or whose red flag or AI label changed. The
payload carries the study and accession (the worklist system needs them to find its row) and
never a patient name or ID.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from router.delivery import DeliveryError, Destination, Payload
from router.result import Mode
from router.worklist.ranking import Label, Row, Worklist

SIGNAL_TYPE = "statlane.worklist.rank"


@dataclass(frozen=True)
class RankChange:
    """One study's change between two published orders.

    Attributes:
        study_uid: Study Instance UID.
        accession: Accession number.
        old_rank: Rank before (None: newly on the worklist).
        new_rank: Rank after (None: left the worklist).
        red_flag: Red flag after the change.
        label: AI label after the change.
    """

    study_uid: str
    accession: str
    old_rank: int | None
    new_rank: int | None
    red_flag: bool
    label: Label


def rank_changes(before: Sequence[Row], after: Sequence[Row]) -> list[RankChange]:
    """The changes from ``before`` to ``after``, in the new order, then the studies that left."""
    previous = {row.study_uid: row for row in before}
    current = {row.study_uid for row in after}
    changes = []
    for row in after:
        old = previous.get(row.study_uid)
        if old is None or (old.rank, old.red_flag, old.label) != (
            row.rank,
            row.red_flag,
            row.label,
        ):
            changes.append(
                RankChange(
                    row.study_uid,
                    row.accession,
                    None if old is None else old.rank,
                    row.rank,
                    row.red_flag,
                    row.label,
                )
            )
    changes += [
        RankChange(row.study_uid, row.accession, row.rank, None, False, Label.NONE)
        for row in before
        if row.study_uid not in current
    ]
    return changes


def signal_payload(change: RankChange, at: datetime) -> dict[str, Any]:
    """The JSON document one change is sent as; ``at`` is when the order was computed."""
    return {
        "type": SIGNAL_TYPE,
        "at": at.isoformat(),
        "study_instance_uid": change.study_uid,
        "accession_number": change.accession,
        "old_rank": change.old_rank,
        "new_rank": change.new_rank,
        "red_flag": change.red_flag,
        "label": change.label.value,
    }


@dataclass
class PublishReport:
    """What one ``publish`` call did."""

    delivered: list[RankChange] = field(default_factory=list)
    failed: list[tuple[RankChange, DeliveryError]] = field(default_factory=list)


class WorklistPublisher:
    """Sends the published order's changes to a destination, one signal per change.

    It remembers the last order it published; a change whose delivery failed is not
    remembered as published, so the next ``publish`` sends it again.

    Args:
        worklist: The worklist.
        destination: Where signals go (usually a webhook ``HttpJsonDestination``).
        mode: Deployment mode; shadow publishes the native order, so AI results never signal.
    """

    def __init__(self, worklist: Worklist, destination: Destination, mode: Mode | str) -> None:
        self.worklist = worklist
        self.destination = destination
        self.mode = Mode(mode)
        self._published: dict[str, Row] = {}

    def publish(self, now: datetime | None = None) -> PublishReport:
        """Compute the published order at ``now`` (the worklist clock when None) and signal it."""
        now = self.worklist.clock() if now is None else now
        after = self.worklist.published_order(self.mode, now)
        report = PublishReport()
        for change in rank_changes(list(self._published.values()), after):
            try:
                self.destination.deliver(Payload("json", body=signal_payload(change, now)))
            except DeliveryError as exc:
                report.failed.append((change, exc))
            else:
                report.delivered.append(change)
        after_by_uid = {row.study_uid: row for row in after}
        for change in report.delivered:
            if change.new_rank is None:
                self._published.pop(change.study_uid, None)
            else:
                self._published[change.study_uid] = after_by_uid[change.study_uid]
        return report
