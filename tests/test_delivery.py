"""Delivery destinations against real peers (Orthanc) and tiny local servers.

Orthanc tests are marked ``peers``; the HTTP, MLLP and DICOM failure cases run against servers
started here (``http.server``, a raw socket, a pynetdicom SCP) so every status class is hit.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE, evt

from models.synthetic.study import generate_study
from router.vocabulary import DeliveryKind
from serving.delivery.base import DeliveryError, Destination, Payload
from serving.delivery.config import build_destination, destination_config
from serving.delivery.dicom import DicomStoreDestination
from serving.delivery.folder import FolderDestination
from serving.delivery.http import HttpJsonDestination
from serving.delivery.mllp import MllpDestination
from serving.delivery.stow import StowRsDestination
from tests.orthanc_peer import OrthancPeer, free_port, orthanc_server

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
INSTANCE = DeliveryKind.SC  # any DICOM kind: destinations send the instance as it is


def build(config: dict[str, Any]) -> Destination:
    """The destination a configuration mapping describes, as ``statlane.yaml`` would give it."""
    return build_destination(destination_config(config))


# ---------------------------------------------------------------- test data


@pytest.fixture(scope="module")
def ct_study(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A small synthetic CT head (32 slices of 32 x 32), uncompressed."""
    out = tmp_path_factory.mktemp("ct")
    return generate_study("ct-head", out, seed=11, slices=32, matrix=32).files


def build_sr(source: Path, out: Path) -> Path:
    """A minimal Comprehensive 3D SR on the source's study (same patient, study, accession)."""
    src = pydicom.dcmread(source, stop_before_pixels=True)
    ds = Dataset()
    for keyword in (
        "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
        "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
    ):  # fmt: skip
        setattr(ds, keyword, src.get(keyword, ""))
    ds.SOPClassUID = COMPREHENSIVE_3D_SR
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "SR"
    ds.SeriesNumber = 900
    ds.InstanceNumber = 1
    ds.Manufacturer = "statlane"
    ds.ContentDate, ds.ContentTime = "20261130", "120000"
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = Sequence([_code("126000", "DCM", "Imaging Measurement Report")])
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    finding = Dataset()
    finding.RelationshipType = "CONTAINS"
    finding.ValueType = "TEXT"
    finding.ConceptNameCodeSequence = Sequence([_code("121071", "DCM", "Finding")])
    finding.TextValue = "Intracranial hemorrhage"
    ds.ContentSequence = Sequence([finding])
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = out / "sr.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, scheme, meaning
    return code


# ---------------------------------------------------------------- Orthanc (real PACS)


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancPeer]:
    with orthanc_server(tmp_path_factory.mktemp("orthanc")) as peer:
        yield peer


def qido_study(peer: OrthancPeer, study_uid: str) -> dict[str, Any]:
    """The single QIDO-RS study match for ``study_uid``."""
    matches = peer.get(f"/dicom-web/studies?StudyInstanceUID={study_uid}")
    assert len(matches) == 1, matches
    study: dict[str, Any] = matches[0]
    return study


def qido_value(match: dict[str, Any], tag: str) -> Any:
    return match[tag]["Value"][0]


def sop_instances(peer: OrthancPeer, study_uid: str) -> dict[str, str]:
    """SOP Instance UID -> SOP Class UID of every instance Orthanc has of the study."""
    rows = peer.get(f"/dicom-web/studies/{study_uid}/instances")
    return {qido_value(r, "00080018"): qido_value(r, "00080016") for r in rows}


@pytest.mark.peers
def test_c_store_ct_and_sr_to_orthanc_and_read_back(
    orthanc: OrthancPeer, ct_study: list[Path], tmp_path: Path
) -> None:
    ct = ct_study[0]
    sr = build_sr(ct, tmp_path)
    source = pydicom.dcmread(ct, stop_before_pixels=True)
    pacs = build(
        {"type": "dicom", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}
    )
    for path in (ct, sr):
        pacs.deliver(Payload(INSTANCE, path=path))
    study = qido_study(orthanc, source.StudyInstanceUID)
    assert qido_value(study, "00100020") == source.PatientID
    assert qido_value(study, "00080050") == source.AccessionNumber
    stored = sop_instances(orthanc, source.StudyInstanceUID)
    assert stored[str(source.SOPInstanceUID)] == CT_IMAGE
    assert stored[pydicom.dcmread(sr).SOPInstanceUID] == COMPREHENSIVE_3D_SR
    pacs.deliver(Payload(INSTANCE, path=sr))  # a re-send of the same instance is accepted


