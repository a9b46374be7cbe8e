"""``statlane serve`` in one process: gateways, coordinator loop, runtime, delivery, REST API.

Threads: pynetdicom's association threads, the STOW/REST HTTP server, the MLLP server, the
engine's preprocessing/device/postprocessing threads, one coordinator loop and the delivery
workers. Everything that waits reads the injected clocks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from models.registry import Registry
from router.result import Mode
from router.rules import RuleSet, default_rules, load_rules
from router.vocabulary import PriorityClass
from router.worklist import Row, rank_changes
from serving.config import ServiceConfig
from serving.delivery.outbox import Outbox, RetryPolicy
from serving.delivery.payloads import ResultDelivery, rank_change_item
from serving.delivery.workers import DeliveryWorkers
from serving.gateway.budget import MemoryBudget
from serving.gateway.dimse import AssociationSummary, DicomGateway
from serving.gateway.hl7_orders import OrderReceiver
from serving.gateway.mllp import MllpServer
from serving.gateway.routes import RouteTable
from serving.gateway.spool import Spool
from serving.gateway.stow import StowServer, StowSummary
from serving.jobstore import JobStore
from serving.metrics import Metrics
from serving.service.coordinator import Coordinator
from serving.service.records import rules_digest
from serving.service.rest import REST_ROUTES, RestApi
from serving.service.retention import AllocatorTrim, SpoolRetention
from serving.service.runtime import Runtime, build_runtime
from serving.service.stat_gate import StatGate
from serving.service.streaming import StreamingVolumes
from serving.service.worklist import SharedWorklist

log = logging.getLogger(__name__)


def utc_now() -> datetime:
    """Timezone-aware UTC now."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class Ports:
    """Where the running service listens (the bound ports, also when 0 was configured)."""

    dicom: int
    http: int
    hl7: int | None


