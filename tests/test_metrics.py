"""Prometheus exposition from prometheus_client: every metric declared once, used by name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from serving.metrics import METRICS, Kind, Metrics, MetricSpec, UndeclaredMetric

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("serving", "router", "models", "preprocessing", "benchmarks")
CALL = re.compile(r"metrics\.(inc|set|observe|counter)\(\s*\"([A-Za-z_:][A-Za-z0-9_:]*)\"")

TABLE = (
    MetricSpec("statlane_tasks_total", Kind.COUNTER, "Tasks by state", ("state", "priority")),
    MetricSpec("statlane_queue_depth", Kind.GAUGE, "Queue depth", ("priority",)),
    MetricSpec("statlane_latency_seconds", Kind.HISTOGRAM, "Latency", ("stage",), (0.1, 1.0)),
    MetricSpec("statlane_waits_total", Kind.MIRRORED_COUNTER, "Waits kept elsewhere"),
)


def test_render_counters_gauges_and_histograms() -> None:
    m = Metrics(TABLE)
    m.inc("statlane_tasks_total", state="done", priority="stat")
    m.inc("statlane_tasks_total", 2, state="done", priority="stat")
    m.set("statlane_queue_depth", 4, priority="routine")
    m.observe("statlane_latency_seconds", 0.05, stage="inference")
    m.observe("statlane_latency_seconds", 0.5, stage="inference")
    m.observe("statlane_latency_seconds", 5.0, stage="inference")
    m.set("statlane_waits_total", 7)
    text = m.render().decode()
    assert "# HELP statlane_tasks_total Tasks by state" in text
    assert "# TYPE statlane_tasks_total counter" in text
    assert 'statlane_tasks_total{priority="stat",state="done"} 3.0' in text
    assert "# TYPE statlane_queue_depth gauge" in text
    assert 'statlane_queue_depth{priority="routine"} 4.0' in text
    assert "# TYPE statlane_latency_seconds histogram" in text
    assert 'statlane_latency_seconds_bucket{le="0.1",stage="inference"} 1.0' in text
    assert 'statlane_latency_seconds_bucket{le="1.0",stage="inference"} 2.0' in text
    assert 'statlane_latency_seconds_bucket{le="+Inf",stage="inference"} 3.0' in text
    assert 'statlane_latency_seconds_count{stage="inference"} 3.0' in text
    assert 'statlane_latency_seconds_sum{stage="inference"} 5.55' in text
    assert "# TYPE statlane_waits_total counter" in text
    assert "statlane_waits_total 7.0" in text
    assert "_created" not in text  # exposed names are exactly the declared ones
    assert m.counter("statlane_tasks_total", state="done", priority="stat") == 3
    assert m.counter("statlane_tasks_total", state="failed", priority="stat") == 0
    assert 'state="failed"' not in m.render().decode()  # reading creates no series
    assert m.counter("statlane_waits_total") == 7


def test_every_instance_has_its_own_values() -> None:
    first, second = Metrics(TABLE), Metrics(TABLE)
    first.set("statlane_waits_total", 1)
    first.inc("statlane_tasks_total", state="done", priority="stat")
    assert second.counter("statlane_tasks_total", state="done", priority="stat") == 0
    assert second.counter("statlane_waits_total") == 0


def test_undeclared_names_wrong_labels_and_wrong_calls_raise_at_once() -> None:
    m = Metrics(TABLE)
    with pytest.raises(UndeclaredMetric):
        m.inc("statlane_never_declared_total")
    with pytest.raises(ValueError, match="takes labels"):
        m.inc("statlane_tasks_total", state="done")
    with pytest.raises(ValueError, match="takes labels"):
        m.set("statlane_waits_total", 1, priority="stat")
    with pytest.raises(ValueError, match="takes labels"):
        m.observe("statlane_latency_seconds", 1.0)
    with pytest.raises(TypeError):
        m.set("statlane_tasks_total", 1, state="done", priority="stat")
    with pytest.raises(TypeError):
        m.inc("statlane_queue_depth", priority="stat")
    with pytest.raises(ValueError, match="declared twice"):
        Metrics((*TABLE, TABLE[0]))
    with pytest.raises(ValueError, match="_total"):
        Metrics((MetricSpec("statlane_tasks", Kind.COUNTER, "no suffix"),))


def _used_names() -> dict[str, set[str]]:
    """Metric name -> the calls that use it, from the source."""
    used: dict[str, set[str]] = {}
    for folder in SOURCES:
        for path in (ROOT / folder).rglob("*.py"):
            for call, name in CALL.findall(path.read_text(encoding="utf-8")):
                used.setdefault(name, set()).add(call)
    return used


def test_every_metric_used_in_the_code_is_declared_typed_and_exposed() -> None:
    used = _used_names()
    declared = {spec.name: spec for spec in METRICS}
    assert used, "the source scan found no metric calls"
    assert sorted(set(used) - set(declared)) == []
    assert sorted(set(declared) - set(used)) == []  # nothing declared that nobody feeds
    calls = {
        Kind.COUNTER: {"inc", "counter"},
        Kind.MIRRORED_COUNTER: {"set", "counter"},
        Kind.GAUGE: {"set"},
        Kind.HISTOGRAM: {"observe"},
    }
    for name, spec in declared.items():
        assert used[name] <= calls[spec.kind], name
    text = Metrics().render().decode()
    assert "untyped" not in text
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, flags=re.MULTILINE))
    prometheus_type = {Kind.MIRRORED_COUNTER: "counter"}
    assert types == {
        name: prometheus_type.get(spec.kind, spec.kind.value) for name, spec in declared.items()
    }
