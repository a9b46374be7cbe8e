"""Service metrics in the Prometheus text format, from ``prometheus_client`` (``GET /metrics``).

Every metric is declared once in :data:`METRICS` (name, kind, help, label names, buckets); the
call sites name it: ``metrics.inc("statlane_results_total", mode=..., model=...)``. A name not in
the table, a call of the wrong kind or the wrong label names raise at once.

Labels are model idents, priority classes, stages, states and destination names — never patient
data, accession numbers or UIDs (those belong in the audit trail, not in metrics).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_BUCKETS_S",
    "METRICS",
    "Kind",
    "MetricSpec",
    "Metrics",
    "UndeclaredMetric",
]

CONTENT_TYPE = CONTENT_TYPE_LATEST
"""The Content-Type of :meth:`Metrics.render`'s body."""

DEFAULT_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)
"""Histogram bucket upper bounds (seconds); ``+Inf`` is added by prometheus_client."""


class Kind(StrEnum):
    """How a metric is fed, and its Prometheus type."""

    COUNTER = "counter"
    """Only goes up, by :meth:`Metrics.inc`."""
    MIRRORED_COUNTER = "mirrored_counter"
    """A running total kept elsewhere (e.g. the stat gate), copied in by :meth:`Metrics.set`;
    exposed as a Prometheus counter."""
    GAUGE = "gauge"
    """Set to the current value by :meth:`Metrics.set`."""
    HISTOGRAM = "histogram"
    """Observations (seconds) by :meth:`Metrics.observe`, in cumulative buckets."""


@dataclass(frozen=True)
class MetricSpec:
    """One declared metric.

    Attributes:
        name: The exposed name; a counter's ends in ``_total`` (exposed exactly so).
        kind: How it is fed and its Prometheus type.
        help: The ``# HELP`` text.
        labels: Label names every call must give, no more, no fewer.
        buckets_s: Histogram bucket upper bounds (seconds); histograms only.
    """

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    buckets_s: tuple[float, ...] = DEFAULT_BUCKETS_S


