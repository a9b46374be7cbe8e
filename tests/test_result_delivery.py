"""ResultDelivery: the SR is queued (and the delivery workers woken) before GSPS/SC/SEG."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

import router.objects as objects
from router.objects import ResultObjectError
from router.result import AIResult, Mode
from router.vocabulary import PriorityClass
from serving.delivery.payloads import ResultDelivery
from serving.metrics import Metrics
from tests.result_factory import ct_head_result


class Recorder:
    """Stands in for the outbox and the job store's audit; keeps the order of events."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def enqueue(self, task_id: str, destination: str, kind: str, *_: Any, **__: Any) -> None:
        self.events.append(("queued", f"{destination}:{kind}"))

    def audit(self, event: str, **_: Any) -> None:
        self.events.append(("audit", event))

    def wake(self) -> None:
        self.events.append(("woken", ""))


def delivery(tmp_path: Path, recorder: Recorder) -> ResultDelivery:
    return ResultDelivery(
        store=cast(Any, recorder),
        outbox=cast(Any, recorder),
        destination_types={"pacs": "dicom", "ris": "mllp", "hook": "webhook"},
        results_dir=tmp_path / "results",
        metrics=Metrics(),
        utc=lambda: datetime(2026, 11, 30, 12, 0, tzinfo=UTC),
        on_enqueued=recorder.wake,
    )


def task(mode: Mode = Mode.ASSISTANT) -> Any:
    return SimpleNamespace(
        task_id="task-1",
        mode=mode.value,
        destinations=["pacs", "ris", "hook"],
        study_instance_uid="1.2.3",
        model="ich-ct-head@2",
        generation=1,
        priority=PriorityClass.STAT,
    )


@pytest.fixture(scope="module")
def positive(tmp_path_factory: pytest.TempPathFactory) -> AIResult:
    return ct_head_result(tmp_path_factory.mktemp("study"), present=True)


def test_the_sr_is_queued_and_the_workers_woken_before_anything_else(
    tmp_path: Path, positive: AIResult
) -> None:
    recorder = Recorder()
    delivery(tmp_path, recorder).enqueue_results(task(), positive, None)
    assert recorder.events[:2] == [("queued", "pacs:sr"), ("woken", "")]
    queued = [what for event, what in recorder.events if event == "queued"]
    assert queued == ["pacs:sr", "ris:hl7", "hook:webhook", "pacs:gsps", "pacs:sc", "pacs:seg"]
    assert recorder.events[-1] == ("woken", "")


def test_a_failing_secondary_object_keeps_the_sr_and_is_audited(
    tmp_path: Path, positive: AIResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(result: AIResult) -> None:
        raise ResultObjectError(result.study.study_instance_uid, "no key image")

    monkeypatch.setitem(objects.BUILDERS, "gsps", broken)
    recorder = Recorder()
    delivery(tmp_path, recorder).enqueue_results(task(), positive, None)
    queued = [what for event, what in recorder.events if event == "queued"]
    # each object on its own: the SC and SEG still go out, only the GSPS is audited
    assert queued == ["pacs:sr", "ris:hl7", "hook:webhook", "pacs:sc", "pacs:seg"]
    assert ("audit", "result-objects-failed") in recorder.events


def test_shadow_mode_queues_nothing(tmp_path: Path, positive: AIResult) -> None:
    recorder = Recorder()
    delivery(tmp_path, recorder).enqueue_results(task(Mode.SHADOW), positive, None)
    assert recorder.events == [("audit", "shadow-result-kept")]


def test_the_mask_is_added_after_the_sr_is_queued_and_feeds_the_seg(
    tmp_path: Path, positive: AIResult
) -> None:
    assert positive.mask is not None
    recorder = Recorder()

    def add_mask(result: AIResult) -> AIResult:
        recorder.events.append(("mask", ""))
        return dataclasses.replace(result, mask=positive.mask)

    unmasked = dataclasses.replace(positive, mask=None)
    delivery(tmp_path, recorder).enqueue_results(task(), unmasked, None, add_mask)
    order = [what or event for event, what in recorder.events if event != "woken"]
    assert order == [
        "pacs:sr", "ris:hl7", "hook:webhook", "mask", "pacs:gsps", "pacs:sc", "pacs:seg"
    ]  # fmt: skip
    recorder = Recorder()
    delivery(tmp_path, recorder).enqueue_results(task(), unmasked, None)
    assert "pacs:seg" not in [what for _, what in recorder.events]  # no mask, no SEG