@pytest.mark.peers
def test_stow_rs_to_orthanc_and_read_back(orthanc: OrthancPeer, tmp_path: Path) -> None:
    ct = generate_study("ct-head", tmp_path, seed=12, slices=32, matrix=32).files[5]
    source = pydicom.dcmread(ct, stop_before_pixels=True)
    stow = build({"type": "stow", "url": orthanc.dicomweb_url})
    stow.deliver(Payload(INSTANCE, body=ct.read_bytes()))
    study = qido_study(orthanc, source.StudyInstanceUID)
    assert qido_value(study, "00100020") == source.PatientID
    assert qido_value(study, "00080050") == source.AccessionNumber
    assert list(sop_instances(orthanc, source.StudyInstanceUID)) == [source.SOPInstanceUID]


# ---------------------------------------------------------------- DICOM failures (local SCP)


@dataclass
class StoreScp:
    """A pynetdicom storage SCP on a free port answering every C-STORE with ``status``."""

    port: int
    status: int = 0x0000
    delay_s: float = 0.0
    received: list[tuple[str, str]] = field(default_factory=list)  # (SOP instance, syntax)
    associations: list[int] = field(default_factory=list)  # id() of each C-STORE's association
    server: Any = None

    def handle(self, event: Any) -> int:
        time.sleep(self.delay_s)
        self.received.append((event.request.AffectedSOPInstanceUID, event.context.transfer_syntax))
        self.associations.append(id(event.assoc))
        return self.status

    def open_associations(self) -> int:
        return sum(1 for a in self.server.active_associations if a.is_established)


@pytest.fixture
def store_scp() -> Iterator[StoreScp]:
    ae = AE(ae_title="TESTSCP")
    ae.require_called_aet = True
    for sop_class in (CT_IMAGE, COMPREHENSIVE_3D_SR):
        ae.add_supported_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    ae.add_supported_context(CT_IMAGE, RLELossless)
    scp = StoreScp(port=0)
    server = ae.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, scp.handle)]
    )
    assert server is not None  # a non-blocking start returns its server
    scp.port = server.server_address[1]
    scp.server = server
    try:
        yield scp
    finally:
        server.shutdown()


def scp_destination(
    scp: StoreScp, ae_title: str = "TESTSCP", timeout_s: float = 5.0
) -> DicomStoreDestination:
    return DicomStoreDestination(ae_title, "127.0.0.1", scp.port, timeout_s=timeout_s)


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (0x0000, "ok"),
        (0xB000, "ok"),  # warning: coercion of data elements, still stored
        (0xA700, "retryable"),  # out of resources
        (0xA7FF, "retryable"),
        (0xA900, "permanent"),  # dataset does not match SOP class
        (0xC000, "permanent"),  # cannot understand
        (0x0122, "permanent"),  # SOP class not supported
    ],
)
def test_c_store_status_decides_retry(
    store_scp: StoreScp, ct_study: list[Path], status: int, outcome: str
) -> None:
    store_scp.status = status
    destination = scp_destination(store_scp)
    payload = Payload(INSTANCE, path=ct_study[1])
    if outcome == "ok":
        destination.deliver(payload)
        assert len(store_scp.received) == 1
        return
    with pytest.raises(DeliveryError) as caught:
        destination.deliver(payload)
    assert caught.value.retryable is (outcome == "retryable")
    assert f"0x{status:04X}" in caught.value.message


def test_c_store_sends_a_compressed_file_in_its_own_transfer_syntax(
    store_scp: StoreScp, tmp_path: Path
) -> None:
    rle = generate_study("ct-head", tmp_path, seed=13, slices=32, matrix=32, compression="rle")
    scp_destination(store_scp).deliver(Payload(INSTANCE, path=rle.files[0]))
    assert store_scp.received[0][1] == RLELossless