METRICS: tuple[MetricSpec, ...] = (
    # ingest
    MetricSpec(
        "statlane_instances_received_total",
        Kind.COUNTER,
        "Instances stored, by modality",
        ("modality",),
    ),
    MetricSpec("statlane_instances_duplicate_total", Kind.COUNTER, "Instances received again"),
    MetricSpec(
        "statlane_orders_received_total", Kind.COUNTER, "HL7 orders, by priority", ("priority",)
    ),
    MetricSpec(
        "statlane_studies_quarantined_total", Kind.COUNTER, "Studies held for identity problems"
    ),
    MetricSpec("statlane_assembly_wait_seconds", Kind.HISTOGRAM, "Last instance to study complete"),
    # inference
    MetricSpec(
        "statlane_tasks_created_total",
        Kind.COUNTER,
        "Inference tasks, by priority and model",
        ("priority", "model"),
    ),
    MetricSpec(
        "statlane_volumes_loaded_total",
        Kind.COUNTER,
        "Series volumes loaded for inference, by origin (stream: assembled as slices arrived; "
        "disk: read from the spool)",
        ("origin",),
    ),
    MetricSpec(
        "statlane_tasks_failed_total", Kind.COUNTER, "Inference tasks that failed", ("model",)
    ),
    MetricSpec(
        "statlane_out_of_domain_total",
        Kind.COUNTER,
        "Tasks not run: the series is outside the model's declared domain, by failed check",
        ("model", "check"),
    ),
    MetricSpec(
        "statlane_results_unreliable_total",
        Kind.COUNTER,
        "Results flagged unreliable by the output sanity check (never critical)",
        ("model",),
    ),
    MetricSpec(
        "statlane_task_latency_seconds",
        Kind.HISTOGRAM,
        "Task received to result, by class",
        ("priority", "model"),
    ),
    MetricSpec(
        "statlane_deadline_misses_total",
        Kind.COUNTER,
        "Tasks finished after their deadline, by class and model",
        ("priority", "model"),
    ),
    MetricSpec(
        "statlane_queue_depth",
        Kind.GAUGE,
        "Tasks waiting in the scheduler's queue, by class (0 when none)",
        ("priority",),
    ),
    MetricSpec("statlane_engine_pending", Kind.GAUGE, "Jobs inside the engine"),
    MetricSpec(
        "statlane_stat_gate_waits_total",
        Kind.MIRRORED_COUNTER,
        "Background steps (routine preprocessing, reads, deliveries) that waited for stat",
    ),
    MetricSpec(
        "statlane_stat_gate_wait_seconds_total",
        Kind.MIRRORED_COUNTER,
        "Seconds background steps waited for stat stages, in total",
    ),
    # results and delivery
    MetricSpec(
        "statlane_results_total", Kind.COUNTER, "Results by mode and model", ("mode", "model")
    ),
    MetricSpec(
        "statlane_result_object_failures_total",
        Kind.COUNTER,
        "GSPS, SC or SEG objects that could not be built (the SR went out), by model and kind",
        ("model", "kind"),
    ),
    MetricSpec(
        "statlane_result_message_failures_total",
        Kind.COUNTER,
        "HL7 ORU or FHIR messages that could not be built for a destination, by model",
        ("model",),
    ),
    MetricSpec(
        "statlane_deliveries_total",
        Kind.COUNTER,
        "Outbox items delivered",
        ("destination", "kind"),
    ),
    MetricSpec(
        "statlane_delivery_failures_total",
        Kind.COUNTER,
        "Failed delivery attempts",
        ("destination",),
    ),
    MetricSpec(
        "statlane_delivery_seconds",
        Kind.HISTOGRAM,
        "Time to deliver one outbox item",
        ("destination",),
    ),
    MetricSpec(
        "statlane_outbox_backlog",
        Kind.GAUGE,
        "Outbox items not delivered yet (pending or being sent), by destination",
        ("destination",),
    ),
    MetricSpec(
        "statlane_outbox_oldest_pending_seconds",
        Kind.GAUGE,
        "Age of the oldest undelivered outbox item (seconds since enqueued; 0: none)",
        ("destination",),
    ),
    MetricSpec(
        "statlane_outbox_dead_letters",
        Kind.GAUGE,
        "Dead outbox items waiting for an operator (statlane outbox retry), by destination",
        ("destination",),
    ),
    MetricSpec(
        "statlane_spool_bytes",
        Kind.GAUGE,
        "Bytes of instance files in the spool",
        (),
    ),
    MetricSpec(
        "statlane_spool_pruned_bytes_total",
        Kind.COUNTER,
        "Bytes of instance files removed from the spool by retention",
        (),
    ),
    MetricSpec(
        "statlane_spool_pruned_instances_total",
        Kind.COUNTER,
        "Instance files removed from the spool by retention",
        (),
    ),
    MetricSpec(
        "statlane_inflight_bytes",
        Kind.GAUGE,
        "Bytes of received instance data held by the gateways before it is spooled",
        (),
    ),
    MetricSpec(
        "statlane_inflight_refused_total",
        Kind.MIRRORED_COUNTER,
        "Instances or STOW-RS requests refused because the in-flight memory budget was full",
        (),
    ),
    MetricSpec(
        "statlane_destination_up",
        Kind.GAUGE,
        "1 unless the destination's last health probe failed (then 0)",
        ("destination",),
    ),
)
"""Every metric the service exposes, each declared once."""


class UndeclaredMetric(LookupError):
    """A metric name that is not in the table the :class:`Metrics` was built from."""


class _MirroredValue:
    """One labelled series of a :class:`_MirroredCounter`."""

    def __init__(self, owner: _MirroredCounter, key: tuple[str, ...]) -> None:
        self._owner = owner
        self._key = key

    def set(self, value: float) -> None:
        self._owner.put(self._key, float(value))


class _MirroredCounter(Collector):
    """A counter whose running total lives elsewhere: ``set`` copies it in, collect exposes it."""

    def __init__(self, spec: MetricSpec) -> None:
        self.spec = spec
        self._lock = threading.Lock()
        self._values: dict[tuple[str, ...], float] = {} if spec.labels else {(): 0.0}

    def labels(self, **labels: str) -> _MirroredValue:
        if sorted(labels) != sorted(self.spec.labels):
            raise ValueError("Incorrect label names")
        return _MirroredValue(self, tuple(str(labels[n]) for n in self.spec.labels))

    def put(self, key: tuple[str, ...], value: float) -> None:
        with self._lock:
            self._values[key] = value

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(self.spec.name, self.spec.help, labels=self.spec.labels)
        with self._lock:
            values = sorted(self._values.items())
        for key, value in values:
            family.add_metric(list(key), value)
        yield family

    def describe(self) -> Iterable[Metric]:
        yield CounterMetricFamily(self.spec.name, self.spec.help, labels=self.spec.labels)


