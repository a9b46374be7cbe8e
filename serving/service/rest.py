"""The REST API's read side, served next to STOW-RS on the HTTP port.

``GET /health``, ``/metrics`` (Prometheus), ``/worklist`` (native and published order),
``/studies`` and ``/studies/{uid}`` (state, series counts, routing decisions, tasks),
``/tasks?state=``, ``/outbox?state=`` and ``/audit?study=``, declared in :data:`REST_ROUTES`
with the role each needs; :func:`http_routes` lists every route of the port. Patient names
never appear; UIDs and accession numbers do (this is the audit surface).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import asdict, is_dataclass
from datetime import datetime
from enum import Enum
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from router.result import Mode
from router.worklist import Worklist, worklist_json
from serving.delivery.outbox import Outbox
from serving.gateway.routes import Request, Response, Role, Route
from serving.gateway.stow import STOW_ROUTES
from serving.jobstore import JobStore, OutboxState, StudyState, TaskState
from serving.metrics import CONTENT_TYPE, Metrics
from serving.service.versions import current_results

__all__ = ["REST_ROUTES", "RestApi", "http_routes"]


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return value


def _json(status: int, value: Any) -> Response:
    body = json.dumps(_plain(value), indent=1, default=str).encode()
    return Response(status, "application/json", body)


def _value_error_is_400(
    handler: Callable[[RestApi, Request], Response],
) -> Callable[[RestApi, Request], Response]:
    """A ValueError in a REST handler, a bad query value (``?state=nonsense``), is one clear
    400."""

    @functools.wraps(handler)
    def answer(api: RestApi, request: Request) -> Response:
        try:
            return handler(api, request)
        except ValueError as error:
            return _json(400, {"error": str(error)})

    return answer


class RestApi:
    """Answers the REST routes from the job store, outbox, worklist and metrics.

    Args:
        store: The job store (studies, tasks, audit trail).
        outbox: The delivery outbox.
        worklist: The shared worklist.
        metrics: The service's metrics.
        worklist_mode: The configured worklist mode, the default of ``/worklist?mode=``.
        inference_up: Whether the inference runtime is running (``/health``).
        problems: Why the service is degraded, one line each (``/health``); none by default.
    """

    def __init__(
        self,
        *,
        store: JobStore,
        outbox: Outbox,
        worklist: Worklist,
        metrics: Metrics,
        worklist_mode: str,
        inference_up: Callable[[], bool],
        problems: Callable[[], list[str]] = list,
    ) -> None:
        self.store = store
        self.outbox = outbox
        self.worklist = worklist
        self.metrics = metrics
        self.worklist_mode = worklist_mode
        self.inference_up = inference_up
        self.problems = problems

    @_value_error_is_400
    def health(self, request: Request) -> Response:
        """``GET /health``: ``ok``, ``degraded`` or ``down``, why, and whether inference is up.

        ``degraded`` (HTTP 200: the service still takes and keeps every instance, so a load
        balancer must not take it out) lists its ``reasons``: a destination down, a delivery
        backlog older than ``outbox.backlog_alert_s``, dead letters, the spool disk low.
        ``down`` (HTTP 503) when the job store cannot be read: nothing can be recorded.
        """
        runtime = "up" if self.inference_up() else "unavailable"
        try:
            reasons = self.problems()
        except SQLAlchemyError as error:
            reason = f"job store unreadable ({type(error).__name__})"
            return _json(503, {"status": "down", "reasons": [reason], "inference": runtime})
        status = "degraded" if reasons else "ok"
        return _json(200, {"status": status, "reasons": reasons, "inference": runtime})

    @_value_error_is_400
    def metrics_text(self, request: Request) -> Response:
        """``GET /metrics``: the Prometheus exposition."""
        return Response(200, CONTENT_TYPE, self.metrics.render())

    @_value_error_is_400
    def worklist_orders(self, request: Request) -> Response:
        """``GET /worklist[?mode=]``: the native and the published order."""
        mode = Mode(request.query.get("mode", self.worklist_mode))
        return _json(200, worklist_json(self.worklist, mode))

    @_value_error_is_400
    def studies(self, request: Request) -> Response:
        """``GET /studies[?state=]``."""
        state = StudyState(request.query["state"]) if "state" in request.query else None
        return _json(200, [_study(s) for s in self.store.studies(state)])

    @_value_error_is_400
    def study(self, request: Request) -> Response:
        """``GET /studies/{uid}``: state, series counts, routing decisions, tasks, and the
        current result of each rule and model (``results``: the newest generation's, which
        the worklist shows; older generations stay listed under ``tasks``)."""
        uid = request.params["uid"]
        store = self.store
        study = store.study(uid)
        if study is None:
            return _json(404, {"error": "unknown study"})
        tasks = store.tasks(study_uid=uid)
        return _json(
            200,
            {
                "study": _study(study),
                "series": store.series_of(uid),
                "routing": store.routing_decisions(uid),
                "tasks": tasks,
                "results": current_results(tasks),
            },
        )

    @_value_error_is_400
    def tasks(self, request: Request) -> Response:
        """``GET /tasks[?state=]``."""
        state = TaskState(request.query["state"]) if "state" in request.query else None
        return _json(200, self.store.tasks(state))

    @_value_error_is_400
    def outbox_items(self, request: Request) -> Response:
        """``GET /outbox[?state=]``: items without their payloads."""
        state = OutboxState(request.query["state"]) if "state" in request.query else None
        items = [
            {k: v for k, v in _plain(i).items() if k != "payload"} for i in self.outbox.items(state)
        ]
        return _json(200, items)

    @_value_error_is_400
    def audit(self, request: Request) -> Response:
        """``GET /audit[?study=]``: the audit trail."""
        return _json(200, self.store.audit_events(study_uid=request.query.get("study")))


def _study(row: Any) -> dict[str, Any]:
    data: dict[str, Any] = _plain(row)
    data.pop("patient_id_hash", None)
    return data


REST_ROUTES: tuple[Route[RestApi], ...] = (
    Route("GET", "/health", Role.PUBLIC, RestApi.health, "ok, degraded (reasons) or down"),
    Route("GET", "/metrics", Role.VIEWER, RestApi.metrics_text, "Prometheus metrics"),
    Route("GET", "/worklist", Role.VIEWER, RestApi.worklist_orders, "Native and published order"),
    Route("GET", "/studies", Role.VIEWER, RestApi.studies, "Studies, by state"),
    Route("GET", "/studies/{uid}", Role.VIEWER, RestApi.study, "One study with its tasks"),
    Route("GET", "/tasks", Role.VIEWER, RestApi.tasks, "Inference tasks, by state"),
    Route("GET", "/outbox", Role.VIEWER, RestApi.outbox_items, "Deliveries, by state"),
    Route("GET", "/audit", Role.VIEWER, RestApi.audit, "The audit trail, by study"),
)
"""The REST API's routes, at the root of the HTTP port."""


def http_routes(base_path: str = "/dicomweb") -> tuple[Route[Any], ...]:
    """Every route the service's HTTP port serves: STOW-RS below ``base_path``, then REST."""
    return (*(r.under(base_path) for r in STOW_ROUTES), *REST_ROUTES)
