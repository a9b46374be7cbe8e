"""Worklist rank changes sent straight to one destination (a webhook), one signal per change.

The service queues its signals in the outbox instead (``Service.publish_worklist``); this is for
a caller that holds a worklist and a destination and wants each change delivered now, with the
failed ones sent again on the next ``publish``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from router.result import Mode
from router.vocabulary import DeliveryKind
from router.worklist import RankChange, Row, Worklist, rank_changes, signal_payload
from serving.delivery.base import DeliveryError, Destination, Payload


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
                self.destination.deliver(
                    Payload(DeliveryKind.WORKLIST, body=signal_payload(change, now))
                )
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
