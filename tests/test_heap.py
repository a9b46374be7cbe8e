"""The service process's garbage-collector policy (serving.service.heap)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from serving.service.heap import YOUNG_THRESHOLD, settle_heap


@pytest.fixture
def restored_collector() -> Iterator[None]:
    """Undo the freeze and the thresholds after the test (pytest's process goes on)."""
    thresholds = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_collector")
def test_the_surviving_heap_is_frozen_and_cyclic_garbage_collected_first() -> None:
    class Node:
        def __init__(self) -> None:
            self.other: Node | None = None

    kept = Node()  # alive: frozen
    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle that is garbage once the names are gone
    del a, b
    settled = settle_heap()
    assert settled.collected >= 2
    assert settled.frozen == gc.get_freeze_count() > 0
    assert not any(obj is kept for obj in gc.get_objects())  # frozen objects are not walked
    assert settled.thresholds == gc.get_threshold()
    assert settled.thresholds[0] == YOUNG_THRESHOLD


@pytest.mark.usefixtures("restored_collector")
def test_objects_created_after_the_freeze_are_still_collected() -> None:
    settle_heap(young_threshold=5_000)
    assert gc.get_threshold()[0] == 5_000
    a: list[object] = []
    a.append(a)
    del a
    assert gc.collect() >= 1


def test_a_threshold_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="young_threshold"):
        settle_heap(young_threshold=0)
