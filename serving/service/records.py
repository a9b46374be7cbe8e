"""Plain records of the service: identity checks, routing decisions and result documents.

Everything here is a pure function of DICOM headers, routing decisions and results: no store,
no thread. Nothing returned carries patient identity (fields are named, never their values).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import pydicom

from router.result import AIResult
from router.rules import Decision
from serving.engine import JobResult
from serving.gateway.element_text import element_text
from serving.jobstore.changes import hash_patient_id
from serving.service.assembly import CompleteStudy


def identity_problem(headers: Sequence[pydicom.Dataset]) -> str | None:
    """Why the instances of one study disagree on identity (names fields, never values)."""
    fields = ("PatientID", "AccessionNumber", "StudyInstanceUID")
    bad = [f for f in fields if len({element_text(h, f) for h in headers}) > 1]
    return f"instances disagree on {', '.join(bad)}" if bad else None


def order_problem(header: pydicom.Dataset, order: Any) -> str | None:
    """Why the order joined by accession does not belong to this study (fields, not values)."""
    if order is None:
        return None
    digest = hash_patient_id(str(header.get("PatientID", "")))
    if order.patient_id_hash and digest and order.patient_id_hash != digest:
        return "order PatientID differs from the study's"
    uid = str(header.get("StudyInstanceUID", ""))
    if order.study_instance_uid and order.study_instance_uid != uid:
        return "order StudyInstanceUID differs from the study's"
    return None


def decision_json(decision: Decision, complete: CompleteStudy) -> dict[str, Any]:
    """The routing decision as kept in the job store (no patient identity)."""
    return {
        "generation": complete.generation,
        "completed_by": complete.reason,
        "tasks": [
            {
                "rule": t.rule,
                "model": t.model,
                "priority": t.priority.value,
                "priority_reason": t.priority_reason,
                "deadline_s": t.deadline_s,
                "mode": t.mode.value,
                "destinations": list(t.destinations),
                "series": t.series_instance_uid,
                "series_reason": t.series_reason,
            }
            for t in decision.tasks
        ],
        "rules": decision.reasons,
    }


def result_json(ai: AIResult, job: JobResult) -> dict[str, Any]:
    """A task's result document (findings and timings; no patient identity)."""
    findings = []
    for f in ai.findings:
        item = f.to_dict()
        item.pop("regions", None)
        findings.append(item)
    t = job.times
    return {
        "model": job.model,
        "critical_positive": ai.critical_positive,
        "unreliable": ai.unreliable,
        "findings": findings,
        "key_images": [k.__dict__ for k in ai.key_images],
        "batch_size": job.batch_size,
        "deadline_missed": job.deadline_missed,
        "stages_s": {
            "preprocess": _span(t.preprocess_started_s, t.ready_s),
            "queue": _span(t.ready_s, t.batch_started_s),
            "inference": _span(t.batch_started_s, t.inferred_s),
            "postprocess": _span(t.inferred_s, t.done_s),
            "total": _span(t.received_s, t.done_s),
        },
    }


def _span(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else round(end - start, 6)


def summary_of(ai: AIResult) -> str:
    """One line for the worklist (finding meanings only)."""
    present = [f.concept_meaning for f in ai.findings if f.present]
    return ("AI: " + ", ".join(present)) if present else "AI: no finding"


def rules_digest(text: str) -> str:
    """Identifies a rules file in routing decisions."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]
