"""Destination health: probes that re-drive a backlog as soon as its destination answers again.

While a destination has items waiting in backoff (or was last seen down), ``DestinationMonitor``
probes it every ``probe_interval_s`` (DICOM C-ECHO, HTTP ``OPTIONS``, an MLLP TCP connect, a
writable folder: each destination's ``probe``). When a destination that was down (or not yet
probed) answers, its items in backoff are made due now (``Outbox.redrive``) and the workers
woken, so delivery resumes within seconds of its return rather than after a backoff of up to
``max_delay_s``. A destination that answers its probe but keeps failing deliveries (a PACS out
of space) is not re-driven again and again: only a change from down to up re-drives.

The monitor also keeps the delivery gauges (backlog, oldest pending age, dead letters, up) and
gives ``/health`` its reasons to say ``degraded``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from serving.delivery.base import DeliveryError, Destination, Probeable
from serving.delivery.outbox import DestinationBacklog, Outbox
from serving.metrics import Metrics

log = logging.getLogger(__name__)

DEFAULT_PROBE_INTERVAL_S = 5.0
"""Seconds between two probes of a destination with a backlog in backoff."""
DEFAULT_BACKLOG_ALERT_S = 300.0
"""A pending item older than this (seconds) makes ``/health`` say ``degraded``."""


@dataclass(frozen=True)
class DestinationState:
    """What the monitor knows about one destination.

    Attributes:
        up: True after a successful probe or delivery, False after a failed probe, None
            before either.
        reason: Why it is down (one line, no patient data); empty otherwise.
        changed_at_s: Monotonic time (seconds) of the last change of ``up``, or None.
    """

    up: bool | None = None
    reason: str = ""
    changed_at_s: float | None = None


class DestinationMonitor:
    """Probes destinations with a backlog and re-drives them when they answer.

    Args:
        outbox: The outbox (backlog per destination, ``redrive``).
        destinations: The destinations by name (those without ``probe`` are never probed).
        metrics: The service metrics (the delivery gauges).
        mono: Monotonic clock, seconds.
        probe_interval_s: Seconds between two probes of one destination.
        on_redrive: Called after items were made due now (wakes the delivery workers).
    """

    def __init__(
        self,
        outbox: Outbox,
        destinations: Mapping[str, Destination],
        *,
        metrics: Metrics,
        mono: Callable[[], float] = time.monotonic,
        probe_interval_s: float = DEFAULT_PROBE_INTERVAL_S,
        on_redrive: Callable[[], None] = lambda: None,
    ) -> None:
        if probe_interval_s <= 0:
            raise ValueError(f"probe_interval_s must be positive, got {probe_interval_s}")
        self.outbox = outbox
        self.destinations = dict(destinations)
        self.metrics = metrics
        self.mono = mono
        self.probe_interval_s = float(probe_interval_s)
        self.on_redrive = on_redrive
        self._lock = threading.Lock()
        self._states: dict[str, DestinationState] = {n: DestinationState() for n in destinations}
        self._last_probe_s: dict[str, float] = {}
        self.wanted = threading.Event()
        """Set when a delivery failed: the probe thread should look now."""

    def state(self, name: str) -> DestinationState:
        """What is known about destination ``name``."""
        with self._lock:
            return self._states.get(name, DestinationState())

    def states(self) -> dict[str, DestinationState]:
        """What is known about every destination, by name."""
        with self._lock:
            return dict(self._states)

    def delivered(self, name: str) -> None:
        """A delivery to ``name`` succeeded: it is up (and its backlog re-driven if it was not)."""
        if self._set(name, True, ""):
            self._redrive(name)

    def failed(self, name: str, error: DeliveryError) -> None:
        """A delivery to ``name`` failed: probe it at the next tick (a transient failure)."""
        if error.retryable:
            with self._lock:
                self._last_probe_s.pop(name, None)
            self.wanted.set()

    def tick(self) -> list[str]:
        """Probe what is due, re-drive what came back, update the gauges; the names re-driven.

        A destination is probed when its last probe is ``probe_interval_s`` old (or it has none
        since a failed delivery) and it has pending items in backoff or was last seen down.
        """
        backlog = self.outbox.backlog()
        now_s = self.mono()
        redriven: list[str] = []
        for name, destination in self.destinations.items():
            waiting = backlog.get(name, DestinationBacklog())
            with self._lock:
                down = self._states.get(name, DestinationState()).up is False
                last_s = self._last_probe_s.get(name)
            if not (waiting.backing_off or down) or not isinstance(destination, Probeable):
                continue
            if last_s is not None and now_s - last_s < self.probe_interval_s:
                continue
            with self._lock:
                self._last_probe_s[name] = now_s
            if self._probe(name, destination) and waiting.backing_off:
                self._redrive(name)
                redriven.append(name)
        self._update_gauges(backlog)
        return redriven

    def _probe(self, name: str, destination: Probeable) -> bool:
        """Probe once; True when ``name`` came back (it was not known up before)."""
        try:
            destination.probe()
        except DeliveryError as error:
            if self._set(name, False, error.message):
                log.warning("destination %s is down: %s", name, error.message)
            return False
        except Exception as error:  # a probe's bug must not stop the monitor: counts as down
            self._set(name, False, f"probe raised {type(error).__name__}")
            log.exception("probing destination %s raised", name)
            return False
        came_back = self._set(name, True, "")
        if came_back:
            log.info("destination %s answers", name)
        return came_back

    def _set(self, name: str, up: bool, reason: str) -> bool:
        """Record the state; True when ``up`` is new (it was another value or unknown)."""
        with self._lock:
            before = self._states.get(name, DestinationState())
            changed = before.up is not up
            self._states[name] = DestinationState(
                up, reason, self.mono() if changed else before.changed_at_s
            )
        self.metrics.set("statlane_destination_up", 1.0 if up else 0.0, destination=name)
        return changed

    def _redrive(self, name: str) -> None:
        if self.outbox.redrive(name):
            self.on_redrive()

    def _update_gauges(self, backlog: Mapping[str, DestinationBacklog]) -> None:
        for name in sorted(set(self.destinations) | set(backlog)):
            waiting = backlog.get(name, DestinationBacklog())
            self.metrics.set("statlane_outbox_backlog", waiting.pending, destination=name)
            self.metrics.set(
                "statlane_outbox_oldest_pending_seconds",
                waiting.oldest_pending_s,
                destination=name,
            )
            self.metrics.set("statlane_outbox_dead_letters", waiting.dead, destination=name)
            if name in self.destinations and self.state(name).up is not False:
                self.metrics.set("statlane_destination_up", 1.0, destination=name)

    def problems(self, backlog_alert_s: float = DEFAULT_BACKLOG_ALERT_S) -> list[str]:
        """Why delivery is degraded, one line each (empty when it is not): a destination down,
        a backlog older than ``backlog_alert_s`` seconds, dead letters waiting for an operator.
        """
        backlog = self.outbox.backlog()
        states = self.states()
        reasons: list[str] = []
        for name in sorted(set(self.destinations) | set(backlog)):
            state = states.get(name, DestinationState())
            waiting = backlog.get(name, DestinationBacklog())
            if state.up is False:
                reasons.append(f"destination {name} is down: {state.reason}")
            if waiting.pending and waiting.oldest_pending_s > backlog_alert_s:
                reasons.append(
                    f"destination {name} has {waiting.pending} item(s) waiting, the oldest for "
                    f"{waiting.oldest_pending_s:.0f} s (over {backlog_alert_s:.0f} s)"
                )
            if waiting.dead:
                reasons.append(
                    f"destination {name} has {waiting.dead} dead letter(s) "
                    "(statlane outbox retry --dead)"
                )
        return reasons
