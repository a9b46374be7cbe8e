"""The REST API's read side, served next to STOW-RS on the HTTP port.

``GET /health``, ``/metrics`` (Prometheus), ``/worklist`` (native and published order),
``/studies`` and ``/studies/{uid}`` (state, series counts, routing decisions, tasks),
``/tasks?state=``, ``/outbox?state=`` and ``/audit?study=``. Patient names never appear;
UIDs and accession numbers do (this is the audit surface).
"""

from __future__ import annotations

import json
from dataclasses import asdict, is_dataclass
from datetime import datetime
from enum import Enum
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from router.result import Mode
from router.worklist import worklist_json
from serving.jobstore import OutboxState, StudyState, TaskState

if TYPE_CHECKING:
    from serving.service.app import Service

Response = tuple[int, str, bytes]


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
    return status, "application/json", body


class RestApi:
    """Answers GET requests from the service's job store, worklist and metrics."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def handle_get(self, target: str) -> Response | None:
        """The response to ``GET target``, or None when the path is not ours (→ 404)."""
        url = urlsplit(target)
        path = url.path.rstrip("/") or "/"
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            return self._route(path, query)
        except ValueError as error:  # a bad query value: one clear 400
            return _json(400, {"error": str(error)})

    def _route(self, path: str, query: dict[str, str]) -> Response | None:
        service = self.service
        store = service.store
        if path == "/health":
            runtime = "up" if service.runtime is not None else "unavailable"
            return _json(200, {"status": "ok", "inference": runtime})
        if path == "/metrics":
            return 200, "text/plain; version=0.0.4", service.metrics.render().encode()
        if path == "/worklist":
            mode = Mode(query.get("mode", service.config.worklist.mode))
            return _json(200, worklist_json(service.worklist, mode))
        if path == "/studies":
            state = StudyState(query["state"]) if "state" in query else None
            return _json(200, [_study(s) for s in store.studies(state)])
        if path.startswith("/studies/"):
            uid = path.removeprefix("/studies/")
            study = store.study(uid)
            if study is None:
                return _json(404, {"error": "unknown study"})
            return _json(
                200,
                {
                    "study": _study(study),
                    "series": store.series_of(uid),
                    "routing": store.routing_decisions(uid),
                    "tasks": store.tasks(study_uid=uid),
                },
            )
        if path == "/tasks":
            task_state = TaskState(query["state"]) if "state" in query else None
            return _json(200, store.tasks(task_state))
        if path == "/outbox":
            outbox_state = OutboxState(query["state"]) if "state" in query else None
            items = [
                {k: v for k, v in _plain(i).items() if k != "payload"}
                for i in service.outbox.items(outbox_state)
            ]
            return _json(200, items)
        if path == "/audit":
            return _json(200, store.audit_events(study_uid=query.get("study")))
        return None


def _study(row: Any) -> dict[str, Any]:
    data: dict[str, Any] = _plain(row)
    data.pop("patient_id_hash", None)
    return data