def test_c_store_from_bytes_in_memory(store_scp: StoreScp, ct_study: list[Path]) -> None:
    uid = pydicom.dcmread(ct_study[2], stop_before_pixels=True).SOPInstanceUID
    scp_destination(store_scp).deliver(Payload(INSTANCE, body=ct_study[2].read_bytes()))
    assert store_scp.received == [(uid, ExplicitVRLittleEndian)]
    with pytest.raises(DeliveryError) as caught:
        scp_destination(store_scp).deliver(Payload(INSTANCE, body=b"not dicom"))
    assert not caught.value.retryable
    assert "not a readable DICOM" in caught.value.message


def test_c_store_to_a_closed_port_is_retryable(ct_study: list[Path]) -> None:
    destination = DicomStoreDestination("NOBODY", "127.0.0.1", free_port(), timeout_s=2.0)
    with pytest.raises(DeliveryError) as caught:
        destination.deliver(Payload(INSTANCE, path=ct_study[0]))
    assert caught.value.retryable
    assert "cannot connect" in caught.value.message


def test_an_association_rejected_permanently_is_permanent_and_says_why(
    store_scp: StoreScp, ct_study: list[Path]
) -> None:
    with pytest.raises(DeliveryError) as caught:
        scp_destination(store_scp, ae_title="WRONGAET").deliver(Payload(INSTANCE, path=ct_study[0]))
    assert not caught.value.retryable  # rejected-permanent: the same answer until reconfigured
    assert "association rejected" in caught.value.message
    assert "Called AE title not recognised" in caught.value.message


def test_dicom_probe_is_a_c_echo_that_fails_while_the_peer_is_down(store_scp: StoreScp) -> None:
    scp_destination(store_scp).probe()  # no Verification context offered: it still answers
    echo_scp = AE(ae_title="ECHO")
    echo_scp.add_supported_context("1.2.840.10008.1.1", ImplicitVRLittleEndian)
    server = echo_scp.start_server(("127.0.0.1", 0), block=False)
    assert server is not None
    try:
        DicomStoreDestination("ECHO", "127.0.0.1", server.server_address[1]).probe()
    finally:
        server.shutdown()
    with pytest.raises(DeliveryError, match="cannot connect"):
        DicomStoreDestination("NOBODY", "127.0.0.1", free_port(), timeout_s=2.0).probe()
    with pytest.raises(DeliveryError, match="association rejected"):
        scp_destination(store_scp, ae_title="WRONGAET").probe()


def test_http_mllp_and_folder_probes(tmp_path: Path) -> None:
    closed = free_port()
    for destination in (
        HttpJsonDestination(f"http://127.0.0.1:{closed}/hook", timeout_s=2.0),
        StowRsDestination(f"http://127.0.0.1:{closed}/dicom-web", timeout_s=2.0),
        MllpDestination("127.0.0.1", closed, timeout_s=2.0),
    ):
        with pytest.raises(DeliveryError) as caught:
            destination.probe()
        assert caught.value.retryable
    statuses = iter([405, 503])

    class Handler(BaseHTTPRequestHandler):
        def do_OPTIONS(self) -> None:
            self.send_response(next(statuses))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return

    with ThreadingHTTPServer(("127.0.0.1", 0), Handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        try:
            HttpJsonDestination(url).probe()  # 405: a server answers
            with pytest.raises(DeliveryError, match="HTTP 503"):
                HttpJsonDestination(url).probe()
        finally:
            server.shutdown()
    with socket.create_server(("127.0.0.1", 0)) as listening:
        MllpDestination("127.0.0.1", listening.getsockname()[1]).probe()
    FolderDestination(tmp_path / "new" / "folder").probe()
    assert (tmp_path / "new" / "folder").is_dir()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DeliveryError, match="cannot create"):
        FolderDestination(blocker / "sub").probe()


