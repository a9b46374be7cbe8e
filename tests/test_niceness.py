"""Compute threads run at a lower OS priority than the service's orchestration threads."""

from __future__ import annotations

import threading

import pytest

from serving.niceness import call_at_lower_priority, lower_thread_priority, thread_nice

pytestmark = pytest.mark.skipif(thread_nice() is None, reason="no per-thread priority here")


def _nice_in_thread(fn: object) -> int | None:
    seen: list[int | None] = []

    def run() -> None:
        assert callable(fn)
        fn()
        seen.append(thread_nice())

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return seen[0]


def test_lowering_a_thread_leaves_the_others_alone() -> None:
    base = thread_nice()
    assert base is not None
    assert _nice_in_thread(lambda: lower_thread_priority(3)) == min(base + 3, 19)
    assert thread_nice() == base
    assert _nice_in_thread(lambda: lower_thread_priority(0)) == base


def test_threads_created_by_a_niced_call_inherit_its_priority() -> None:
    base = thread_nice()
    assert base is not None

    def spawn() -> int | None:
        return _nice_in_thread(lambda: None)  # a pool thread the call creates

    assert call_at_lower_priority(spawn, 4) == min(base + 4, 19)
    assert call_at_lower_priority(thread_nice, 0) == base  # 0: called right here
    assert thread_nice() == base


def test_a_niced_call_reraises_its_error() -> None:
    def boom() -> None:
        raise KeyError("model")

    with pytest.raises(KeyError, match="model"):
        call_at_lower_priority(boom, 2)
