"""Prometheus exposition: counters, gauges and cumulative histogram buckets."""

from __future__ import annotations

from serving.metrics import Metrics


def test_render_counters_gauges_and_histograms() -> None:
    m = Metrics(buckets_s=(0.1, 1.0))
    m.describe("statlane_tasks_total", "counter", "Tasks by state")
    m.inc("statlane_tasks_total", state="done", priority="stat")
    m.inc("statlane_tasks_total", 2, state="done", priority="stat")
    m.set("statlane_queue_depth", 4, priority="routine")
    m.observe("statlane_latency_seconds", 0.05, stage="inference")
    m.observe("statlane_latency_seconds", 0.5, stage="inference")
    m.observe("statlane_latency_seconds", 5.0, stage="inference")
    text = m.render()
    assert "# TYPE statlane_tasks_total counter" in text
    assert 'statlane_tasks_total{priority="stat",state="done"} 3' in text
    assert 'statlane_queue_depth{priority="routine"} 4' in text
    assert 'statlane_latency_seconds_bucket{stage="inference",le="0.1"} 1' in text
    assert 'statlane_latency_seconds_bucket{stage="inference",le="1"} 2' in text
    assert 'statlane_latency_seconds_bucket{stage="inference",le="+Inf"} 3' in text
    assert 'statlane_latency_seconds_count{stage="inference"} 3' in text
    assert 'statlane_latency_seconds_sum{stage="inference"} 5.55' in text
    assert m.counter("statlane_tasks_total", state="done", priority="stat") == 3