def test_peer_that_never_answers_times_out_retryable(ct_study: list[Path]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never speaks DICOM
        destination = DicomStoreDestination(
            "SILENT", "127.0.0.1", silent.getsockname()[1], timeout_s=0.5
        )
        started = time.monotonic()
        with pytest.raises(DeliveryError) as caught:
            destination.deliver(Payload(INSTANCE, path=ct_study[0]))
    assert caught.value.retryable
    assert "no answer to the association request" in caught.value.message
    assert time.monotonic() - started < 10


def test_no_c_store_response_is_retryable(store_scp: StoreScp, ct_study: list[Path]) -> None:
    store_scp.delay_s = 4.0  # the timeout also bounds the association set-up: leave it room
    with pytest.raises(DeliveryError) as caught:
        scp_destination(store_scp, timeout_s=1.5).deliver(Payload(INSTANCE, path=ct_study[0]))
    assert caught.value.retryable
    assert "no C-STORE response" in caught.value.message


def test_sop_class_the_peer_does_not_accept_is_permanent(
    store_scp: StoreScp, ct_study: list[Path], tmp_path: Path
) -> None:
    ds = pydicom.dcmread(ct_study[0])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.4")  # MR
    ds.save_as(tmp_path / "mr.dcm")
    with pytest.raises(DeliveryError) as caught:
        scp_destination(store_scp).deliver(Payload(INSTANCE, path=tmp_path / "mr.dcm"))
    assert not caught.value.retryable


def _sr_files(source: Path, folder: Path, count: int) -> list[Path]:
    """``count`` instances of the Comprehensive 3D SR class (the SCP does not read content)."""
    paths = []
    for k in range(count):
        ds = pydicom.dcmread(source)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID(COMPREHENSIVE_3D_SR)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        paths.append(folder / f"sr{k}.dcm")
        ds.save_as(paths[-1])
    return paths


def _wait_until(condition: Any, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_result_objects_share_one_kept_association(
    store_scp: StoreScp, ct_study: list[Path], tmp_path: Path
) -> None:
    destination = DicomStoreDestination("TESTSCP", "127.0.0.1", store_scp.port, keep_open_s=30)
    srs = _sr_files(ct_study[0], tmp_path, 3)
    for sr in srs:
        destination.deliver(Payload(INSTANCE, path=sr))
    assert len(store_scp.received) == 3
    assert len(set(store_scp.associations)) == 1
    assert store_scp.open_associations() == 1  # kept for the next result
    store_scp.status = 0xA700  # a failure status: the association answered, so it is kept
    with pytest.raises(DeliveryError) as caught:
        destination.deliver(Payload(INSTANCE, path=srs[0]))
    assert caught.value.retryable
    store_scp.status = 0x0000
    destination.deliver(Payload(INSTANCE, path=srs[1]))
    assert len(set(store_scp.associations)) == 1
    destination.deliver(Payload(INSTANCE, path=ct_study[1]))  # not a result object: its own
    assert len(set(store_scp.associations)) == 2
    destination.close()
    assert _wait_until(lambda: store_scp.open_associations() == 0)


def test_a_kept_association_the_peer_closed_is_replaced(
    store_scp: StoreScp, ct_study: list[Path], tmp_path: Path
) -> None:
    destination = DicomStoreDestination("TESTSCP", "127.0.0.1", store_scp.port, keep_open_s=30)
    first, second = _sr_files(ct_study[0], tmp_path, 2)
    destination.deliver(Payload(INSTANCE, path=first))
    for assoc in store_scp.server.active_associations:
        assoc.abort()  # the PACS's idle timeout, say
    assert _wait_until(lambda: store_scp.open_associations() == 0)
    destination.deliver(Payload(INSTANCE, path=second))
    assert [uid for uid, _ in store_scp.received] == [
        pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in (first, second)
    ]
    assert len(set(store_scp.associations)) == 2
    destination.close()


def test_an_idle_association_is_released_after_keep_open_s(
    store_scp: StoreScp, ct_study: list[Path], tmp_path: Path
) -> None:
    now = [0.0]
    destination = DicomStoreDestination(
        "TESTSCP", "127.0.0.1", store_scp.port, keep_open_s=5.0, clock=lambda: now[0]
    )
    first, second = _sr_files(ct_study[0], tmp_path, 2)
    destination.deliver(Payload(INSTANCE, path=first))
    now[0] = 6.0  # idle longer than keep_open_s
    destination.deliver(Payload(INSTANCE, path=second))
    assert len(set(store_scp.associations)) == 2
    assert _wait_until(lambda: store_scp.open_associations() == 1)  # the old one released
    destination.close()


def test_keep_open_zero_opens_one_association_per_payload(
    store_scp: StoreScp, ct_study: list[Path], tmp_path: Path
) -> None:
    destination = DicomStoreDestination("TESTSCP", "127.0.0.1", store_scp.port, keep_open_s=0)
    for sr in _sr_files(ct_study[0], tmp_path, 2):
        destination.deliver(Payload(INSTANCE, path=sr))
    assert len(set(store_scp.associations)) == 2
    assert _wait_until(lambda: store_scp.open_associations() == 0)
    with pytest.raises(ValueError, match="keep_open_s"):
        DicomStoreDestination("TESTSCP", "127.0.0.1", store_scp.port, keep_open_s=-1)


# ---------------------------------------------------------------- HTTP (local server)


@dataclass
class HttpPeer:
    """What a local HTTP server received and what it answers."""

    url: str
    status: int = 200
    answer: bytes = b""
    answer_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)  # extra response headers
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)