class Service:
    """The whole statlane service.

    Args:
        config: The service configuration.
        registry: Model registry (default: the configured folder or the bundled models).
        mono: Monotonic clock, seconds.
        utc: Wall clock (timezone-aware).
        runtime_factory: Builds the runtime (tests inject a failing one for "AI unavailable").
    """

    def __init__(
        self,
        config: ServiceConfig,
        *,
        registry: Registry | None = None,
        mono: Callable[[], float] = time.monotonic,
        utc: Callable[[], datetime] = utc_now,
        runtime_factory: Callable[..., Runtime] = build_runtime,
    ) -> None:
        self.config = config
        self.mono = mono
        self.utc = utc
        var = Path(config.var_dir)
        var.mkdir(parents=True, exist_ok=True)
        self.results_dir = var / "results"
        self.registry = registry or (
            Registry(config.models) if config.models else Registry.default()
        )
        self.rules, rules_text = _rules(config)
        self.metrics = Metrics()
        self.store = JobStore(config.db_url, clock=utc)
        if config.outbox.max_attempts is not None:
            log.warning(
                "outbox.max_attempts is deprecated: items die after %d failed attempts instead "
                "of retrying for outbox.retry_window_s (%.0f s); remove it",
                config.outbox.max_attempts,
                config.outbox.retry_window_s,
            )
        self.outbox = Outbox(
            self.store,
            RetryPolicy(
                base_delay_s=config.outbox.base_delay_s,
                max_delay_s=config.outbox.max_delay_s,
                retry_window_s=config.outbox.retry_window_s,
                max_attempts=config.outbox.max_attempts,
            ),
            clock=utc,
        )
        self.destination_types = {n: d.type for n, d in config.destinations.items()}
        self.worklist = SharedWorklist(
            max_wait_s=config.worklist.max_wait_s, ai_late_s=config.worklist.ai_late_s, clock=utc
        )
        # Background Python work steps aside while a stat study is routed, built, delivered.
        self.gate = StatGate(max_wait_s=config.runtime.stat_gate_max_wait_s, clock=mono)
        self.delivery = DeliveryWorkers(
            self.outbox,
            config.destinations,
            metrics=self.metrics,
            gate=self.gate,
            mono=mono,
            workers=config.outbox.workers,
            probe_interval_s=config.outbox.probe_interval_s,
        )
        self.results = ResultDelivery(
            store=self.store,
            outbox=self.outbox,
            destination_types=self.destination_types,
            results_dir=self.results_dir,
            metrics=self.metrics,
            utc=utc,
            on_enqueued=self.delivery.wake,
            gate=self.gate,
            systems=config.identifiers.systems(),
        )
        self.runtime = self._start_runtime(runtime_factory)
        self.streaming = StreamingVolumes() if self.runtime is not None else None
        self.coordinator = Coordinator(
            store=self.store,
            rules=self.rules,
            rules_hash=rules_digest(rules_text),
            registry=self.registry,
            runtime=self.runtime,
            worklist=self.worklist,
            metrics=self.metrics,
            sink=self.results,
            quiet_period_s=config.assembly.quiet_period_s,
            mono=mono,
            utc=utc,
            late_instances=config.assembly.late_instances,
            idle_timeout_s=config.assembly.idle_timeout_s,
            streaming=self.streaming,
            gate=self.gate,
        )
        self.spool = Spool(var / "spool", min_free_bytes=config.spool.min_free_bytes, clock=utc)
        self.retention = SpoolRetention(
            self.spool,
            self.store,
            self.metrics,
            grace_s=config.spool.retention_grace_s,
            interval_s=config.spool.prune_interval_s,
            mono=mono,
        )
        self.trim = AllocatorTrim(
            enabled=config.memory.trim_allocator,
            interval_s=config.memory.trim_interval_s,
            mono=mono,
        )
        # one budget for what both gateways hold in memory before it is spooled
        self.budget = MemoryBudget(config.memory.inflight_budget_bytes)
        self.dicom = DicomGateway(
            self.spool,
            ae_title=config.dicom.ae_title,
            port=config.dicom.port,
            host=config.dicom.host,
            allowed_callers=config.dicom.allowed_callers,
            on_stored=self.coordinator.instance_stored,
            on_released=self._association_released,
            maximum_associations=config.dicom.maximum_associations,
            association_timeout_s=config.dicom.association_timeout_s,
            idle_timeout_s=config.dicom.idle_timeout_s,
            max_connections_per_address=config.dicom.max_connections_per_address,
            maximum_pdu_bytes=config.dicom.maximum_pdu_bytes,
            fast_path=config.dicom.fast_path,
            budget=self.budget,
        )
        self.rest = RestApi(
            store=self.store,
            outbox=self.outbox,
            worklist=self.worklist,
            metrics=self.metrics,
            worklist_mode=config.worklist.mode,
            inference_up=lambda: self.runtime is not None,
            problems=self._problems,
        )
        routes = RouteTable()
        routes.add(REST_ROUTES, self.rest)
        self.http = StowServer(
            self.spool,
            host=config.http.host,
            port=config.http.port,
            on_stored=self.coordinator.instance_stored,
            on_request_done=self._stow_done,
            routes=routes,
            header_timeout_s=config.http.header_timeout_s,
            idle_timeout_s=config.http.idle_timeout_s,
            budget=self.budget,
            retry_after_s=config.memory.retry_after_s,
        )
        self.hl7: MllpServer | None = None
        if config.hl7.enabled:
            receiver = OrderReceiver(
                self.coordinator.order_received,
                clock=utc,
                mapping=config.hl7.order_mapping.mapping(),
            )
            self.hl7 = MllpServer(
                receiver.handle,
                host=config.hl7.host,
                port=config.hl7.port,
                idle_timeout_s=config.hl7.idle_timeout_s,
                frame_timeout_s=config.hl7.frame_timeout_s,
                clock=utc,
            )
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._published: list[Row] = []
        self._signal_sequence = 0
        unknown = [n for n in config.worklist.signals if n not in config.destinations]
        if unknown:
            raise ValueError(f"worklist.signals names unknown destinations: {', '.join(unknown)}")

    # ---- lifecycle ---------------------------------------------------------------------------

    def _start_runtime(self, factory: Callable[..., Runtime]) -> Runtime | None:
        refs = sorted(
            {self.registry.get(t.model).ident for r in self.rules.rules for t in r.produce}
        )
        try:
            return factory(
                self.registry,
                refs,
                backend=self.config.runtime.backend,
                device=self.config.runtime.device,
                policy=self.config.runtime.policy,
                deadlines_s=self.config.deadlines_s,
                clock=self.mono,
                preprocess_workers=self.config.runtime.preprocess_workers,
                max_pending=self.config.runtime.max_pending,
                triton_url=self.config.runtime.triton_url,
                max_blocking_s=self.config.runtime.max_blocking_s,
                stat_lanes=self.config.runtime.stat_lanes,
                urgency=self.gate,
            )
        except Exception as error:  # noqa: BLE001 - AI down: ingest, worklist and audit keep working
            log.error("inference runtime unavailable (%s): studies get 'AI unavailable'", error)
            self.store.audit("runtime-unavailable", detail={"error": type(error).__name__})
            return None

    def start(self) -> Ports:
        """Recover from the job store and spool, then open every listener and worker."""
        removed = self.spool.discard_partial_writes()
        self.outbox.reset_sending()
        spooled = list(self.spool.iter_instances())
        self.spool.count_stored(spooled)
        resumed = self.coordinator.recover(spooled)
        del spooled
        if removed or any(resumed.values()):
            log.info("recovered: %d partial writes removed, %s", removed, resumed)
        self.store.audit("service-started", detail={"resumed": resumed})
        self._threads = [
            threading.Thread(target=self._loop, name="coordinator", daemon=True),
            threading.Thread(target=self._stat_loop, name="coordinator-stat", daemon=True),
            threading.Thread(
                target=self.coordinator.run_ingest,
                args=(self._stopping,),
                name="ingest",
                daemon=True,
            ),
            threading.Thread(
                target=self.coordinator.run_results,
                args=(self._stopping,),
                name="results",
                daemon=True,
            ),
            threading.Thread(
                target=self.coordinator.run_results,
                args=(self._stopping,),
                kwargs={"stat_only": True},
                name="results-stat",
                daemon=True,
            ),
        ]
        for thread in self._threads:
            thread.start()
        self.delivery.start()
        self.dicom.start()
        self.http.start()
        if self.hl7 is not None:
            self.hl7.start()
        ports = self.ports
        log.info(
            "statlane serving: DICOM %s:%d, HTTP %d, HL7 %s",
            self.config.dicom.ae_title,
            ports.dicom,
            ports.http,
            ports.hl7,
        )
        return ports

    @property
    def ports(self) -> Ports:
        """The bound ports."""
        return Ports(self.dicom.port, self.http.port, self.hl7.port if self.hl7 else None)

    def stop(self) -> None:
        """Close listeners, stop workers and the engine."""
        self.dicom.stop()
        self.http.stop()
        if self.hl7 is not None:
            self.hl7.stop()
        drained = self.mono() + 10.0
        while not self.coordinator.ingest_idle() and self.mono() < drained:
            time.sleep(0.02)  # record what was acknowledged (a crash here is healed on restart)
        self._stopping.set()
        with self.coordinator.lock:
            self.coordinator.lock.notify_all()
        self.coordinator.finished.wake()
        for thread in self._threads:
            thread.join(timeout=10)
        self.delivery.stop()
        if self.runtime is not None:
            self.runtime.stop()
        if self.streaming is not None:
            self.streaming.stop()
        self.store.close()

    def __enter__(self) -> Service:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- loops -------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self.coordinator.tick()
                self.publish_worklist()
                self._update_gauges()
                self.retention.maybe_prune()
                self._trim_when_idle()
            # The loop routes every study: one failing round is logged and the next one runs.
            except Exception:
                log.exception("coordinator tick failed")
            wake = self.coordinator.next_wakeup_s()
            timeout = 0.25 if wake is None else min(max(wake - self.mono(), 0.0), 0.25)
            with self.coordinator.lock:
                if not self._stopping.is_set() and not self.coordinator.has_work():
                    self.coordinator.lock.wait(timeout=timeout)

    def _stat_loop(self) -> None:
        """Routes the studies the rules make stat as soon as they complete, while the general
        loop may be busy routing a large routine study."""
        while not self._stopping.is_set():
            try:
                self.coordinator.tick(stat_only=True)
            # As the general loop: the stat loop must outlive any one failing round.
            except Exception:
                log.exception("stat routing failed")
            wake = self.coordinator.next_wakeup_s(stat_only=True)
            timeout = 0.25 if wake is None else min(max(wake - self.mono(), 0.0), 0.25)
            with self.coordinator.lock:
                if not self._stopping.is_set():
                    self.coordinator.lock.wait(timeout=timeout)

    def deliver_due(self, limit: int = 10, priority: PriorityClass | None = None) -> int:
        """Send what is due now (of one class only, if given); returns how many were attempted."""
        return self.delivery.deliver_due(limit=limit, priority=priority)

    def publish_worklist(self) -> int:
        """Signal every change of the published worklist order; returns how many were queued.

        In shadow mode both orders are computed (``GET /worklist``) but no signal leaves.
        """
        mode = Mode(self.config.worklist.mode)
        if mode is Mode.SHADOW or not self.config.worklist.signals:
            return 0
        rows = self.worklist.published_order(mode)
        changes = rank_changes(self._published, rows)
        self._published = rows
        now = self.utc()
        for change in changes:
            priority = PriorityClass.STAT if change.red_flag else PriorityClass.ROUTINE
            for name in self.config.worklist.signals:
                self._signal_sequence += 1
                destination_type = self.destination_types.get(name, "webhook")
                # An HL7 signal names the RIS's own order numbers: read the order it sent.
                order = (
                    self.store.order_context(change.accession)
                    if destination_type == "mllp"
                    else None
                )
                kind, payload = rank_change_item(
                    destination_type,
                    change,
                    now,
                    self._signal_sequence,
                    order,
                    accession_system=self.config.identifiers.systems().accession_system(),
                )
                self.outbox.enqueue(
                    "worklist",
                    name,
                    kind,
                    payload=payload,
                    dedupe_key=f"worklist:{name}:{now.isoformat()}:{self._signal_sequence}",
                    priority=priority,
                )
        if changes:
            self.delivery.wake()
        return len(changes)

    def _problems(self) -> list[str]:
        """Why the service is degraded (``/health``): destinations, backlog, spool disk."""
        reasons = self.delivery.monitor.problems(self.config.outbox.backlog_alert_s)
        low = self.spool.low_disk()
        return [*reasons, low] if low else reasons

    def _trim_when_idle(self) -> None:
        """Return freed heap to the system once nothing is received, queued or running."""
        busy = (
            self.budget.in_use_bytes > 0
            or not self.coordinator.ingest_idle()
            or self.coordinator.has_work()
            or (self.runtime is not None and self.runtime.engine.pending > 0)
        )
        if busy:
            self.trim.note_busy()
        else:
            self.trim.idle()

    def _update_gauges(self) -> None:
        waits, waited_s = self.gate.totals()  # cumulative: exported as counters
        self.metrics.set("statlane_stat_gate_waits_total", waits)
        self.metrics.set("statlane_stat_gate_wait_seconds_total", waited_s)
        self.metrics.set("statlane_inflight_bytes", self.budget.in_use_bytes)
        self.metrics.set("statlane_inflight_refused_total", self.budget.refused)
        if self.runtime is None:
            return
        publish_queue_depth(self.metrics, self.runtime.engine.scheduler.queued_by_class())
        self.metrics.set("statlane_engine_pending", self.runtime.engine.pending)

    # ---- gateway callbacks -------------------------------------------------------------------

    def _association_released(self, summary: AssociationSummary) -> None:
        self.coordinator.association_ended([i.study_instance_uid for i in summary.instances])

    def _stow_done(self, summary: StowSummary) -> None:
        self.coordinator.association_ended([i.study_instance_uid for i in summary.stored])


def publish_queue_depth(metrics: Metrics, queued: dict[str, int]) -> None:
    """Set ``statlane_queue_depth`` for every priority class from the scheduler's queue (tasks);
    a class with nothing queued reads 0, not the last depth it had."""
    for priority in PriorityClass:
        depth = queued.get(priority.value, 0)
        metrics.set("statlane_queue_depth", depth, priority=priority.value)


def _rules(config: ServiceConfig) -> tuple[RuleSet, str]:
    if config.rules is None:
        from importlib import resources

        text = (resources.files("router.rules") / "default.yaml").read_text(encoding="utf-8")
        return default_rules(), text
    return load_rules(Path(config.rules)), Path(config.rules).read_text(encoding="utf-8")


__all__ = ["Ports", "Service", "publish_queue_depth"]
