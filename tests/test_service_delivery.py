"""``statlane serve`` delivering to a real PACS: C-STORE and STOW-RS into Orthanc, read back by
QIDO-RS; no duplicates on re-run; retries, dead letters and ``statlane outbox``; STOW-RS and
compressed input into statlane; shadow and triage modes; the REST audit surface."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml
from pydicom.uid import generate_uid

from models.synthetic import generate_study
from router.messages import validate_rank_change_fhir, validate_rank_change_hl7
from serving.cli import main
from serving.gateway.routes import Request
from serving.jobstore import OutboxState, StudyState, TaskState
from serving.mllp import ack_code, send_message
from serving.service.app import Service
from tests.orthanc_peer import (
    DICOMWEB_PLUGIN,
    OrthancPeer,
    free_port,
    orthanc_server,
    stop_orthanc,
)
from tests.peers import require_executable
from tests.service_harness import running_service, service_config, storescu, wait_for
from tests.test_delivery import mllp_peer
from tests.test_service import _orm

pytestmark = pytest.mark.peers

DEFAULT_RULES = Path(__file__).resolve().parents[1] / "router" / "rules" / "default.yaml"
FAST_RETRY = {"base_delay_s": 0.2, "max_delay_s": 1.0, "max_attempts": 50}
OBJECT_MODALITIES = ["OT", "PR", "SEG", "SR"]  # SC, GSPS, SEG, SR
STORESCU_PROPOSE = {"jpeg-ls": "-xt", "rle": "-xr", "jpeg2000": "-xv"}

# QIDO-RS DICOM JSON tags
MODALITY, SOP_INSTANCE_UID = "00080060", "00080018"
PATIENT_ID, PATIENT_NAME, ACCESSION = "00100020", "00100010", "00080050"
STUDY_UID, FAILED_SOP_SEQUENCE, FAILURE_REASON = "0020000D", "00081198", "00081197"


# ---- helpers -----------------------------------------------------------------------------------


def _rules(tmp: Path, destinations: Sequence[str], mode: str | None = None) -> Path:
    """The bundled rules with their defaults sending to ``destinations`` (and in ``mode``)."""
    rules = yaml.safe_load(DEFAULT_RULES.read_text(encoding="utf-8"))
    rules["defaults"]["destinations"] = list(destinations)
    if mode is not None:
        rules["defaults"]["mode"] = mode
    path = tmp / f"rules-{uuid.uuid4().hex[:8]}.yaml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False), encoding="utf-8")
    return path


def _dicom_destination(port: int, aet: str = "ORTHANC") -> dict[str, Any]:
    return {"type": "dicom", "ae_title": aet, "host": "127.0.0.1", "port": port, "timeout_s": 5}


def _finished_tasks(service: Service, study_uid: str, count: int = 1) -> list[Any]:
    tasks = service.store.tasks(study_uid=study_uid)
    done = [t for t in tasks if t.state in (TaskState.DONE, TaskState.FAILED)]
    return done if len(done) >= count else []


def _study_in(service: Service, study_uid: str, state: StudyState) -> bool:
    study = service.store.study(study_uid)
    return study is not None and study.state is state


def _items(service: Service, state: OutboxState | None = None) -> list[Any]:
    return service.outbox.items(state)


def _all_delivered(service: Service, count: int) -> list[Any]:
    items = _items(service)
    delivered = [i for i in items if i.state is OutboxState.DELIVERED]
    return delivered if len(items) >= count and len(delivered) == len(items) else []


def _rest(service: Service, path: str) -> tuple[Any, bytes]:
    url = f"http://127.0.0.1:{service.ports.http}{path}"
    with urllib.request.urlopen(url, timeout=10) as response:
        body = response.read()
    return json.loads(body), body


def _qido(pacs: OrthancPeer, path: str) -> list[dict[str, Any]]:
    answer = pacs.get("/dicom-web" + path)
    return list(answer or [])


def _first(dataset: dict[str, Any], tag: str) -> Any:
    values = dataset.get(tag, {}).get("Value", [])
    return values[0] if values else None


def _pacs_objects(pacs: OrthancPeer, study_uid: str) -> list[dict[str, Any]]:
    """QIDO-RS instances of the study (the PACS holds only statlane's results)."""
    try:
        return _qido(pacs, f"/studies/{study_uid}/instances")
    except urllib.error.HTTPError:
        return []


def _wait_pacs_objects(pacs: OrthancPeer, study_uid: str, count: int = 4) -> list[Any]:
    return wait_for(
        lambda: found if len(found := _pacs_objects(pacs, study_uid)) >= count else None,
        timeout_s=60,
        what=f"{count} result objects in Orthanc",
    )


def _sop_uids(qido_instances: Sequence[dict[str, Any]]) -> list[str]:
    return sorted(str(_first(i, SOP_INSTANCE_UID)) for i in qido_instances)


def _payload_uids(items: Sequence[Any]) -> list[str]:
    """SOP Instance UIDs of the result objects that outbox items carry."""
    return sorted(
        str(pydicom.dcmread(i.payload_path, stop_before_pixels=True).SOPInstanceUID) for i in items
    )


def _source(study: Any) -> pydicom.Dataset:
    return pydicom.dcmread(study.files[0], stop_before_pixels=True)


@contextlib.contextmanager
def _orthanc_on(workdir: Path, dicom_port: int, aet: str = "ORTHANC") -> Iterator[OrthancPeer]:
    """Orthanc listening for DICOM on ``dicom_port`` (the fixture picks its own ports)."""
    binary = require_executable("Orthanc", "apt-get install orthanc orthanc-dicomweb")
    workdir.mkdir(parents=True, exist_ok=True)
    http_port = free_port()
    config: dict[str, Any] = {
        "Name": "statlane-late-pacs",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": aet,
        "RemoteAccessAllowed": True,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "UnknownSopClassAccepted": True,
        "Plugins": [str(DICOMWEB_PLUGIN)] if DICOMWEB_PLUGIN.exists() else [],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    (workdir / "orthanc.json").write_text(json.dumps(config))
    log = (workdir / "orthanc.log").open("wb")
    process = subprocess.Popen(
        [str(binary), str(workdir / "orthanc.json")],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, TCP_NODELAY="1"),
    )
    peer = OrthancPeer(aet, dicom_port, http_port, process)
    try:

        def answers() -> bool:
            assert process.poll() is None, f"Orthanc exited: see {workdir / 'orthanc.log'}"
            try:
                peer.get("/system")
            except OSError:
                return False
            return True

        wait_for(answers, timeout_s=30, what="Orthanc's REST API")
        yield peer
    finally:
        stop_orthanc(process, log)


def _multipart(parts: Sequence[tuple[str, bytes]]) -> tuple[bytes, str]:
    """A multipart/related body built by hand: ``(content type, bytes)`` per part."""
    boundary = f"test-{uuid.uuid4().hex}"
    body = b"".join(
        f"--{boundary}\r\nContent-Type: {kind}\r\n\r\n".encode() + data + b"\r\n"
        for kind, data in parts
    )
    body += f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def _stow(service: Service, parts: Sequence[tuple[str, bytes]]) -> tuple[int, Any]:
    body, content_type = _multipart(parts)
    request = urllib.request.Request(
        f"http://127.0.0.1:{service.ports.http}/dicomweb/studies",
        data=body,
        method="POST",
        headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


class _Webhook:
    """A tiny HTTP server that keeps every JSON document POSTed to it."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.raw: list[bytes] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hook.raw.append(data)
                hook.received.append(json.loads(data))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def __enter__(self) -> _Webhook:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _renamed_copy(study: Any, folder: Path) -> tuple[str, list[Path]]:
    """The study's files under a new Study/Series UID and accession (same pixels)."""
    folder.mkdir(parents=True)
    study_uid, series_uid = generate_uid(), generate_uid()
    files = []
    for path in study.files:
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.AccessionNumber = "R" + str(ds.AccessionNumber)[1:]
        ds.save_as(folder / path.name)
        files.append(folder / path.name)
    return study_uid, files


# ---- 1. results into Orthanc over C-STORE and STOW-RS, read back by QIDO-RS ---------------------


@pytest.mark.parametrize("transport", ["dicom", "stow"])
def test_every_result_object_reaches_orthanc_with_the_source_identity(
    tmp_path: Path, transport: str
) -> None:
    study = generate_study("ct-head", tmp_path / "in", seed=41, finding=True, matrix=256)
    source = _source(study)
    with orthanc_server(tmp_path / "orthanc") as pacs:
        destination = (
            _dicom_destination(pacs.dicom_port, pacs.aet)
            if transport == "dicom"
            else {"type": "stow", "url": pacs.dicomweb_url}
        )
        config = service_config(
            tmp_path,
            rules=str(_rules(tmp_path, ["pacs"])),
            destinations={"pacs": destination},
        )
        with running_service(config) as service:
            assert storescu(service.ports.dicom, study.files).returncode == 0
            [task] = wait_for(lambda: _finished_tasks(service, study.study_uid), what="task")
            assert task.state is TaskState.DONE, task.error
            assert task.result is not None
            assert task.result["critical_positive"] is True
            delivered = wait_for(lambda: _all_delivered(service, 4), what="4 deliveries")
            assert sorted(i.kind.value for i in delivered) == ["gsps", "sc", "seg", "sr"]
            assert {i.destination for i in delivered} == {"pacs"}

        instances = _wait_pacs_objects(pacs, study.study_uid)
        assert _sop_uids(instances) == _payload_uids(delivered)
        series = _qido(pacs, f"/studies/{study.study_uid}/series")
        assert sorted(str(_first(s, MODALITY)) for s in series) == OBJECT_MODALITIES
        [found] = _qido(pacs, f"/studies?StudyInstanceUID={study.study_uid}")
        assert _first(found, STUDY_UID) == source.StudyInstanceUID
        assert _first(found, PATIENT_ID) == source.PatientID
        assert _first(found, ACCESSION) == source.AccessionNumber
        assert _first(found, PATIENT_NAME)["Alphabetic"] == str(source.PatientName)


# ---- 2. a re-run on more images is a new version the PACS keeps; the same input sends nothing ----


def test_a_rerun_after_a_late_instance_sends_a_new_version_naming_its_predecessor(
    tmp_path: Path,
) -> None:
    """Generation 0 reads 32 of 33 slices; the late slice makes generation 1, whose objects
    have new UIDs (a PACS keeps the first object under a UID), so Orthanc holds both versions
    and the newest SR references all 33 images and names the first SR as its predecessor.
    The same instances sent again are duplicates and send nothing."""
    study = generate_study("ct-head", tmp_path / "in", seed=42, finding=True, slices=33, matrix=256)
    *first_files, late = study.files  # the last slice arrives after the study was handled
    with orthanc_server(tmp_path / "orthanc") as pacs:
        config = service_config(
            tmp_path,
            rules=str(_rules(tmp_path, ["pacs"])),
            destinations={"pacs": _dicom_destination(pacs.dicom_port, pacs.aet)},
        )
        with running_service(config) as service:
            assert storescu(service.ports.dicom, first_files).returncode == 0
            wait_for(lambda: _finished_tasks(service, study.study_uid), what="generation 0")
            wait_for(lambda: _study_in(service, study.study_uid, StudyState.DONE), what="done")
            wait_for(lambda: _all_delivered(service, 4), what="generation 0 delivered")
            first = _sop_uids(_wait_pacs_objects(pacs, study.study_uid))

            # The same instances again: duplicates, acknowledged, and no re-run.
            assert storescu(service.ports.dicom, first_files).returncode == 0
            wait_for(
                lambda: (
                    service.metrics.counter("statlane_instances_duplicate_total")
                    >= len(first_files)
                ),
                what="the duplicates recorded",
            )
            assert _study_in(service, study.study_uid, StudyState.DONE)
            assert len(service.store.tasks(study_uid=study.study_uid)) == 1

            # One new instance after completion: the study re-runs as generation 1.
            assert storescu(service.ports.dicom, [late]).returncode == 0
            tasks = wait_for(
                lambda: _finished_tasks(service, study.study_uid, count=2),
                what="generation 1 after the late instance",
            )
            assert sorted(t.generation for t in tasks) == [0, 1]
            assert all(t.state is TaskState.DONE for t in tasks), [t.error for t in tasks]
            wait_for(lambda: _all_delivered(service, 8), what="generation 1 delivered")
            wait_for(lambda: _study_in(service, study.study_uid, StudyState.DONE), what="done")
            initial, rerun = sorted(tasks, key=lambda t: t.generation)
            rerun_series = service.store.instances_of(rerun.series_instance_uid)
            assert len(rerun_series) == len(study.files)
            rerun_items = [i for i in _items(service) if i.task_id == rerun.task_id]
            new = _payload_uids(rerun_items)
            assert set(new).isdisjoint(first)  # a new version: new UIDs
            assert rerun.result is not None
            assert rerun.result["version"]["replaces"] == initial.task_id

        after = _sop_uids(_wait_pacs_objects(pacs, study.study_uid, count=8))
        assert after == sorted([*first, *new])
        srs = [
            pacs.get(f"/instances/{_orthanc_instance(pacs, uid)}/tags?simplify") for uid in after
        ]
        srs = [tags for tags in srs if tags.get("Modality") == "SR"]
        assert len(srs) == 2
        [newest] = [tags for tags in srs if tags["SOPInstanceUID"] in new]
        [oldest] = [tags for tags in srs if tags["SOPInstanceUID"] in first]
        assert "PredecessorDocumentsSequence" not in oldest
        [pre_study] = newest["PredecessorDocumentsSequence"]
        assert pre_study["StudyInstanceUID"] == study.study_uid
        [pre_series] = pre_study["ReferencedSeriesSequence"]
        assert pre_series["SeriesInstanceUID"] == oldest["SeriesInstanceUID"]
        [pre_sop] = pre_series["ReferencedSOPSequence"]
        assert pre_sop["ReferencedSOPInstanceUID"] == oldest["SOPInstanceUID"]

        def evidence(tags: dict[str, Any]) -> int:
            [ev_study] = tags["CurrentRequestedProcedureEvidenceSequence"]
            return sum(
                len(s["ReferencedSOPSequence"]) for s in ev_study["ReferencedSeriesSequence"]
            )

        assert evidence(oldest) == len(first_files)
        assert evidence(newest) == len(study.files)


def _orthanc_instance(pacs: OrthancPeer, sop_uid: str) -> str:
    [found] = pacs.post("/tools/lookup", sop_uid.encode())
    return str(found["ID"])


def test_a_late_instance_during_result_handling_reruns_the_whole_study(tmp_path: Path) -> None:
    """The late slice arrives while generation 0's result is being handed to delivery: the
    worklist keeps the bleed's red flag, and generation 1 is routed on all instances."""
    study = generate_study("ct-head", tmp_path / "in", seed=53, finding=True, slices=33, matrix=128)
    *first_files, late = study.files
    with running_service(service_config(tmp_path)) as service:
        statuses: list[str] = []
        update_ai, deliver = service.worklist.update_ai, service.results.enqueue_results

        def recording_update_ai(study_uid: str, status: Any, *args: Any, **kwargs: Any) -> Any:
            statuses.append(str(status))
            return update_ai(study_uid, status, *args, **kwargs)

        def deliver_then_late(task: Any, *args: Any) -> None:
            deliver(task, *args)
            if task.generation == 0:  # recorded before the coordinator goes on
                assert storescu(service.ports.dicom, [late]).returncode == 0
                wait_for(  # the study is RECEIVING only until its quiet period ends
                    lambda: (
                        "late-instance-rerun"
                        in {e.event for e in service.store.audit_events(study_uid=study.study_uid)}
                    ),
                    timeout_s=30,
                    what="the late instance reopening the study",
                )

        # A recording wrapper in place of the method.
        service.worklist.update_ai = recording_update_ai  # type: ignore[method-assign]
        service.results.enqueue_results = deliver_then_late  # type: ignore[method-assign,assignment]
        assert storescu(service.ports.dicom, first_files).returncode == 0
        tasks = wait_for(
            lambda: _finished_tasks(service, study.study_uid, count=2), what="generation 1"
        )
        assert [t.state for t in tasks] == [TaskState.DONE, TaskState.DONE], [
            t.error for t in tasks
        ]
        wait_for(lambda: _study_in(service, study.study_uid, StudyState.DONE), what="done")
        assert statuses == ["done", "done"]  # never "unavailable" in between
        routing = [r.decision for r in service.store.routing_decisions(study.study_uid)]
        assert [(d["generation"], len(d["tasks"])) for d in routing] == [(0, 1), (1, 1)]
        assert f"{len(study.files)} images" in routing[1]["tasks"][0]["series_reason"]


def _orthanc_study(pacs: OrthancPeer, study_uid: str) -> str:
    [orthanc_id] = pacs.post("/tools/lookup", study_uid.encode())
    return str(orthanc_id["ID"])


# ---- 3. destination down, then up: retries, then everything delivered --------------------------


def test_a_pacs_that_comes_up_late_gets_everything(tmp_path: Path) -> None:
    study = generate_study("ct-head", tmp_path / "in", seed=43, finding=True, matrix=256)
    port = free_port()  # nothing listens here until Orthanc starts on it
    config = service_config(
        tmp_path,
        rules=str(_rules(tmp_path, ["pacs"])),
        destinations={"pacs": _dicom_destination(port)},
        outbox={**FAST_RETRY, "probe_interval_s": 0.2},
    )
    with running_service(config) as service:
        assert storescu(service.ports.dicom, study.files).returncode == 0
        degraded = wait_for(
            lambda: answer if (answer := _health(service))["status"] == "degraded" else None,
            what="/health degraded while the PACS is down",
        )
        assert any(r.startswith("destination pacs is down") for r in degraded["reasons"])
        failing = wait_for(
            lambda: (
                items
                if len(items := _items(service)) == 4
                and all(i.attempts > 0 and i.last_error for i in items)
                else None
            ),
            what="4 items that failed at least once",
        )
        assert all(i.state in (OutboxState.PENDING, OutboxState.SENDING) for i in failing)
        assert all("cannot connect" in (i.last_error or "") for i in failing)
        assert _items(service, OutboxState.DEAD) == []

        with _orthanc_on(tmp_path / "orthanc", port) as pacs:
            delivered = wait_for(lambda: _all_delivered(service, 4), what="delivery")
            assert {i.id for i in delivered} == {i.id for i in failing}
            stored = _wait_pacs_objects(pacs, study.study_uid)
            assert _sop_uids(stored) == _payload_uids(delivered)
            wait_for(lambda: _health(service)["status"] == "ok", what="/health ok again")


def _health(service: Service) -> dict[str, Any]:
    """What ``GET /health`` answers."""
    answer: dict[str, Any] = json.loads(
        service.rest.health(Request("GET", "/health", "/health")).body
    )
    return answer


# ---- 4. dead letters, `statlane outbox list` and `statlane outbox retry --dead` -----------------


def test_dead_items_are_listed_and_revived_by_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = generate_study("ct-head", tmp_path / "in", seed=44, finding=True, matrix=256)
    port = free_port()
    config = service_config(
        tmp_path,
        rules=str(_rules(tmp_path, ["pacs"])),
        destinations={"pacs": _dicom_destination(port)},
        outbox={"base_delay_s": 0.2, "max_delay_s": 1.0, "max_attempts": 2},
    )
    with running_service(config) as service:
        assert storescu(service.ports.dicom, study.files).returncode == 0
        dead = wait_for(
            lambda: items if len(items := _items(service, OutboxState.DEAD)) == 4 else None,
            what="4 dead items",
        )
        assert all(i.attempts == 2 for i in dead)

        capsys.readouterr()
        assert main(["outbox", "list", "--db", config.db_url]) == 0
        listing = capsys.readouterr().out
        rows = [line.split() for line in listing.splitlines()[1:]]
        assert sorted(int(r[0]) for r in rows if r[3] == "dead") == sorted(i.id for i in dead)

        with _orthanc_on(tmp_path / "orthanc", port) as pacs:
            assert main(["outbox", "retry", "--dead", "--db", config.db_url]) == 0
            assert "4 item(s) moved back to pending" in capsys.readouterr().out
            wait_for(lambda: _all_delivered(service, 4), what="revived items delivered")
            assert len(_wait_pacs_objects(pacs, study.study_uid)) == 4


# ---- 5. STOW-RS into statlane ------------------------------------------------------------------


def test_stow_rs_studies_are_processed_like_c_store_ones(tmp_path: Path) -> None:
    whole = generate_study("ct-head", tmp_path / "a", seed=45, finding=True, matrix=128)
    with_bad_part = generate_study("ct-head", tmp_path / "b", seed=46, matrix=128)
    with running_service(service_config(tmp_path)) as service:
        status, answer = _stow(
            service, [("application/dicom", p.read_bytes()) for p in whole.files]
        )
        assert status == 200, answer
        [task] = wait_for(lambda: _finished_tasks(service, whole.study_uid), what="STOW task")
        assert task.state is TaskState.DONE
        assert task.model == "ich-ct-head@2"
        assert task.result is not None
        assert task.result["critical_positive"] is True

        parts = [("application/dicom", p.read_bytes()) for p in with_bad_part.files]
        parts.insert(3, ("application/dicom", b"this part is not a DICOM instance"))
        status, answer = _stow(service, parts)
        assert status == 202, answer
        [failure] = answer[FAILED_SOP_SEQUENCE]["Value"]
        assert _first(failure, FAILURE_REASON) == 0xC000
        assert len(answer["00081199"]["Value"]) == len(with_bad_part.files)
        [task] = wait_for(lambda: _finished_tasks(service, with_bad_part.study_uid), what="task")
        assert task.state is TaskState.DONE, task.error
        assert task.result is not None
        assert task.result["critical_positive"] is False
        counts = [s.instance_count for s in service.store.series_of(with_bad_part.study_uid)]
        assert counts == [len(with_bad_part.files)]


# ---- 6. compressed input through serve ---------------------------------------------------------


@pytest.mark.parametrize("compression", ["jpeg-ls", "rle", "jpeg2000"])
def test_compressed_studies_give_the_same_findings_as_uncompressed(
    tmp_path: Path, compression: str
) -> None:
    plain = generate_study("ct-head", tmp_path / "plain", seed=47, finding=True, matrix=256)
    packed = generate_study(
        "ct-head", tmp_path / "packed", seed=47, finding=True, matrix=256, compression=compression
    )
    syntax = pydicom.dcmread(packed.files[0], stop_before_pixels=True).file_meta
    assert syntax.TransferSyntaxUID.is_compressed
    plain_uid, plain_files = _renamed_copy(plain, tmp_path / "renamed")
    with running_service(service_config(tmp_path)) as service:
        sent = storescu(service.ports.dicom, packed.files, extra=[STORESCU_PROPOSE[compression]])
        assert sent.returncode == 0, sent.stderr
        assert storescu(service.ports.dicom, plain_files).returncode == 0
        [packed_task] = wait_for(lambda: _finished_tasks(service, packed.study_uid), what="task")
        [plain_task] = wait_for(lambda: _finished_tasks(service, plain_uid), what="plain task")
        assert packed_task.state is TaskState.DONE, packed_task.error
        assert plain_task.state is TaskState.DONE, plain_task.error
        spooled = service.store.instances_of(packed.series_uid)
        stored = pydicom.dcmread(spooled[0].path, stop_before_pixels=True).file_meta
        assert stored.TransferSyntaxUID == syntax.TransferSyntaxUID  # received as sent

        def findings(task: Any) -> dict[str, tuple[bool, float]]:
            return {
                f["concept_value"]: (f["present"], f["probability"])
                for f in task.result["findings"]
            }

        assert packed_task.result["critical_positive"] is True
        packed_findings, plain_findings = findings(packed_task), findings(plain_task)
        assert {k: v[0] for k, v in packed_findings.items()} == {
            k: v[0] for k, v in plain_findings.items()
        }
        for code, (_, probability) in packed_findings.items():  # lossless: the same pixels
            assert probability == pytest.approx(plain_findings[code][1], abs=1e-4)


# ---- 7. modes: shadow keeps results to itself; triage signals without DICOM objects ------------


def test_shadow_mode_keeps_the_result_and_publishes_the_native_order(tmp_path: Path) -> None:
    normal = generate_study("ct-head", tmp_path / "a", seed=48, matrix=128)
    bleed = generate_study("ct-head", tmp_path / "b", seed=49, finding=True, matrix=256)
    config = service_config(tmp_path, rules=str(_rules(tmp_path, ["local-folder"], "shadow")))
    with running_service(config) as service:
        assert storescu(service.ports.dicom, normal.files).returncode == 0
        wait_for(lambda: service.store.study(normal.study_uid), what="first study")
        assert storescu(service.ports.dicom, bleed.files).returncode == 0
        for uid in (normal.study_uid, bleed.study_uid):
            [task] = wait_for(partial(_finished_tasks, service, uid), what="task")
            assert task.state is TaskState.DONE
            assert task.mode == "shadow"
            assert task.result is not None
            assert task.result["findings"]
        [task] = service.store.tasks(study_uid=bleed.study_uid)
        assert task.result is not None
        assert task.result["critical_positive"] is True
        events = [e.event for e in service.store.audit_events(study_uid=bleed.study_uid)]
        assert "shadow-result-kept" in events
        assert _items(service) == []
        assert not (tmp_path / "delivered").exists() or not any((tmp_path / "delivered").iterdir())

        worklist, _ = _rest(service, "/worklist")
        order = [r["study_instance_uid"] for r in worklist["published"]]
        assert order == [r["study_instance_uid"] for r in worklist["native"]]
        assert order == [normal.study_uid, bleed.study_uid]
        assert not any(r["red_flag"] or r["label"] for r in worklist["published"])


def test_triage_mode_signals_the_worklist_and_sends_no_dicom_object(tmp_path: Path) -> None:
    normal = generate_study("ct-head", tmp_path / "a", seed=50, matrix=128)
    bleed = generate_study("ct-head", tmp_path / "b", seed=51, finding=True, matrix=256)
    with _Webhook() as hook:
        config = service_config(
            tmp_path,
            rules=str(_rules(tmp_path, ["local-folder", "hook"], "triage")),
            destinations={
                "local-folder": {"type": "folder", "path": str(tmp_path / "delivered")},
                "hook": {"type": "webhook", "url": hook.url},
            },
            worklist={"signals": ["hook"]},
        )
        with running_service(config) as service:
            assert storescu(service.ports.dicom, normal.files).returncode == 0
            wait_for(lambda: _finished_tasks(service, normal.study_uid), what="first task")
            assert storescu(service.ports.dicom, bleed.files).returncode == 0
            [task] = wait_for(lambda: _finished_tasks(service, bleed.study_uid), what="task")
            assert task.state is TaskState.DONE
            assert task.mode == "triage"

            def flagged() -> list[dict[str, Any]]:
                return [
                    d
                    for d in hook.received
                    if d.get("type") == "statlane.worklist.rank"
                    and d["study_instance_uid"] == bleed.study_uid
                    and d["red_flag"]
                    and d["new_rank"] == 1
                ]

            wait_for(flagged, what="the red-flag rank-change signal")

            def results_by_study() -> dict[str, dict[str, Any]]:
                return {
                    d["study_instance_uid"]: d
                    for d in hook.received
                    if d.get("event") == "ai-result"
                }

            by_study = wait_for(
                lambda: results_by_study() if len(results_by_study()) == 2 else None,
                what="a result signal per study",
            )
            assert by_study[bleed.study_uid]["critical_positive"] is True
            assert by_study[normal.study_uid]["critical_positive"] is False
            kinds = {i.kind.value for i in _items(service)}
            assert kinds == {"webhook", "worklist"}, kinds  # no SR, GSPS, SC or SEG
            assert not (tmp_path / "delivered").exists() or not any(
                (tmp_path / "delivered").iterdir()
            )
            rows, _ = _rest(service, "/worklist")
            assert rows["published"][0]["study_instance_uid"] == bleed.study_uid
            assert rows["published"][0]["red_flag"] is True

    names = {str(_source(s).PatientName) for s in (normal, bleed)}
    ids = {str(_source(s).PatientID) for s in (normal, bleed)}
    for raw in hook.raw:
        text = raw.decode()
        assert not any(n in text for n in names | ids)


def _hl7_ack(message: str) -> str:
    """An HL7 commit accept for ``message`` (MSA-2 echoes its control ID)."""
    control_id = message.split("\r")[0].split("|")[9]
    return (
        "MSH|^~\\&|RIS|HOSP|STATLANE|STATLANE|20261130120001||ACK^O01^ACK|A1|P|2.5.1\r"
        f"MSA|CA|{control_id}\r"
    )


def test_rank_changes_reach_the_ris_as_hl7_and_a_fhir_server_as_a_task(tmp_path: Path) -> None:
    normal = generate_study("ct-head", tmp_path / "a", seed=60, matrix=128)
    bleed = generate_study("ct-head", tmp_path / "b", seed=61, finding=True, matrix=256)
    with _Webhook() as fhir, mllp_peer(_hl7_ack) as (ris_port, ris_received):
        config = service_config(
            tmp_path,
            rules=str(_rules(tmp_path, ["local-folder"], "triage")),
            destinations={
                "local-folder": {"type": "folder", "path": str(tmp_path / "delivered")},
                "ris": {"type": "mllp", "host": "127.0.0.1", "port": ris_port},
                "fhir": {"type": "fhir", "url": fhir.url},
            },
            worklist={"signals": ["ris", "fhir"]},
        )
        with running_service(config) as service:
            assert storescu(service.ports.dicom, normal.files).returncode == 0
            wait_for(lambda: _finished_tasks(service, normal.study_uid), what="first task")
            assert service.ports.hl7 is not None  # the RIS's routine order for the bleed study
            ack = send_message("127.0.0.1", service.ports.hl7, _orm(bleed, "R"))
            assert ack_code(ack) == "AA"
            assert storescu(service.ports.dicom, bleed.files).returncode == 0

            def flagged_orm() -> list[str]:
                return [m for m in ris_received if bleed.study_uid in m and "^^^^^S" in m]

            def flagged_task() -> list[dict[str, Any]]:
                tasks = [e["resource"] for b in fhir.received for e in b.get("entry", [])]
                return [
                    t
                    for t in tasks
                    if t["focus"]["identifier"]["value"] == f"urn:oid:{bleed.study_uid}"
                    and t.get("priority") == "stat"
                ]

            [orm] = wait_for(flagged_orm, what="the red-flag ORM^O01 at the RIS")
            [task] = wait_for(flagged_task, what="the red-flag Task at the FHIR server")
            validate_rank_change_hl7(orm)
            validate_rank_change_fhir(task)
            accession = str(_source(bleed).AccessionNumber)
            assert f"|{accession}|" in orm
            assert "worklist rank" in orm
            assert "-> 1" in orm
            [orc] = [seg.split("|") for seg in orm.split("\r") if seg.startswith("ORC|")]
            assert orc[2:4] == [f"P{accession}", f"F{accession}"]  # the RIS's own numbers
            assert task["basedOn"][0]["identifier"]["value"] == accession
            assert all(b["type"] == "transaction" for b in fhir.received)
            assert all(m.split("\r")[0].split("|")[8] == "ORM^O01^ORM_O01" for m in ris_received)
            kinds = {i.kind.value for i in _items(service) if i.task_id == "worklist"}
            assert kinds == {"hl7", "fhir"}, kinds
    names = {str(_source(s).PatientName) for s in (normal, bleed)}
    ids = {str(_source(s).PatientID) for s in (normal, bleed)}
    for text in [*ris_received, *(raw.decode() for raw in fhir.raw)]:
        assert not any(n in text for n in names | ids)


# ---- 8. the REST audit surface -----------------------------------------------------------------


def test_rest_shows_state_routing_tasks_and_audit_without_patient_names(tmp_path: Path) -> None:
    study = generate_study("ct-head", tmp_path / "in", seed=52, finding=True, matrix=256)
    source = _source(study)
    with running_service(service_config(tmp_path)) as service:
        assert storescu(service.ports.dicom, study.files).returncode == 0
        wait_for(lambda: _finished_tasks(service, study.study_uid), what="task")
        wait_for(
            lambda: (s := service.store.study(study.study_uid)) and s.state is StudyState.DONE,
            what="study done",
        )
        detail, detail_raw = _rest(service, f"/studies/{study.study_uid}")
        audit, audit_raw = _rest(service, f"/audit?study={study.study_uid}")
        others = [_rest(service, path)[1] for path in ("/studies", "/tasks", "/outbox", "/audit")]

    assert detail["study"]["state"] == "done"
    assert detail["study"]["accession_number"] == study.accession_number
    [routing] = detail["routing"]
    assert routing["rules_hash"]
    assert [t["rule"] for t in routing["decision"]["tasks"]] == ["ct-head-noncontrast"]
    assert "ct-head-noncontrast: matched" in routing["decision"]["rules"]  # and why not others
    [task] = detail["tasks"]
    assert task["state"] == "done"
    assert task["model_name"] == "ich-ct-head"
    assert detail["series"][0]["instance_count"] == len(study.files)
    [done] = [e for e in audit if e["event"] == "task-done"]
    assert done["task_id"] == task["task_id"]
    assert done["detail"]["model"] == "ich-ct-head@2"
    assert all(e["study_instance_uid"] == study.study_uid for e in audit)
    name = str(source.PatientName)
    for raw in (detail_raw, audit_raw, *others):
        text = raw.decode()
        assert name not in text
        for part in filter(None, (source.PatientName.family_name, source.PatientName.given_name)):
            assert part not in text
        assert str(source.PatientID) not in text
