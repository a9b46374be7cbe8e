"""Worklist signals: what changed between two published orders, and the JSON sent for each.

A change is a study that moved, appeared, left, or whose red flag or AI label changed. The
payload carries the study and accession (the worklist system needs them to find its row) and
never a patient name or ID.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from router.worklist.ranking import Label, Row

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
