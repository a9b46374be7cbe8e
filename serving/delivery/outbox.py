"""The delivery outbox: every result object and message goes out through here, with retries.

An item is written (``pending``) in the job store before anyone tries to send it. A worker
takes the items that are ``due``, ``claim``s one (pending → sending, atomic, so two workers never
send the same item), and reports ``delivered`` or ``failed``. A transient failure (the peer is
down, timed out, out of resources) schedules the next attempt after an exponential backoff,
capped at ``max_delay_s``, for as long as the item is younger than the policy's
``retry_window_s`` (24 h by default). Only a permanent failure (the peer refused the content)
or an expired window makes the item ``dead``, until an operator runs ``statlane outbox retry``.
``redrive`` makes a destination's items in backoff due now (its health probe answered again:
``serving/delivery/probes.py``). On restart, ``reset_sending`` returns the items of workers that
died mid-send to ``pending``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from router.vocabulary import DeliveryKind, PriorityClass
from serving.jobstore.changes import Clock, StateChanges, get_entity, utc_now
from serving.jobstore.schema import OutboxEntry
from serving.jobstore.states import EntityKind, OutboxState
from serving.jobstore.store import JobStore

logger = logging.getLogger(__name__)
_BY_RANK = {p.rank: p for p in PriorityClass}


DEFAULT_RETRY_WINDOW_S = 86400.0
"""How long transient failures are retried by default, seconds from enqueueing (24 h)."""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff between delivery attempts, within a retry window.

    Attributes:
        base_delay_s: Wait after the first failure, seconds.
        factor: Each further failure multiplies the wait by this.
        max_delay_s: The wait never exceeds this, seconds.
        retry_window_s: Transient failures are retried while the item is younger than this
            (seconds since it was enqueued); a failure after that makes it dead.
        max_attempts: Deprecated: when set, the item is also dead after this many failed
            attempts (the behaviour before ``retry_window_s``); None (default) sets no limit.
    """

    base_delay_s: float = 2.0
    factor: float = 2.0
    max_delay_s: float = 300.0
    retry_window_s: float = DEFAULT_RETRY_WINDOW_S
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        if self.base_delay_s <= 0 or self.factor < 1 or self.max_delay_s < self.base_delay_s:
            raise ValueError(
                "retry policy needs base_delay_s > 0, factor >= 1 and max_delay_s >= base_delay_s"
            )
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError(f"retry policy needs max_attempts >= 1, got {self.max_attempts}")
        if self.retry_window_s <= 0:
            raise ValueError(f"retry policy needs retry_window_s > 0, got {self.retry_window_s}")

    def gives_up(self, attempts: int, age_s: float) -> bool:
        """Whether a transient failure ends the retries: the item's ``age_s`` (seconds since it
        was enqueued) is past the window, or ``attempts`` reached the deprecated limit."""
        if age_s >= self.retry_window_s:
            return True
        return self.max_attempts is not None and attempts >= self.max_attempts

    def delay_after(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based), capped."""
        if attempt < 1:
            raise ValueError(f"attempt numbers start at 1, got {attempt}")
        try:
            delay = self.base_delay_s * self.factor ** (attempt - 1)
        except OverflowError:
            return self.max_delay_s
        return min(delay, self.max_delay_s)


@dataclass(frozen=True)
class DestinationBacklog:
    """What waits for one destination.

    Attributes:
        pending: Items not delivered yet (pending or being sent).
        oldest_pending_s: Age of the oldest of them, seconds since enqueued (0 when none).
        backing_off: Whether some pending item waits for a retry later than now.
        dead: Dead letters.
    """

    pending: int = 0
    oldest_pending_s: float = 0.0
    backing_off: bool = False
    dead: int = 0


@dataclass(frozen=True)
class OutboxItem:
    """One delivery.

    Attributes:
        id: Outbox item id.
        task_id: The task whose result this is.
        destination: Configured destination name.
        kind: What it carries.
        payload_path: File to send (DICOM objects), or None.
        payload: Inline content, ``str`` or ``bytes`` as enqueued, or None.
        dedupe_key: Unique per logical delivery; enqueueing it again returns this item.
        priority: Priority class of the result (stat goes first).
        state: Where it is.
        attempts: Failed attempts since it was enqueued or last revived.
        next_attempt_at: When it is next due (UTC).
        last_error: The last failure, one line.
        created_at: When it was enqueued (UTC).
        delivered_at: When the destination took it (UTC), or None.
    """

    id: int
    task_id: str
    destination: str
    kind: DeliveryKind
    payload_path: str | None
    payload: bytes | str | None
    dedupe_key: str
    priority: PriorityClass
    state: OutboxState
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None


class Outbox:
    """The delivery queue in the job store.

    Args:
        store: The job store that holds the items.
        policy: Backoff and dead-letter policy.
        clock: Timezone-aware clock; the store's when omitted.
    """

    def __init__(
        self, store: JobStore, policy: RetryPolicy | None = None, clock: Clock | None = None
    ) -> None:
        self.store = store
        self.policy = policy or RetryPolicy()
        self._clock = clock

    def now(self) -> datetime:
        """The current time (UTC) from the injected clock."""
        return utc_now(self._clock) if self._clock is not None else self.store.now()

    def enqueue(
        self,
        task_id: str,
        destination: str,
        kind: DeliveryKind | str,
        payload_path: str | None = None,
        payload: bytes | str | None = None,
        *,
        dedupe_key: str,
        priority: PriorityClass = PriorityClass.ROUTINE,
    ) -> OutboxItem:
        """A pending item due now, or the existing item with the same ``dedupe_key``.

        ``payload_path`` names a file to send (DICOM objects); ``payload`` is inline content
        (HL7, FHIR, JSON), returned later as the same type. At least one is required.
        """
        try:
            kind = DeliveryKind(kind)
        except ValueError:
            known = ", ".join(k.value for k in DeliveryKind)
            raise ValueError(f"delivery kind {kind!r} is not one of {known}") from None
        if payload_path is None and payload is None:
            raise ValueError(f"outbox item {dedupe_key!r} needs a payload_path or a payload")
        if not dedupe_key:
            raise ValueError("outbox items need a non-empty dedupe_key")
        data = payload.encode("utf-8") if isinstance(payload, str) else payload

        def work(changes: StateChanges) -> OutboxItem:
            query = select(OutboxEntry).where(OutboxEntry.dedupe_key == dedupe_key)
            existing = changes.session.scalars(query).first()
            if existing is not None:
                return _item(existing)
            entry = OutboxEntry(
                task_id=task_id,
                destination=destination,
                kind=str(kind),
                payload_path=payload_path,
                payload=data,
                payload_is_text=isinstance(payload, str),
                dedupe_key=dedupe_key,
                priority=PriorityClass(priority).rank,
                state=OutboxState.PENDING,
                attempts=0,
                next_attempt_at=changes.at,
                created_at=changes.at,
            )
            changes.session.add(entry)
            changes.session.flush()  # assigns the id
            detail = {"destination": destination, "kind": str(kind), "task_id": task_id}
            changes.record(EntityKind.OUTBOX, entry.id, None, OutboxState.PENDING, detail)
            return _item(entry)

        return self.store.write_retrying(work, self.now())

    def due(
        self,
        now: datetime | None = None,
        limit: int = 100,
        priority: PriorityClass | None = None,
    ) -> list[OutboxItem]:
        """Pending items whose next attempt is at or before ``now``: stat first, then oldest due.

        ``priority``: only items of that class (a worker reserved for stat deliveries).
        """
        at = now if now is not None else self.now()
        query = select(OutboxEntry).where(
            OutboxEntry.state == OutboxState.PENDING, OutboxEntry.next_attempt_at <= at
        )
        if priority is not None:
            query = query.where(OutboxEntry.priority == priority.rank)
        query = query.order_by(
            OutboxEntry.priority, OutboxEntry.next_attempt_at, OutboxEntry.id
        ).limit(limit)
        with self.store.reading() as session:
            return [_item(e) for e in session.scalars(query)]

    def next_due_at(self, priority: PriorityClass | None = None) -> datetime | None:
        """When the earliest pending item (of one class, if given) is due; None if none is."""
        query = select(func.min(OutboxEntry.next_attempt_at)).where(
            OutboxEntry.state == OutboxState.PENDING
        )
        if priority is not None:
            query = query.where(OutboxEntry.priority == priority.rank)
        with self.store.reading() as session:
            due = session.scalar(query)
        if due is None:
            return None
        return due if due.tzinfo is not None else due.replace(tzinfo=UTC)

    def claim(self, item_id: int) -> bool:
        """Pending → sending; True for exactly one caller, False if it was not pending."""
        with self.store.writing(self.now()) as changes:
            get_entity(changes.session, OutboxEntry, EntityKind.OUTBOX, item_id)
            return changes.move(
                OutboxEntry, EntityKind.OUTBOX, item_id, (OutboxState.PENDING, OutboxState.SENDING)
            )

    def delivered(self, item_id: int) -> OutboxItem:
        """Sending → delivered; ``TransitionError`` if the item was not claimed."""
        with self.store.writing(self.now()) as changes:
            change = (OutboxState.SENDING, OutboxState.DELIVERED)
            changes.require(
                OutboxEntry, EntityKind.OUTBOX, item_id, change, delivered_at=changes.at
            )
            return _item(get_entity(changes.session, OutboxEntry, EntityKind.OUTBOX, item_id))

    def failed(self, item_id: int, error: str, *, retryable: bool = True) -> OutboxItem:
        """Sending → pending after the policy's delay, or → dead when the retry window is over.

        ``retryable=False`` (the destination rejected the content) makes the item dead at once.
        A retry is never scheduled past the window's end: the last one is at its end, and a
        failure then makes the item dead. ``error`` is one line naming the destination and
        status, never patient data.
        """
        with self.store.writing(self.now()) as changes:
            entry = get_entity(changes.session, OutboxEntry, EntityKind.OUTBOX, item_id)
            attempts = entry.attempts + 1
            age_s = (changes.at - _aware(entry.created_at)).total_seconds()
            dead = not retryable or self.policy.gives_up(attempts, age_s)
            delay_s = None
            if not dead:
                left_s = self.policy.retry_window_s - age_s
                delay_s = min(self.policy.delay_after(attempts), left_s)
            changes.require(
                OutboxEntry,
                EntityKind.OUTBOX,
                item_id,
                (OutboxState.SENDING, OutboxState.DEAD if dead else OutboxState.PENDING),
                {"attempt": attempts, "error": error, "retry_in_s": delay_s},
                attempts=attempts,
                next_attempt_at=changes.at + timedelta(seconds=delay_s or 0.0),
                last_error=error,
            )
            if dead:
                logger.warning(
                    "outbox item %d to %s is dead after %d attempt(s): %s",
                    item_id,
                    entry.destination,
                    attempts,
                    error,
                )
            return _item(get_entity(changes.session, OutboxEntry, EntityKind.OUTBOX, item_id))

    def retry(self, item_id: int | None = None, *, all_dead: bool = False) -> list[OutboxItem]:
        """Dead → pending, due now, attempts reset: one item, or every dead item.

        The retry window still counts from enqueueing: an item past it gets one attempt, and
        a transient failure makes it dead again.

        Raises ``TransitionError`` if the one item named is not dead.
        """
        if (item_id is None) != all_dead:
            raise ValueError("retry takes an item id or all_dead=True, not both")
        with self.store.writing(self.now()) as changes:
            ids = [item_id] if item_id is not None else self._ids(changes, OutboxState.DEAD)
            for one in ids:
                changes.require(
                    OutboxEntry,
                    EntityKind.OUTBOX,
                    one,
                    (OutboxState.DEAD, OutboxState.PENDING),
                    {"reason": "retried by operator"},
                    attempts=0,
                    next_attempt_at=changes.at,
                )
            session = changes.session
            return [_item(get_entity(session, OutboxEntry, EntityKind.OUTBOX, i)) for i in ids]

    def redrive(self, destination: str) -> list[int]:
        """Make ``destination``'s pending items in backoff due now (it answers again).

        Attempts and the retry window are unchanged. Returns the item ids.
        """
        with self.store.writing(self.now()) as changes:
            query = select(OutboxEntry).where(
                OutboxEntry.state == OutboxState.PENDING,
                OutboxEntry.destination == destination,
                OutboxEntry.next_attempt_at > changes.at,
            )
            entries = list(changes.session.scalars(query.order_by(OutboxEntry.id)))
            for entry in entries:
                entry.next_attempt_at = changes.at
            ids = [e.id for e in entries]
        if ids:
            logger.info("outbox: %d item(s) to %s due now (it answers)", len(ids), destination)
        return ids

    def backlog(self, now: datetime | None = None) -> dict[str, DestinationBacklog]:
        """Per destination with any pending, sending or dead item: what waits and since when."""
        at = now if now is not None else self.now()
        query = select(
            OutboxEntry.destination,
            OutboxEntry.state,
            func.count(),
            func.min(OutboxEntry.created_at),
            func.max(OutboxEntry.next_attempt_at),
        ).where(OutboxEntry.state.in_((OutboxState.PENDING, OutboxState.SENDING, OutboxState.DEAD)))
        query = query.group_by(OutboxEntry.destination, OutboxEntry.state)
        found: dict[str, DestinationBacklog] = {}
        with self.store.reading() as session:
            rows = list(session.execute(query))
        for name, state, count, oldest, latest_due in rows:
            now_b = found.get(name, DestinationBacklog())
            if state == OutboxState.DEAD:
                found[name] = replace(now_b, dead=now_b.dead + int(count))
                continue
            age_s = max((at - _aware(oldest)).total_seconds(), 0.0)
            backing_off = state == OutboxState.PENDING and _aware(latest_due) > at
            found[name] = replace(
                now_b,
                pending=now_b.pending + int(count),
                oldest_pending_s=max(now_b.oldest_pending_s, age_s),
                backing_off=now_b.backing_off or backing_off,
            )
        return found

    def reset_sending(self) -> list[int]:
        """Sending → pending (on restart: the sender is gone); returns the item ids."""
        with self.store.writing(self.now()) as changes:
            change = (OutboxState.SENDING, OutboxState.PENDING)
            detail = {"reason": "interrupted"}
            return [
                one
                for one in self._ids(changes, OutboxState.SENDING)
                if changes.move(OutboxEntry, EntityKind.OUTBOX, one, change, detail)
            ]

    def item(self, item_id: int) -> OutboxItem | None:
        """One item, or None."""
        with self.store.reading() as session:
            entry = session.get(OutboxEntry, item_id)
            return None if entry is None else _item(entry)

    def items(self, state: OutboxState | None = None) -> list[OutboxItem]:
        """Items (in ``state`` if given), in the order they were enqueued."""
        query = select(OutboxEntry).order_by(OutboxEntry.id)
        if state is not None:
            query = query.where(OutboxEntry.state == state)
        with self.store.reading() as session:
            return [_item(e) for e in session.scalars(query)]

    @staticmethod
    def _ids(changes: StateChanges, state: OutboxState) -> list[int]:
        query = select(OutboxEntry.id).where(OutboxEntry.state == state)
        return list(changes.session.scalars(query.order_by(OutboxEntry.id)))


def _aware(at: datetime) -> datetime:
    """``at`` as timezone-aware UTC (SQLite hands back naive datetimes in some queries)."""
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _item(entry: OutboxEntry) -> OutboxItem:
    payload: bytes | str | None = entry.payload
    if entry.payload is not None and entry.payload_is_text:
        payload = entry.payload.decode("utf-8")
    return OutboxItem(
        id=entry.id,
        task_id=entry.task_id,
        destination=entry.destination,
        kind=DeliveryKind(entry.kind),
        payload_path=entry.payload_path,
        payload=payload,
        dedupe_key=entry.dedupe_key,
        priority=_BY_RANK[entry.priority],
        state=entry.state,
        attempts=entry.attempts,
        next_attempt_at=entry.next_attempt_at,
        last_error=entry.last_error,
        created_at=entry.created_at,
        delivered_at=entry.delivered_at,
    )
