"""Result versions: which earlier result a new one replaces, and which result is current.

A study re-runs when late instances arrive (a new task *generation*). Each result is a
*version*, named by its input digest (``AIResult.input_digest``: the sorted SOP Instance UIDs
the model read and the model ``name@version``); result object UIDs, FHIR ids and outbox keys
derive from it (``router.objects.uids``), so a re-run on the same input sends nothing new and a
re-run on more input sends new objects that the PACS keeps beside the old ones.

A task's *lineage* is its study, rule and model name: the results of the same question asked
of the same study, generation after generation (the rule may pick another series, e.g. a
thinner one that arrived late; its result still supersedes the last). Each result document
(``result_json``) records its version (:func:`version_record`), so a later generation can name
the version it replaces (:func:`prior_version`), and an older generation that finishes after a
newer one knows it is stale (:func:`newer_result`).

Pure functions of task rows and results: no store, no thread.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from pydicom.uid import Comprehensive3DSRStorage

from router.messages.fhir import report_id
from router.objects.common import object_identity
from router.result import AIResult, Mode, PriorVersion
from serving.jobstore import TaskRow, TaskState


def version_record(ai: AIResult, *, sent: bool) -> dict[str, Any]:
    """The version part of a result document: what a later version needs to name this one.

    Args:
        ai: The result.
        sent: Whether its objects and messages were handed to delivery (assistant mode and a
            reliable result); only a sent version is ever named as replaced.
    """
    sr = object_identity(ai, "sr")
    return {
        "inputs": ai.input_digest,
        "model": f"{ai.algorithm.name}@{ai.algorithm.version}",
        "sent": sent,
        "sr": {
            "study_instance_uid": ai.study.study_instance_uid,
            "series_instance_uid": sr.series_instance_uid,
            "sop_instance_uid": sr.sop_instance_uid,
            "sop_class_uid": str(Comprehensive3DSRStorage),
        },
        "report_id": report_id(ai),
        "replaces": None if ai.replaces is None else ai.replaces.task_id,
    }


def was_sent(task: TaskRow, ai: AIResult) -> bool:
    """Whether ``ai`` goes to clinical destinations as a document (SR, ORU, FHIR)."""
    return Mode(task.mode) is Mode.ASSISTANT and ai.unreliable is None


def same_lineage(a: TaskRow, b: TaskRow) -> bool:
    """Two tasks ask the same question of the same study (study, rule and model name)."""
    return (a.study_instance_uid, a.rule_name, a.model_name) == (
        b.study_instance_uid,
        b.rule_name,
        b.model_name,
    )


def _version(task: TaskRow) -> dict[str, Any] | None:
    if task.state is not TaskState.DONE or task.result is None:
        return None
    version = task.result.get("version")
    return version if isinstance(version, dict) else None


def prior_version(task: TaskRow, ai: AIResult, tasks: Iterable[TaskRow]) -> PriorVersion | None:
    """The version ``ai`` replaces: the latest sent result of an earlier generation of the
    same lineage that read other input (or ran another model version); None if there is none.

    The same task retried after a crash finds the same one, so its objects and messages are
    identical; a re-run on identical input finds none that its first run did not also find.
    """
    found: tuple[int, str, PriorVersion] | None = None
    for other in tasks:
        version = _version(other)
        if (
            version is None
            or other.task_id == task.task_id
            or not same_lineage(other, task)
            or other.generation >= task.generation
            or not version.get("sent")
            or version.get("inputs") == ai.input_digest
        ):
            continue
        sr = version["sr"]
        prior = PriorVersion(
            task_id=other.task_id,
            study_instance_uid=str(sr["study_instance_uid"]),
            sr_series_instance_uid=str(sr["series_instance_uid"]),
            sr_sop_instance_uid=str(sr["sop_instance_uid"]),
            sr_sop_class_uid=str(sr["sop_class_uid"]),
            report_id=str(version["report_id"]),
            model=str(version["model"]),
        )
        rank = (other.generation, other.task_id)
        if found is None or rank > found[:2]:
            found = (*rank, prior)
    return None if found is None else found[2]


def newer_result(task: TaskRow, tasks: Iterable[TaskRow]) -> TaskRow | None:
    """A finished result of a later generation of the same lineage, if one exists: then
    ``task``'s result (an older generation finishing late) is stale and must not be sent or
    shown."""
    newer = [
        other
        for other in tasks
        if same_lineage(other, task)
        and other.generation > task.generation
        and _version(other) is not None
    ]
    return max(newer, key=lambda t: t.generation) if newer else None


def current_results(tasks: Sequence[TaskRow]) -> list[dict[str, Any]]:
    """The newest finished result of each lineage of one study (what the worklist shows):
    task, rule, model, generation and the result document, in task order."""
    newest: dict[tuple[str, str, str], TaskRow] = {}
    for task in tasks:
        if task.state is not TaskState.DONE or task.result is None:
            continue
        key = (task.study_instance_uid, task.rule_name, task.model_name)
        if key not in newest or task.generation >= newest[key].generation:
            newest[key] = task
    return [
        {
            "task_id": t.task_id,
            "rule": t.rule_name,
            "model": t.model,
            "generation": t.generation,
            "result": t.result,
        }
        for t in tasks
        if newest.get((t.study_instance_uid, t.rule_name, t.model_name)) is t
    ]
