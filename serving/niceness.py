"""OS scheduling priority for compute threads: orchestration outranks bulk inference on a CPU.

On a CPU-only machine the inference threads (ONNX Runtime's intra-op pool, the device loops,
the preprocessing workers) can keep every core busy, and the Python threads that turn a
finished stat job into an SR in the PACS (routing, result building, delivery) then get a fair
share of a core at best. Raising the compute threads' nice value lets those short
latency-critical steps run as soon as they are ready, while the compute uses every cycle
they leave. The stat lane and the stat preprocessing worker keep the normal priority.

Linux keeps the nice value per thread and new threads inherit it from the thread that creates
them, so ONNX Runtime's pool threads are niced by creating the session on a niced thread
(:func:`call_at_lower_priority`). Elsewhere these functions do nothing.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import TypeVar

__all__ = ["call_at_lower_priority", "lower_thread_priority", "thread_nice"]

log = logging.getLogger(__name__)

T = TypeVar("T")
_MAX_NICE = 19


def thread_nice() -> int | None:
    """This OS thread's nice value (None where threads have no priority of their own)."""
    try:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    except (AttributeError, OSError):
        return None


def lower_thread_priority(by: int) -> None:
    """Raise the calling OS thread's nice value by ``by`` (capped at 19); 0 does nothing."""
    if by <= 0:
        return
    current = thread_nice()
    if current is None:
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), min(current + by, _MAX_NICE))
    except OSError:  # not permitted here: run at the normal priority
        log.debug("could not lower the priority of a compute thread", exc_info=True)


def call_at_lower_priority(fn: Callable[[], T], by: int) -> T:
    """Call ``fn`` on a fresh thread whose nice value is raised by ``by``, so the threads ``fn``
    creates (an inference session's pool) inherit it; returns its result or raises its error."""
    if by <= 0:
        return fn()
    outcome: dict[str, T] = {}
    failure: list[BaseException] = []

    def run() -> None:
        lower_thread_priority(by)
        try:
            outcome["value"] = fn()
        except BaseException as error:  # re-raised on the calling thread
            failure.append(error)

    thread = threading.Thread(target=run, name="niced-call")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome["value"]