@contextlib.contextmanager
def http_peer() -> Iterator[HttpPeer]:
    peer = HttpPeer(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            peer.requests.append((self.path, dict(self.headers.items()), body))
            self.send_response(peer.status)
            self.send_header("Content-Type", peer.answer_type)
            self.send_header("Content-Length", str(len(peer.answer)))
            for key, value in peer.headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(peer.answer)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    peer.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield peer
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def stow_failure(reason: int) -> bytes:
    failed = {
        "00081155": {"vr": "UI", "Value": ["1.2.3.4"]},
        "00081197": {"vr": "US", "Value": [reason]},
    }
    return json.dumps({"00081198": {"vr": "SQ", "Value": [failed]}}).encode()


def test_stow_request_is_multipart_related_dicom(ct_study: list[Path]) -> None:
    with http_peer() as peer:
        StowRsDestination(peer.url + "/dicom-web/", headers={"Authorization": "Bearer t"}).deliver(
            Payload(INSTANCE, path=ct_study[0])
        )
    path, headers, body = peer.requests[0]
    assert path == "/dicom-web/studies"
    content_type = headers["Content-Type"]
    assert content_type.startswith('multipart/related; type="application/dicom"; boundary=')
    boundary = content_type.split("boundary=")[1]
    assert headers["Authorization"] == "Bearer t"
    assert headers["Accept"] == "application/dicom+json"
    head, part, tail = body.split(f"--{boundary}".encode())
    assert head == b""
    assert tail == b"--\r\n"
    assert (
        part == b"\r\nContent-Type: application/dicom\r\n\r\n" + ct_study[0].read_bytes() + b"\r\n"
    )


@pytest.mark.parametrize(
    ("status", "answer", "retryable"),
    [
        (500, b"", True),
        (503, b"busy", True),
        (429, b"", True),
        (400, b"bad multipart", False),
        (409, stow_failure(0xC000), False),
        (302, b"", False),  # a redirected POST would lose its body: refused, not followed
        (202, stow_failure(0xA700), True),  # accepted but this instance failed: out of resources
        (202, stow_failure(0xA900), False),
    ],
)
def test_stow_status_decides_retry(
    ct_study: list[Path], status: int, answer: bytes, retryable: bool
) -> None:
    with http_peer() as peer:
        peer.status, peer.answer = status, answer
        if status == 302:
            peer.headers["Location"] = peer.url + "/elsewhere"
        with pytest.raises(DeliveryError) as caught:
            StowRsDestination(peer.url).deliver(Payload(INSTANCE, path=ct_study[0]))
    assert caught.value.retryable is retryable
    assert len(peer.requests) == 1
    assert str(status) in caught.value.message or "failure reason" in caught.value.message


def test_stow_202_with_warnings_only_is_delivered(ct_study: list[Path]) -> None:
    with http_peer() as peer:
        peer.status, peer.answer = 202, json.dumps({"00081199": {"vr": "SQ", "Value": []}}).encode()
        StowRsDestination(peer.url).deliver(Payload(INSTANCE, path=ct_study[0]))


def test_http_to_a_closed_port_is_retryable() -> None:
    destination = HttpJsonDestination(f"http://127.0.0.1:{free_port()}/hook", timeout_s=2.0)
    with pytest.raises(DeliveryError) as caught:
        destination.deliver(Payload(DeliveryKind.WEBHOOK, body={"a": 1}))
    assert caught.value.retryable
    assert "cannot reach" in caught.value.message


def test_webhook_receives_the_json() -> None:
    signal = {"type": "statlane.worklist.rank", "new_rank": 1, "red_flag": True}
    with http_peer() as peer:
        peer.status = 204
        hook = build({"type": "webhook", "url": peer.url + "/hook", "name": "ris"})
        assert hook.name == "ris"
        hook.deliver(Payload(DeliveryKind.WEBHOOK, body=signal))
    path, headers, body = peer.requests[0]
    assert path == "/hook"
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == signal


OUTCOME = {
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "error", "code": "required", "diagnostics": "Patient DOE^JANE: ..."}],
}


