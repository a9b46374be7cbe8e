"""The service's side of the input-domain guard (:mod:`models.domain`).

- **Not applicable.** A series outside the model's declared domain gets no inference: the
  runtime's preprocessing checks it and the engine answers the job with the verdict. The task
  then ends *done* with a result document that says ``ai_applicable: false`` and why (it is not
  a failure: nothing is retried, ``statlane_tasks_failed_total`` is not counted); the audit
  trail gets ``ai-not-applicable`` with the reason and the failed checks; the worklist shows
  "AI not applicable" with the reason as the row's note, never a red flag; no result object
  or message (SR, GSPS, SEG, HL7, FHIR) is sent; the study is finished as usual.
- **Unreliable.** A result whose output fails the sanity check (:func:`check_outputs`) carries
  ``unreliable`` (so it is never critical), is audited ``ai-result-unreliable``, is shown on
  the worklist as "AI result unreliable" with the reason and reaches no destination (the
  result objects would state its findings without the caveat).

Reasons name checks and measurements only: never the patient.
"""

from __future__ import annotations

import dataclasses
import logging

from models.domain import DomainVerdict, check_outputs
from models.manifest import Manifest
from router.result import AIResult
from router.worklist import AIStatus, UnknownStudyError, Worklist
from serving.engine import JobResult
from serving.jobstore import JobStore
from serving.metrics import Metrics
from serving.service.finished import Launched

log = logging.getLogger(__name__)

NOT_APPLICABLE_EVENT = "ai-not-applicable"
UNRELIABLE_EVENT = "ai-result-unreliable"


def not_applicable_document(model: str, verdict: DomainVerdict) -> dict[str, object]:
    """The task's result document when no inference ran (no patient identity)."""
    return {
        "model": model,
        "ai_applicable": False,
        "reason": f"AI not applicable: {verdict.reason}",
        "domain": verdict.to_dict(),
        "critical_positive": False,
        "findings": [],
    }


def finish_not_applicable(
    store: JobStore,
    worklist: Worklist,
    metrics: Metrics,
    launched: Launched,
    verdict: DomainVerdict,
) -> None:
    """End a task whose series is outside its model's domain: done, audited, no result sent.

    A second completion of the same attempt is audited and ignored, as for a result.
    """
    task = launched.task
    uid = task.study_instance_uid
    document = not_applicable_document(task.model, verdict)
    if not store.finish_task(task.task_id, launched.attempt, document):
        store.audit("duplicate-completion-ignored", task_id=task.task_id, study_uid=uid)
        return
    reason = f"AI not applicable: {verdict.reason}"
    store.audit(
        NOT_APPLICABLE_EVENT,
        study_uid=uid,
        task_id=task.task_id,
        detail={
            "model": task.model,
            "mode": task.mode,
            "reason": reason,
            "failed_checks": list(verdict.checks),
        },
    )
    for check in verdict.checks:
        metrics.inc("statlane_out_of_domain_total", model=task.model, check=check)
    log.info("task %s: %s", task.task_id, reason)
    show_unanswered(worklist, uid, AIStatus.NOT_APPLICABLE, reason)
    store.finish_study(uid)


def with_output_sanity(
    ai: AIResult, job: JobResult, manifest: Manifest, verdict: DomainVerdict | None
) -> AIResult:
    """``ai`` marked ``unreliable`` (with the reason) when its output fails the sanity check."""
    reason = check_outputs(job.findings, job.outputs, manifest, verdict)
    return ai if reason is None else dataclasses.replace(ai, unreliable=reason)


def record_unreliable(
    store: JobStore, worklist: Worklist, metrics: Metrics, launched: Launched, ai: AIResult
) -> None:
    """Audit, count and show an unreliable result (call after its task finished)."""
    task = launched.task
    reason = f"AI result unreliable: {ai.unreliable}"
    store.audit(
        UNRELIABLE_EVENT,
        study_uid=task.study_instance_uid,
        task_id=task.task_id,
        detail={"model": task.model, "mode": task.mode, "reason": reason},
    )
    metrics.inc("statlane_results_unreliable_total", model=task.model)
    log.warning("task %s: %s", task.task_id, reason)
    show_unanswered(worklist, task.study_instance_uid, AIStatus.UNRELIABLE, reason)


def show_unanswered(worklist: Worklist, study_uid: str, status: AIStatus, note: str) -> None:
    """Show a model that did not answer, unless another model of the study already did.

    A study goes to several models; one that was not applicable (or unreliable) must never
    take away the result, and the red flag, of one that answered. The audit keeps both.
    """
    current = worklist.entry(study_uid)
    if current is not None and current.ai_status is AIStatus.DONE:
        return
    try:
        worklist.update_ai(study_uid, status, False, note)
    except UnknownStudyError:  # not on the worklist (e.g. after a restart): nothing to show
        log.debug("worklist has no entry for a study", exc_info=True)
