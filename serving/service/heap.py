"""The garbage collector's policy for a long-running service process.

statlane's process holds a large, long-lived heap from start-up (torch, MONAI, ONNX Runtime,
SQLAlchemy, pydicom's dictionaries: ~440,000 tracked objects). CPython's full (generation 2)
collection walks all of it while holding the GIL: ~180 ms on a 2-core machine, during which no
C-STORE is answered and no stat stage runs. Measured during 1,000 ingested CT instances, one
such pause cost 7% of the ingest time.

After start-up, :func:`settle_heap` collects once and freezes what survived, so later full
collections walk only objects created while serving (16 ms instead of 181 ms in the same
measurement), and raises the young-generation threshold so that the header parsing of each
instance (about 100 short-lived objects) triggers fewer young collections.

This is a process-wide decision: call it from an entry point that owns the process
(``statlane serve``, the demo, a benchmark), not from library code.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass

#: Allocations (net of deallocations) between young collections; CPython's default is 700.
YOUNG_THRESHOLD = 10_000


@dataclass(frozen=True)
class HeapSettled:
    """What :func:`settle_heap` did.

    Attributes:
        collected: Unreachable objects freed by the collection before the freeze.
        frozen: Objects moved to the permanent generation (never walked again).
        thresholds: The collector's thresholds now (young, middle, old).
    """

    collected: int
    frozen: int
    thresholds: tuple[int, int, int]


def settle_heap(young_threshold: int = YOUNG_THRESHOLD) -> HeapSettled:
    """Collect, freeze the surviving start-up heap, and set the young threshold.

    Args:
        young_threshold: Net allocations between young collections (objects), >= 1.
    """
    if young_threshold < 1:
        raise ValueError(f"young_threshold must be >= 1, got {young_threshold}")
    collected = gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young_threshold, middle, old)
    young, middle, old = gc.get_threshold()
    return HeapSettled(collected, gc.get_freeze_count(), (young, middle, old))