class _WithoutCreated(Collector):
    """A registry's metrics without the ``_created`` series prometheus_client adds to counters
    and histograms: the exposed names stay those of the table."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        for family in self._registry.collect():
            created = family.name + "_created"
            family.samples = [s for s in family.samples if s.name != created]
            yield family


_Series = Counter | Gauge | Histogram | _MirroredCounter | _MirroredValue
_CALLS: dict[str, tuple[Kind, ...]] = {
    "inc": (Kind.COUNTER,),
    "set": (Kind.GAUGE, Kind.MIRRORED_COUNTER),
    "observe": (Kind.HISTOGRAM,),
    "counter": (Kind.COUNTER, Kind.MIRRORED_COUNTER),
}
"""Which kinds each call applies to."""


class Metrics:
    """The service's metrics on their own ``CollectorRegistry``, thread-safe.

    Args:
        table: The declared metrics (default :data:`METRICS`); several instances in one process
            never share a value.

    Raises:
        ValueError: A name declared twice, or a counter whose name does not end in ``_total``.
    """

    def __init__(self, table: Sequence[MetricSpec] = METRICS) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._specs: dict[str, MetricSpec] = {}
        self._instruments: dict[str, Counter | Gauge | Histogram | _MirroredCounter] = {}
        for spec in table:
            if spec.name in self._specs:
                raise ValueError(f"metric {spec.name} is declared twice")
            self._specs[spec.name] = spec
            self._instruments[spec.name] = self._build(spec)
        self._exposition = _WithoutCreated(self.registry)
        # (call, name, label items) -> the labelled series: checked once, then a dict lookup
        self._series: dict[tuple[str, str, tuple[tuple[str, str], ...]], _Series] = {}

    def _build(self, spec: MetricSpec) -> Counter | Gauge | Histogram | _MirroredCounter:
        if spec.kind in (Kind.COUNTER, Kind.MIRRORED_COUNTER) and not spec.name.endswith("_total"):
            raise ValueError(f"counter {spec.name} must end in _total (exposed so)")
        if spec.kind is Kind.COUNTER:
            return Counter(spec.name, spec.help, spec.labels, registry=self.registry)
        if spec.kind is Kind.GAUGE:
            return Gauge(spec.name, spec.help, spec.labels, registry=self.registry)
        if spec.kind is Kind.HISTOGRAM:
            return Histogram(
                spec.name, spec.help, spec.labels, registry=self.registry, buckets=spec.buckets_s
            )
        mirrored = _MirroredCounter(spec)
        self.registry.register(mirrored)
        return mirrored

    @property
    def specs(self) -> tuple[MetricSpec, ...]:
        """The declared metrics, in table order."""
        return tuple(self._specs.values())

    def _check(self, call: str, name: str, labels: dict[str, str]) -> MetricSpec:
        """The declaration; raises on an undeclared name, a wrong call or wrong labels."""
        spec = self._specs.get(name)
        if spec is None:
            raise UndeclaredMetric(f"metric {name} is not declared (serving/metrics.py METRICS)")
        if spec.kind not in _CALLS[call]:
            raise TypeError(f"metric {name} is a {spec.kind.value}: {call}() does not apply")
        if sorted(labels) != sorted(spec.labels):
            raise ValueError(f"metric {name} takes labels {spec.labels}, got {tuple(labels)}")
        return spec

    def _find(self, call: str, name: str, labels: dict[str, str]) -> _Series:
        """The series ``call`` feeds (checked by :meth:`_check` the first time)."""
        key = (call, name, tuple(labels.items()))
        series = self._series.get(key)
        if series is not None:
            return series
        spec = self._check(call, name, labels)
        instrument = self._instruments[name]
        if spec.labels:
            series = instrument.labels(**labels)
        elif isinstance(instrument, _MirroredCounter):
            series = instrument.labels()
        else:
            series = instrument
        self._series[key] = series
        return series

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        """Add ``value`` to a counter."""
        counter = self._find("inc", name, labels)
        assert isinstance(counter, Counter)
        counter.inc(value)

    def set(self, name: str, value: float, **labels: str) -> None:
        """Set a gauge, or copy in a mirrored counter's running total."""
        series = self._find("set", name, labels)
        assert isinstance(series, Gauge | _MirroredValue)
        series.set(value)

    def observe(self, name: str, value: float, **labels: str) -> None:
        """Record one observation (seconds) in a histogram."""
        histogram = self._find("observe", name, labels)
        assert isinstance(histogram, Histogram)
        histogram.observe(value)

    def counter(self, name: str, **labels: str) -> float:
        """Current value of a counter (0 when never incremented)."""
        self._check("counter", name, labels)  # a read never creates a series
        value = self.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def render(self) -> bytes:
        """The Prometheus text exposition of every declared metric (Content-Type
        :data:`CONTENT_TYPE`)."""
        return generate_latest(self._exposition)