def test_fhir_bundle_is_posted_to_the_base_as_fhir_json() -> None:
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": []}
    with http_peer() as peer:
        fhir = build({"type": "fhir", "url": peer.url + "/fhir"})
        fhir.deliver(Payload(DeliveryKind.FHIR, body=json.dumps(bundle)))
        peer.status = 422
        peer.answer = json.dumps(OUTCOME).encode()
        with pytest.raises(DeliveryError) as caught:
            fhir.deliver(Payload(DeliveryKind.FHIR, body=bundle))
    path, headers, body = peer.requests[0]
    assert (path, headers["Content-Type"], headers["Accept"]) == (
        "/fhir", "application/fhir+json", "application/fhir+json"
    )  # fmt: skip
    assert json.loads(body) == bundle
    assert not caught.value.retryable
    assert caught.value.message.endswith(
        "HTTP 422 Unprocessable Entity (OperationOutcome issues: required)"
    )
    assert "DOE" not in caught.value.message


def test_http_destination_refuses_what_it_cannot_send(ct_study: list[Path]) -> None:
    hook = HttpJsonDestination("http://127.0.0.1:9/hook")
    for payload in (
        Payload(INSTANCE, path=ct_study[0]),
        Payload(DeliveryKind.WEBHOOK, body="{not json"),
    ):
        with pytest.raises(DeliveryError) as caught:
            hook.deliver(payload)
        assert not caught.value.retryable


# ---------------------------------------------------------------- folder


def test_folder_writes_dicom_by_sop_instance_uid_atomically(
    ct_study: list[Path], tmp_path: Path
) -> None:
    root = tmp_path / "results"
    folder = FolderDestination(root)
    written = folder.write(Payload(INSTANCE, path=ct_study[0]))
    uid = pydicom.dcmread(ct_study[0], stop_before_pixels=True).SOPInstanceUID
    assert written == root / f"{uid}.dcm"
    assert written.read_bytes() == ct_study[0].read_bytes()
    folder.deliver(Payload(INSTANCE, body=ct_study[0].read_bytes()))  # re-run: same file
    assert sorted(p.name for p in root.iterdir()) == [f"{uid}.dcm"]


def test_folder_names_other_payloads_by_content_hash_never_by_phi(tmp_path: Path) -> None:
    message = "MSH|^~\\&|STATLANE|X|RIS|Y|20261130||ORU^R01|1|P|2.5\rPID|||12345||DOE^JANE\r"
    written = FolderDestination(tmp_path).write(Payload(DeliveryKind.HL7, body=message))
    assert written.name == hashlib.sha256(message.encode()).hexdigest() + ".hl7"
    assert written.read_bytes() == message.encode()


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_folder_dicom_with_a_non_uid_instance_uid_falls_back_to_hash(
    ct_study: list[Path], tmp_path: Path
) -> None:
    ds = pydicom.dcmread(ct_study[0])
    ds.SOPInstanceUID = "../DOE^JANE"  # not a UID: must not become a file name
    ds.save_as(tmp_path / "odd.dcm")
    data = (tmp_path / "odd.dcm").read_bytes()
    written = FolderDestination(tmp_path / "out").write(Payload(INSTANCE, body=data))
    assert written.name == hashlib.sha256(data).hexdigest() + ".dcm"


