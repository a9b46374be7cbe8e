"""The delivery workers: threads that take due outbox items and hand them to their destinations.

``DeliveryWorkers`` builds the configured destinations, runs ``workers`` threads that send any
due item (stat first) plus one that sends stat items only (a stat SR never waits for a routine
object already on its way to a slow destination), and closes the destinations on ``stop``. A
worker that found nothing sleeps until the earliest pending item comes due, or until ``wake``
(new items were queued). One more thread runs the ``DestinationMonitor`` (``probes.py``): it
probes destinations with a backlog in backoff and re-drives them when they answer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext

from router.vocabulary import PriorityClass
from serving.delivery.base import DeliveryError, Destination, Urgency, close_destination
from serving.delivery.config import DestinationConfig, build_destination
from serving.delivery.outbox import Outbox, OutboxItem
from serving.delivery.payloads import payload_of
from serving.delivery.probes import DEFAULT_PROBE_INTERVAL_S, DestinationMonitor
from serving.metrics import Metrics

log = logging.getLogger(__name__)

IDLE_DELIVERY_POLL_S = 1.0
"""Longest sleep of an idle delivery worker (seconds): the pickup time of items revived in the
job store by another process (``statlane outbox retry``)."""
MIN_DELIVERY_WAIT_S = 0.05
"""Shortest sleep of a delivery worker that found nothing to send (seconds)."""
_JOIN_S = 10.0


class DeliveryWorkers:
    """The outbox's senders and the destinations they send to.

    Args:
        outbox: Where the items wait.
        destinations: Configured destinations by name (the outbox items' ``destination``).
        metrics: Service metrics (deliveries, failures, delivery seconds).
        gate: Stat priority: a stat item is sent as a stat stage, any other steps aside first.
        mono: Monotonic clock, seconds (delivery time).
        workers: Threads that send any due item; one more sends stat items only.
        probe_interval_s: Seconds between two health probes of a destination with a backlog.
    """

    def __init__(
        self,
        outbox: Outbox,
        destinations: Mapping[str, DestinationConfig],
        *,
        metrics: Metrics,
        gate: Urgency,
        mono: Callable[[], float] = time.monotonic,
        workers: int = 2,
        probe_interval_s: float = DEFAULT_PROBE_INTERVAL_S,
    ) -> None:
        self.outbox = outbox
        self.metrics = metrics
        self.gate = gate
        self.mono = mono
        self.workers = workers
        self.destinations: dict[str, Destination] = {
            name: build_destination(config, name) for name, config in destinations.items()
        }
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self.monitor = DestinationMonitor(
            outbox,
            self.destinations,
            metrics=metrics,
            mono=mono,
            probe_interval_s=probe_interval_s,
            on_redrive=self.wake,
        )

    def start(self) -> None:
        """Start the workers (``workers`` threads, plus the stat-only one)."""
        self._stopping.clear()
        self._threads = [
            threading.Thread(target=self._loop, name=f"delivery-{i}", daemon=True)
            for i in range(self.workers)
        ]
        self._threads.append(
            threading.Thread(
                target=self._loop,
                kwargs={"priority": PriorityClass.STAT},
                name="delivery-stat",
                daemon=True,
            )
        )
        self._threads.append(
            threading.Thread(target=self._probe_loop, name="delivery-probe", daemon=True)
        )
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop the workers (each finishes the item in hand) and close the destinations."""
        self._stopping.set()
        self._wake.set()
        self.monitor.wanted.set()
        for thread in self._threads:
            thread.join(timeout=_JOIN_S)
        self._threads = []
        for destination in self.destinations.values():
            close_destination(destination)

    def wake(self) -> None:
        """New items were queued: idle workers look at the outbox now."""
        self._wake.set()

    def deliver_due(self, limit: int = 10, priority: PriorityClass | None = None) -> int:
        """Send what is due now (of one class only, if given); returns how many were attempted."""
        attempted = 0
        for item in self.outbox.due(limit=limit, priority=priority):
            if not self.outbox.claim(item.id):
                continue
            attempted += 1
            self._send(item)
        return attempted

    def _loop(self, priority: PriorityClass | None = None) -> None:
        while not self._stopping.is_set():
            try:
                sent = self.deliver_due(priority=priority)
            except Exception:  # a worker never dies: the next round retries
                log.exception("delivery worker failed")
                sent = 0
            if not sent:  # woken at once by new items; otherwise sleeps until one comes due
                self._wake.wait(self.idle_wait_s(priority))
                self._wake.clear()

    def _probe_loop(self) -> None:
        """Run the monitor every ``probe_interval_s``, or at once after a failed delivery."""
        while not self._stopping.is_set():
            try:
                self.monitor.tick()
            except Exception:  # the monitor never dies: the job store may be busy, next round
                log.exception("destination monitor failed")
            self.monitor.wanted.wait(self.monitor.probe_interval_s)
            self.monitor.wanted.clear()

    def idle_wait_s(self, priority: PriorityClass | None) -> float:
        """How long an idle worker sleeps (seconds) unless woken by new items.

        Until the earliest pending item comes due (a retry's backoff), at most
        ``IDLE_DELIVERY_POLL_S`` (items revived by ``statlane outbox retry`` in another process
        wake no one), and at least ``MIN_DELIVERY_WAIT_S`` (an item due now but claimed by
        another worker must not make this one spin).
        """
        try:
            due = self.outbox.next_due_at(priority=priority)
        except Exception:  # the job store is unreachable for now: poll again later
            log.exception("delivery worker: reading the outbox failed")
            return IDLE_DELIVERY_POLL_S
        if due is None:
            return IDLE_DELIVERY_POLL_S
        until_due_s = (due - self.outbox.now()).total_seconds()
        return min(max(until_due_s, MIN_DELIVERY_WAIT_S), IDLE_DELIVERY_POLL_S)

    def _send(self, item: OutboxItem) -> None:
        destination = self.destinations.get(item.destination)
        if destination is None:
            self.outbox.failed(item.id, f"unknown destination {item.destination}", retryable=False)
            return
        stat = item.priority is PriorityClass.STAT
        if not stat:
            self.gate.step_aside()
        started = self.mono()
        try:
            with self.gate.stat_stage() if stat else nullcontext():
                destination.deliver(payload_of(item))
        except DeliveryError as error:
            updated = self.outbox.failed(item.id, str(error), retryable=error.retryable)
            self.metrics.inc("statlane_delivery_failures_total", destination=item.destination)
            self.monitor.failed(item.destination, error)
            log.warning(
                "delivery to %s failed (attempt %d, %s): %s",
                item.destination,
                updated.attempts,
                updated.state.value,
                error,
            )
            return
        except Exception as error:  # a destination's bug must not lose the item: retry it
            self.outbox.failed(item.id, f"{type(error).__name__}", retryable=True)
            log.exception("delivery to %s raised", item.destination)
            return
        self.outbox.delivered(item.id)
        self.monitor.delivered(item.destination)
        self.metrics.inc(
            "statlane_deliveries_total", destination=item.destination, kind=str(item.kind)
        )
        self.metrics.observe(
            "statlane_delivery_seconds", self.mono() - started, destination=item.destination
        )
