"""The HTTP port's route table: every route declared with a role, documented, and dispatched."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from router.vocabulary import PriorityClass
from router.worklist import WorklistEntry
from serving.delivery.outbox import Outbox, RetryPolicy
from serving.gateway.routes import Request, Role, RouteTable
from serving.gateway.spool import Spool
from serving.gateway.stow import StowServer
from serving.jobstore import JobStore
from serving.metrics import CONTENT_TYPE, Metrics
from serving.service.rest import REST_ROUTES, RestApi, http_routes
from serving.service.worklist import SharedWorklist

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
STUDY, SERIES = "1.2.826.0.1.3680043.10.1.1", "1.2.826.0.1.3680043.10.1.1.1"


def test_every_route_has_a_role_and_each_method_and_path_is_declared_once() -> None:
    routes = http_routes()
    assert all(isinstance(r.role, Role) for r in routes)
    keys = [(r.method, r.path) for r in routes]
    assert len(keys) == len(set(keys))
    assert {r.path for r in routes if r.role is Role.PUBLIC} == {"/health", "/dicomweb/health"}
    assert {r.method for r in routes if r.role is Role.INGEST} == {"POST"}
    assert {r.path for r in routes if r.method == "POST"} == {
        "/dicomweb/studies",
        "/dicomweb/studies/{study}",
    }
    assert all(r.summary for r in routes)


def test_the_server_serves_exactly_the_listed_routes(tmp_path: Path) -> None:
    table = RouteTable()
    table.add(REST_ROUTES, _api(tmp_path))
    server = StowServer(Spool(tmp_path / "spool", min_free_bytes=0), routes=table)
    assert set(server.routes.routes) == set(http_routes())


def test_a_route_declared_twice_is_refused(tmp_path: Path) -> None:
    table = RouteTable()
    table.add(REST_ROUTES, _api(tmp_path))
    with pytest.raises(ValueError, match="declared twice"):
        StowServer(Spool(tmp_path / "spool", min_free_bytes=0), routes=table, base_path="/")
    with pytest.raises(ValueError, match="declared twice"):
        table.add(REST_ROUTES[:1], _api(tmp_path / "again"))


def _documented_routes() -> set[tuple[str, str, str]]:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split("## HTTP routes", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| (GET|POST|PUT|DELETE) \| `([^`]+)` \| (\w+) \|", section, re.M))


def test_the_documented_route_table_is_the_declared_one() -> None:
    declared = {(r.method, r.path, r.role.value) for r in http_routes()}
    assert _documented_routes() == declared


def test_the_readme_names_only_declared_routes() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    [line] = [ln for ln in readme.splitlines() if ln.startswith("| `statlane serve")]
    named = re.findall(r"`(?:(GET|POST) )?(/[^`]*)`", line)
    assert named
    paths = {(r.method, r.path) for r in http_routes()}
    method = "GET"
    for given, path in named:
        method = given or method  # "`GET /health`, `/metrics`": the method carries over
        assert (method, path) in paths, (method, path)


# ---- the REST API served through the table ------------------------------------------------------


def _api(tmp_path: Path) -> RestApi:
    store = JobStore(f"sqlite:///{tmp_path / 'statlane.db'}", clock=lambda: T0)
    store.record_instance(STUDY, SERIES, f"{SERIES}.1", "/spool/1.dcm", "ACC1", "PID1", "CT", "CT")
    store.create_task(
        STUDY,
        SERIES,
        rule_name="ct-head-ed",
        model_name="ich-ct-head",
        model_version="2",
        priority=PriorityClass.STAT,
        deadline_at=T0 + timedelta(minutes=1),
        mode="triage",
        destinations=["pacs"],
    )
    store.audit("probe", study_uid=STUDY, detail={"n": 1})
    outbox = Outbox(store, RetryPolicy(), clock=lambda: T0)
    outbox.enqueue("t1", "pacs", "sr", payload=b"secret payload", dedupe_key="k1")
    worklist = SharedWorklist(clock=lambda: T0)
    worklist.add(WorklistEntry(STUDY, "ACC1", T0))
    metrics = Metrics()
    metrics.inc("statlane_instances_received_total", modality="CT")
    return RestApi(
        store=store,
        outbox=outbox,
        worklist=worklist,
        metrics=metrics,
        worklist_mode="triage",
        inference_up=lambda: False,
    )


@pytest.fixture
def port(tmp_path: Path) -> Iterator[int]:
    table = RouteTable()
    table.add(REST_ROUTES, _api(tmp_path))
    spool = Spool(tmp_path / "spool", min_free_bytes=0)
    with StowServer(spool, host="127.0.0.1", port=0, routes=table) as server:
        yield server.port


def _call(port: int, path: str, method: str = "GET") -> tuple[int, Any, bytes]:
    data = b"" if method == "POST" else None
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def test_rest_routes_answer_from_the_components(port: int) -> None:
    status, headers, body = _call(port, "/health")
    assert (status, headers["Content-Type"]) == (200, "application/json")
    assert json.loads(body) == {"status": "ok", "reasons": [], "inference": "unavailable"}
    [study] = json.loads(_call(port, "/studies")[2])
    assert study["study_instance_uid"] == STUDY
    assert "patient_id_hash" not in study
    detail = json.loads(_call(port, f"/studies/{STUDY}/")[2])
    assert detail["study"]["study_instance_uid"] == STUDY
    assert len(detail["tasks"]) == 1
    assert len(json.loads(_call(port, "/tasks?state=queued")[2])) == 1
    [item] = json.loads(_call(port, "/outbox")[2])
    assert item["destination"] == "pacs"
    assert "payload" not in item
    [event] = json.loads(_call(port, f"/audit?study={STUDY}")[2])
    assert event["event"] == "probe"
    worklist = json.loads(_call(port, "/worklist?mode=shadow")[2])
    assert [r["study_instance_uid"] for r in worklist["published"]] == [STUDY]
    status, headers, body = _call(port, "/metrics")
    assert (status, headers["Content-Type"]) == (200, CONTENT_TYPE)
    assert b'statlane_instances_received_total{modality="CT"} 1.0' in body


def test_health_is_degraded_with_its_reasons_and_down_without_a_job_store(
    tmp_path: Path,
) -> None:
    api = _api(tmp_path)
    api.problems = lambda: ["destination pacs is down: cannot connect"]
    answer = api.health(_request("/health"))
    assert answer.status == 200  # degraded still takes and keeps every instance
    assert json.loads(answer.body) == {
        "status": "degraded",
        "reasons": ["destination pacs is down: cannot connect"],
        "inference": "unavailable",
    }

    def unreadable() -> list[str]:
        raise OperationalError("SELECT", {}, Exception("database is locked"))

    api.problems = unreadable
    answer = api.health(_request("/health"))
    assert answer.status == 503
    assert json.loads(answer.body)["status"] == "down"


def _request(path: str) -> Request:
    return Request("GET", path, path)


def test_rest_errors(port: int) -> None:
    status, _, body = _call(port, "/studies?state=nonsense")
    assert status == 400
    assert "nonsense" in json.loads(body)["error"]
    assert _call(port, "/worklist?mode=nonsense")[0] == 400
    status, _, body = _call(port, "/studies/9.9.9")
    assert (status, json.loads(body)) == (404, {"error": "unknown study"})
    assert _call(port, "/nothing")[::2] == (404, b"not found\n")
    status, headers, body = _call(port, "/worklist", method="POST")
    assert (status, headers["Allow"], body) == (405, "GET", b"method not allowed\n")
    status, headers, _ = _call(port, "/dicomweb/studies/1.2.3")
    assert (status, headers["Allow"]) == (405, "POST")