def test_folder_failed_write_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = FolderDestination(tmp_path)
    first = folder.write(Payload(DeliveryKind.WEBHOOK, body={"n": 1}))
    before = first.read_bytes()

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(DeliveryError) as caught:
        folder.deliver(Payload(DeliveryKind.WEBHOOK, body={"n": 1}))
    assert caught.value.retryable
    assert first.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name]


# ---------------------------------------------------------------- MLLP (local socket server)

ORU = "MSH|^~\\&|STATLANE|RAD|RIS|HOSP|20261130120000||ORU^R01^ORU_R01|MSG0001|P|2.5\rOBR|1\r"


def ack(code: str) -> str:
    """An ACK whose free text quotes patient data, as some receivers' do."""
    err = "" if code in ("AA", "CA") else "ERR|||207^Application internal error^HL70357|E\r"
    return (
        "MSH|^~\\&|RIS|HOSP|STATLANE|RAD|20261130120001||ACK^R01^ACK|ACK0001|P|2.5\r"
        f"MSA|{code}|MSG0001|no visit for DOE^JANE\r{err}"
    )


@contextlib.contextmanager
def mllp_peer(reply: Callable[[str], str]) -> Iterator[tuple[int, list[str]]]:
    """A one-thread MLLP receiver: reads one frame per connection, answers ``reply(message)``."""
    received: list[str] = []
    stop = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)  # so the loop notices ``stop`` promptly

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(10)
                data = b""
                while not data.endswith(b"\x1c\x0d"):
                    chunk = connection.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                message = data.removeprefix(b"\x0b").removesuffix(b"\x1c\x0d").decode()
                received.append(message)
                connection.sendall(b"\x0b" + reply(message).encode() + b"\x1c\x0d")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], received
    finally:
        stop.set()
        thread.join(5)
        listener.close()


@pytest.mark.parametrize(
    ("code", "outcome"),
    [("AA", "ok"), ("CA", "ok"), ("AE", "permanent"), ("CE", "permanent"), ("AR", "retryable")],
)
def test_mllp_ack_code_decides_retry(code: str, outcome: str) -> None:
    with mllp_peer(lambda _: ack(code)) as (port, received):
        destination = build({"type": "mllp", "host": "127.0.0.1", "port": port})
        if outcome == "ok":
            destination.deliver(Payload(DeliveryKind.HL7, body=ORU))
        else:
            with pytest.raises(DeliveryError) as caught:
                destination.deliver(Payload(DeliveryKind.HL7, body=ORU))
            assert caught.value.retryable is (outcome == "retryable")
            assert f"ACK {code} (HL7 error 207)" in caught.value.message
            assert "DOE" not in caught.value.message  # free text never reaches logs
    assert received == [ORU]


def test_mllp_to_a_closed_port_is_retryable() -> None:
    with pytest.raises(DeliveryError) as caught:
        MllpDestination("127.0.0.1", free_port(), timeout_s=2.0).deliver(
            Payload(DeliveryKind.HL7, body=ORU)
        )
    assert caught.value.retryable


def test_mllp_reply_that_is_not_an_ack_is_permanent() -> None:
    with mllp_peer(lambda _: "hello") as (port, _), pytest.raises(DeliveryError) as caught:
        MllpDestination("127.0.0.1", port).deliver(Payload(DeliveryKind.HL7, body=ORU))
    assert not caught.value.retryable
    assert "unreadable acknowledgment" in caught.value.message


# ---------------------------------------------------------------- factory and payload


DICOM_CONFIG = {"type": "dicom", "ae_title": "PACS", "host": "pacs", "port": "104"}


