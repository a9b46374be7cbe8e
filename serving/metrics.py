"""Service metrics in the Prometheus text format (``GET /metrics``).

Labels are model idents, priority classes, stages, states and destination names — never patient
data, accession numbers or UIDs (those belong in the audit trail, not in metrics).
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from collections.abc import Sequence

LabelKey = tuple[tuple[str, str], ...]

DEFAULT_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)


def _key(labels: dict[str, str]) -> LabelKey:
    return tuple(sorted(labels.items()))


def _render(labels: LabelKey, extra: tuple[tuple[str, str], ...] = ()) -> str:
    items = list(labels) + list(extra)
    if not items:
        return ""
    escaped = (v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for _, v in items)
    return "{" + ",".join(f'{k}="{v}"' for (k, _), v in zip(items, escaped, strict=True)) + "}"


class Metrics:
    """Counters, gauges and histograms, thread-safe."""

    def __init__(self, buckets_s: Sequence[float] = DEFAULT_BUCKETS_S) -> None:
        self._lock = threading.Lock()
        self._help: dict[str, tuple[str, str]] = {}
        self._counters: dict[str, dict[LabelKey, float]] = defaultdict(dict)
        self._gauges: dict[str, dict[LabelKey, float]] = defaultdict(dict)
        self._buckets = tuple(sorted(buckets_s))
        self._hist: dict[str, dict[LabelKey, list[float]]] = defaultdict(dict)

    def describe(self, name: str, kind: str, text: str) -> None:
        """Declare a metric's type (counter, gauge, histogram) and help text."""
        self._help[name] = (kind, text)

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        """Add ``value`` to a counter."""
        with self._lock:
            series = self._counters[name]
            key = _key(labels)
            series[key] = series.get(key, 0.0) + value

    def set(self, name: str, value: float, **labels: str) -> None:
        """Set a gauge."""
        with self._lock:
            self._gauges[name][_key(labels)] = value

    def observe(self, name: str, value: float, **labels: str) -> None:
        """Record one observation (seconds) in a histogram."""
        with self._lock:
            series = self._hist[name]
            key = _key(labels)
            state = series.get(key)
            if state is None:
                state = series[key] = [0.0] * (len(self._buckets) + 2)  # buckets, +Inf, sum
            index = bisect.bisect_left(self._buckets, value)
            for b in range(index, len(self._buckets) + 1):
                state[b] += 1
            state[-1] += value

    def counter(self, name: str, **labels: str) -> float:
        """Current value of a counter (0 when never incremented)."""
        with self._lock:
            return self._counters.get(name, {}).get(_key(labels), 0.0)

    def render(self) -> str:
        """The Prometheus text exposition of every metric."""
        lines: list[str] = []
        with self._lock:
            names = sorted(set(self._counters) | set(self._gauges) | set(self._hist))
            for name in names:
                kind, text = self._help.get(name, ("untyped", ""))
                if text:
                    lines.append(f"# HELP {name} {text}")
                lines.append(f"# TYPE {name} {kind}")
                for key, value in sorted(self._counters.get(name, {}).items()):
                    lines.append(f"{name}{_render(key)} {value:g}")
                for key, value in sorted(self._gauges.get(name, {}).items()):
                    lines.append(f"{name}{_render(key)} {value:g}")
                for key, state in sorted(self._hist.get(name, {}).items()):
                    for bound, count in zip(self._buckets, state, strict=False):
                        lines.append(
                            f"{name}_bucket{_render(key, (('le', f'{bound:g}'),))} {count:g}"
                        )
                    inf = len(self._buckets)
                    lines.append(f"{name}_bucket{_render(key, (('le', '+Inf'),))} {state[inf]:g}")
                    lines.append(f"{name}_sum{_render(key)} {state[-1]:g}")
                    lines.append(f"{name}_count{_render(key)} {state[inf]:g}")
        return "\n".join(lines) + "\n"
