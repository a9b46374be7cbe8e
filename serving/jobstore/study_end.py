"""When a routed study is done: the rule, checked and applied in one write transaction.

A study is done once every task of its newest routing decision exists and no task of any
generation is still queued or running. Checking "no task queued or running" alone is not
enough: a late instance re-routes the study as the next generation in two steps (the routing
decision, then its tasks), and an older generation's result landing between the two would
close a study whose re-run is about to start.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from serving.jobstore.changes import StateChanges, get_entity
from serving.jobstore.schema import RoutingDecision, Study, Task
from serving.jobstore.states import EntityKind, StudyState, TaskState

_ACTIVE = (TaskState.QUEUED, TaskState.RUNNING)


def end_study_if_settled(changes: StateChanges, study_uid: str) -> bool:
    """Move the study routed → done if it is settled; True if it is done (now or before).

    Settled: in the routed state, every task its newest routing decision plans exists (same
    series, model and generation), and none of its tasks is queued or running. Otherwise
    nothing changes and the answer is False (reopened, re-routed without its tasks yet, or
    still working); the study's last task to end closes it.
    """
    session = changes.session
    study = get_entity(session, Study, EntityKind.STUDY, study_uid)
    if study.state == StudyState.DONE:
        return True
    if study.state != StudyState.ROUTED:
        return False
    active = session.scalar(
        select(func.count())
        .select_from(Task)
        .where(Task.study_instance_uid == study_uid, Task.state.in_(_ACTIVE))
    )
    if active:
        return False
    if not planned_tasks_exist(session, study_uid):
        return False
    changes.record(EntityKind.STUDY, study_uid, StudyState.ROUTED, StudyState.DONE)
    study.state = StudyState.DONE
    return True


def planned_tasks_exist(session: Session, study_uid: str) -> bool:
    """Whether every task the study's newest routing decision plans has been created.

    A task is identified by series, model (``name@version``) and generation (0 when the
    decision does not say). True when the study has no routing decision, or a decision whose
    plan is not in that form.
    """
    decision = session.scalars(
        select(RoutingDecision.decision)
        .where(RoutingDecision.study_instance_uid == study_uid)
        .order_by(RoutingDecision.id.desc())
        .limit(1)
    ).first()
    if decision is None:
        return True
    generation = decision.get("generation", 0)
    planned_tasks = decision.get("tasks", [])
    if not isinstance(generation, int) or not isinstance(planned_tasks, list):
        return True
    planned = {(str(t.get("series", "")), str(t.get("model", ""))) for t in planned_tasks}
    rows = session.execute(
        select(Task.series_instance_uid, Task.model_name, Task.model_version).where(
            Task.study_instance_uid == study_uid, Task.generation == generation
        )
    )
    created = {(series, f"{name}@{version}") for series, name, version in rows}
    return planned <= created