@pytest.mark.parametrize(
    ("config", "cls", "name"),
    [
        (DICOM_CONFIG, DicomStoreDestination, "dicom:PACS@pacs:104"),
        (
            {"type": "stow", "url": "https://u:p@pacs/web?x=1"},
            StowRsDestination,
            "stow:https://pacs/web",
        ),
        ({"type": "fhir", "url": "https://ehr/fhir"}, HttpJsonDestination, "fhir:https://ehr/fhir"),
        (
            {"type": "webhook", "url": "http://ris:80/hook"},
            HttpJsonDestination,
            "webhook:http://ris:80/hook",
        ),
        (
            {"type": "mllp", "host": "ris", "port": 2575, "timeout_s": 3},
            MllpDestination,
            "mllp:ris:2575",
        ),
        ({"type": "folder", "path": "var/results"}, FolderDestination, "folder:var/results"),
    ],
)
def test_build_destination(config: dict[str, Any], cls: type, name: str) -> None:
    destination = build(config)
    assert isinstance(destination, cls)
    assert isinstance(destination, Destination)
    assert destination.name == name  # no credentials or query in names


def test_a_destination_is_named_by_its_configuration_key_unless_named() -> None:
    folder = destination_config({"type": "folder", "path": "out"})
    assert build_destination(folder, "local-folder").name == "local-folder"
    named = destination_config({"type": "folder", "path": "out", "name": "results"})
    assert build_destination(named, "local-folder").name == "results"
    unnamed = destination_config({"type": "folder", "path": "out", "name": ""})
    assert build_destination(unnamed, "local-folder").name == "folder:out"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"type": "ftp", "url": "x"}, "Input tag 'ftp' found using 'type' does not match"),
        ({"url": "x"}, "Unable to extract tag using discriminator 'type'"),
        ({"type": "dicom", "host": "pacs"}, r"dicom\.ae_title\n  Field required"),
        ({"type": "dicom", "host": "pacs"}, r"dicom\.port\n  Field required"),
        (
            {"type": "folder", "path": "x", "colour": "red"},
            r"folder\.colour\n  Extra inputs are not permitted",
        ),
        ({"type": "webhook", "url": "ftp://x"}, "must be an absolute http"),
        ({"type": "dicom", "ae_title": "A" * 17, "host": "h", "port": 104}, "at most 16"),
        ({"type": "dicom", "ae_title": "A\\B", "host": "h", "port": 104}, "match pattern"),
        ({"type": "mllp", "host": "h", "port": 70000}, "less than 65536"),
        ({"type": "stow", "url": "http://x", "timeout_s": 0}, "greater than 0"),
        (
            {"type": "dicom", "ae_title": "A", "host": "h", "port": 1, "keep_open_s": -1},
            "greater than or equal to 0",
        ),
    ],
)
def test_destination_config_rejects_bad_configuration(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        destination_config(config)


def test_destinations_check_their_values_when_built_directly() -> None:
    with pytest.raises(ValueError, match="not a valid AE title"):
        DicomStoreDestination("A" * 17, "h", 104)
    with pytest.raises(ValueError, match="out of range"):
        MllpDestination("h", 70000)
    with pytest.raises(ValueError, match="must be an absolute http"):
        HttpJsonDestination("ftp://x")


def test_payload_validates_eagerly(tmp_path: Path) -> None:
    assert Payload(DeliveryKind.FHIR, body={}).content_type == "application/fhir+json"
    assert Payload("worklist", body={}).content_type == "application/json"  # type: ignore[arg-type]
    assert Payload(DeliveryKind.SR, body=b"DICM").content_type == "application/dicom"
    assert Payload(DeliveryKind.HL7, body="MSH").content_type == "x-application/hl7-v2+er7"
    with pytest.raises(ValueError, match="exactly one of path or body"):
        Payload(DeliveryKind.WEBHOOK)
    with pytest.raises(ValueError, match="takes a body, not a path"):
        Payload(DeliveryKind.HL7, path=tmp_path / "x")
    with pytest.raises(ValueError, match="not one of"):
        Payload("pdf", body=b"")  # type: ignore[arg-type]  # a kind outside the Literal
    with pytest.raises(ValueError, match="bytes of a Part 10 file"):
        Payload(DeliveryKind.SEG, body={"a": 1})


def test_delivery_error_reads_as_one_line() -> None:
    error = DeliveryError(True, "pacs: C-STORE failed with status 0xA700")
    assert str(error) == "pacs: C-STORE failed with status 0xA700 (retryable)"
