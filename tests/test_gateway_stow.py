"""STOW-RS over real HTTP: good parts stored, bad parts reported, malformed requests refused."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path

import pydicom
import pytest

from models.synthetic import SyntheticStudy, generate_study
from serving.gateway.errors import MalformedRequest
from serving.gateway.multipart import parse_media_type, split_multipart
from serving.gateway.routes import Request, Response, Role, Route, RouteTable
from serving.gateway.spool import Spool, StoredInstance
from serving.gateway.stow import StowServer, StowSummary
from tests.orthanc_peer import orthanc_server

BOUNDARY = "statlane-test-boundary-0123456789"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
REFERENCED, FAILED, REASON = "00081199", "00081198", "00081197"
SOP_CLASS, SOP_INSTANCE = "00081150", "00081155"


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> SyntheticStudy:
    return generate_study("ct-head", tmp_path_factory.mktemp("head"), seed=11, matrix=64)


@pytest.fixture(scope="module")
def chest(tmp_path_factory: pytest.TempPathFactory) -> SyntheticStudy:
    return generate_study("cr-chest", tmp_path_factory.mktemp("chest"), seed=12, matrix=64)


class Calls:
    def __init__(self) -> None:
        self.stored: list[StoredInstance] = []
        self.requests: list[StowSummary] = []


@pytest.fixture
def calls() -> Calls:
    return Calls()


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool", min_free_bytes=0)


@pytest.fixture
def server(spool: Spool, calls: Calls) -> Iterator[StowServer]:
    with StowServer(
        spool,
        host="127.0.0.1",
        port=0,
        on_stored=calls.stored.append,
        on_request_done=calls.requests.append,
    ) as running:
        yield running


def multipart(*parts: tuple[str | None, bytes], boundary: str = BOUNDARY) -> bytes:
    """A multipart body; each part is (Content-Type or None, content)."""
    chunks = [b"preamble to be ignored\r\n"]
    for content_type, content in parts:
        headers = f"Content-Type: {content_type}\r\n" if content_type else ""
        chunks.append(f"--{boundary}\r\n{headers}\r\n".encode() + content + b"\r\n")
    chunks.append(f"--{boundary}--\r\nepilogue".encode())
    return b"".join(chunks)


def dicom_parts(files: list[Path]) -> list[tuple[str | None, bytes]]:
    return [("application/dicom", path.read_bytes()) for path in files]


def post(
    server: StowServer,
    body: bytes | Iterable[bytes],
    content_type: str | None = CONTENT_TYPE,
    path: str = "",
) -> tuple[int, str, bytes]:
    """POST to /dicomweb/studies[path]; (status, content type, body) even for 4xx.

    An iterable body goes out with Transfer-Encoding: chunked.
    """
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.port}/dicomweb/studies{path}", data=body, method="POST"
    )
    if content_type is not None:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read()


def sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def spooled(spool: Spool) -> list[Path]:
    return sorted(spool.instances_dir.rglob("*.dcm"))


def test_three_good_instances_are_all_referenced(
    server: StowServer, spool: Spool, calls: Calls, head: SyntheticStudy
) -> None:
    files = head.files[:3]
    status, content_type, body = post(server, multipart(*dicom_parts(files)))

    assert (status, content_type) == (200, "application/dicom+json")
    answer = json.loads(body)
    assert FAILED not in answer
    references = answer[REFERENCED]["Value"]
    assert [r[SOP_INSTANCE]["Value"][0] for r in references] == [sop_uid(p) for p in files]
    assert {r[SOP_CLASS]["Value"][0] for r in references} == {"1.2.840.10008.5.1.4.1.1.2"}
    assert len(spooled(spool)) == 3
    assert [s.sop_instance_uid for s in calls.stored] == [sop_uid(p) for p in files]
    assert all(s.source.channel == "stow" for s in calls.stored)
    (summary,) = calls.requests
    assert summary.http_status == 200
    assert len(summary.stored) == 3
    assert summary.failed == []


def test_a_non_dicom_part_fails_alone_and_the_good_parts_are_kept(
    server: StowServer, spool: Spool, calls: Calls, head: SyntheticStudy
) -> None:
    good = dicom_parts(head.files[:2])
    body = multipart(good[0], ("application/dicom", b"%PDF-1.4 not DICOM" * 20), good[1])

    status, _, raw = post(server, body, path=f"/{head.study_uid}")

    assert status == 202
    answer = json.loads(raw)
    assert len(answer[REFERENCED]["Value"]) == 2
    (failure,) = answer[FAILED]["Value"]
    assert failure[REASON] == {"vr": "US", "Value": [0xC000]}
    [comment] = failure["00000902"]["Value"]  # the reason in words, as a DIMSE Error Comment
    assert comment == calls.requests[0].failed[0].reason[:64]
    assert "DICOM" in comment
    assert len(spooled(spool)) == 2
    assert calls.requests[0].failed[0].part_index == 2


def test_a_part_of_another_media_type_is_a_failed_item(
    server: StowServer, spool: Spool, head: SyntheticStudy
) -> None:
    body = multipart(*dicom_parts(head.files[:1]), ("application/json", b"{}"))
    status, _, raw = post(server, body)
    assert status == 202
    assert json.loads(raw)[FAILED]["Value"][0][REASON]["Value"] == [0xC000]
    assert len(spooled(spool)) == 1


def test_instances_of_another_study_fail_with_a900(
    server: StowServer, spool: Spool, head: SyntheticStudy, chest: SyntheticStudy
) -> None:
    body = multipart(*dicom_parts(head.files[:2]), *dicom_parts(chest.files[:1]))

    status, _, raw = post(server, body, path=f"/{head.study_uid}")

    assert status == 202
    answer = json.loads(raw)
    (failure,) = answer[FAILED]["Value"]
    assert failure[REASON]["Value"] == [0xA900]
    assert failure[SOP_INSTANCE]["Value"] == [sop_uid(chest.files[0])]
    assert len(answer[REFERENCED]["Value"]) == 2
    assert len(spooled(spool)) == 2

    status, _, raw = post(server, multipart(*dicom_parts(chest.files)), path=f"/{head.study_uid}")
    assert status == 409
    assert REFERENCED not in json.loads(raw)


def test_out_of_space_fails_every_part_with_a700(tmp_path: Path, head: SyntheticStudy) -> None:
    full = Spool(tmp_path, min_free_bytes=1 << 30, free_bytes=lambda _: 1 << 20)
    with StowServer(full, host="127.0.0.1", port=0) as server:
        status, _, raw = post(server, multipart(*dicom_parts(head.files[:2])))
    assert status == 409
    reasons = [item[REASON]["Value"][0] for item in json.loads(raw)[FAILED]["Value"]]
    assert reasons == [0xA700, 0xA700]
    assert spooled(full) == []


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("application/dicom", 415),
        ("application/json", 415),
        (f'multipart/related; type="application/dicom+json"; boundary={BOUNDARY}', 415),
        (None, 415),
        ('multipart/related; type="application/dicom"', 400),
        ('multipart/related; type="application/dicom"; boundary=""', 400),
        (f'multipart/related; type="application/dicom"; boundary={"x" * 201}', 400),
    ],
    ids=["single-dicom", "json", "dicom-json-parts", "none", "no-boundary", "empty", "too-long"],
)
def test_malformed_requests_are_refused_before_storing(
    server: StowServer,
    spool: Spool,
    calls: Calls,
    head: SyntheticStudy,
    content_type: str | None,
    expected: int,
) -> None:
    status, _, _ = post(server, multipart(*dicom_parts(head.files[:1])), content_type)
    assert status == expected
    assert spooled(spool) == []
    assert calls.stored == []
    assert calls.requests[0].http_status == expected


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        ("/../../etc", b"", 404),
        ("/1.2.3/series", b"", 404),
        ("/not-a-uid", b"", 400),
    ],
)
def test_bad_urls(server: StowServer, path: str, body: bytes, expected: int) -> None:
    assert post(server, body, path=path)[0] == expected


def test_truncated_upload_and_empty_multipart_are_bad_requests(
    server: StowServer, spool: Spool, head: SyntheticStudy
) -> None:
    whole = multipart(*dicom_parts(head.files[:2]))
    assert post(server, whole[: len(whole) // 2 + 100])[0] == 400  # no closing boundary
    assert post(server, f"--{BOUNDARY}--\r\n".encode())[0] == 400
    assert spooled(spool) == []


def test_body_over_the_limit_is_413(tmp_path: Path, head: SyntheticStudy) -> None:
    spool = Spool(tmp_path, min_free_bytes=0)
    with StowServer(spool, host="127.0.0.1", port=0, max_body_bytes=1000) as server:
        status, _, _ = post(server, multipart(*dicom_parts(head.files[:1])))
    assert status == 413
    assert spooled(spool) == []


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_large_bodies_are_kept_on_disk_and_parsed_the_same(
    tmp_path: Path, head: SyntheticStudy, chunked: bool
) -> None:
    spool = Spool(tmp_path, min_free_bytes=0)
    body = multipart(*dicom_parts(head.files[:4]))
    with StowServer(spool, host="127.0.0.1", port=0, memory_body_bytes=1024) as server:
        if chunked:  # urllib sends an iterable body with Transfer-Encoding: chunked
            status, _, raw = post(server, iter([body[:5000], body[5000:]]))
        else:
            status, _, raw = post(server, body)
    assert status == 200
    assert len(json.loads(raw)[REFERENCED]["Value"]) == 4
    stored = {pydicom.dcmread(p).SOPInstanceUID for p in spooled(spool)}
    assert stored == {sop_uid(p) for p in head.files[:4]}


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


class _Other:
    """Another API sharing the port, as the REST API does."""

    def ok(self, request: Request) -> Response:
        body = json.dumps({"rest": True, "query": dict(request.query)}).encode()
        return Response(200, "application/json", body)

    def boom(self, request: Request) -> Response:
        raise RuntimeError("bug in the REST layer")


OTHER_ROUTES = (
    Route("GET", "/worklist", Role.VIEWER, _Other.ok, "a read"),
    Route("GET", "/boom", Role.VIEWER, _Other.boom, "a bug"),
)


def test_health_and_other_routes(spool: Spool) -> None:
    routes = RouteTable()
    routes.add(OTHER_ROUTES, _Other())
    with StowServer(spool, host="127.0.0.1", port=0, routes=routes) as server:
        assert get(server.port, "/dicomweb/health") == (200, b'{"status": "ok"}')
        assert get(server.port, "/worklist?x=1") == (200, b'{"rest": true, "query": {"x": "1"}}')
        assert get(server.port, "/worklist/") == (200, b'{"rest": true, "query": {}}')
        assert get(server.port, "/nothing") == (404, b"not found\n")
        assert get(server.port, "/boom") == (500, b"internal error\n")
        assert get(server.port, "/dicomweb/health")[0] == 200  # still serving
        assert [(r.method, r.path) for r in server.routes.routes] == [
            ("GET", "/worklist"),
            ("GET", "/boom"),
            ("GET", "/dicomweb/health"),
            ("POST", "/dicomweb/studies"),
            ("POST", "/dicomweb/studies/{study}"),
        ]


def test_a_known_path_with_another_method_is_405_with_allow(server: StowServer) -> None:
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}/dicomweb/studies")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 405
    assert refused.value.headers["Allow"] == "POST"
    assert refused.value.read() == b"method not allowed\n"
    status, _, body = post(server, b"", path="/../health")  # POST /dicomweb/studies/../health
    assert (status, body) == (404, b"not found\n")
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.port}/dicomweb/health", data=b"x", method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 405
    assert refused.value.headers["Allow"] == "GET"
    assert refused.value.headers["Connection"] == "close"  # the body was not read


@pytest.mark.parametrize(
    "body",
    [
        b"--b\r\nContent-Type: application/dicom\r\n\r\nONE\r\n--b\r\n\r\nTWO\r\n--b--",
        b"junk\r\n--b  \r\nContent-Type:\r\n application/dicom\r\n\r\nONE\r\n--b\t\r\n"
        b"\r\nTWO\r\n--b--\r\nepilogue --b\r\n",
    ],
    ids=["minimal", "preamble-padding-folding-epilogue"],
)
def test_multipart_framing(body: bytes) -> None:
    parts = split_multipart(body, "b")
    assert [p.content(body) for p in parts] == [b"ONE", b"TWO"]
    assert parts[0].media_type is not None
    assert parts[0].media_type.essence == "application/dicom"
    assert parts[1].headers == {}


def test_content_that_contains_the_boundary_text_mid_line_is_kept() -> None:
    body = b"--b\r\n\r\nA--b not a delimiter\r\n--bb\r\n--b--"
    (part,) = split_multipart(body, "b")
    assert part.content(body) == b"A--b not a delimiter\r\n--bb"


def test_media_type_parameters_are_unquoted_and_case_insensitive() -> None:
    parsed = parse_media_type('Multipart/Related; TYPE="application/dicom"; boundary="a b;c"')
    assert parsed.essence == "multipart/related"
    assert parsed.parameters == {"type": "application/dicom", "boundary": "a b;c"}
    with pytest.raises(MalformedRequest):
        parse_media_type("not a media type")


@pytest.mark.peers
def test_orthanc_sends_a_study_with_stow_rs(
    tmp_path: Path, server: StowServer, spool: Spool, head: SyntheticStudy
) -> None:
    with orthanc_server(tmp_path / "orthanc") as peer:
        for path in head.files:
            peer.post("/instances", path.read_bytes())
        (study_id,) = peer.get("/studies")
        url = f"http://127.0.0.1:{server.port}/dicomweb/"
        request = urllib.request.Request(
            f"{peer.url}/dicom-web/servers/statlane",
            data=json.dumps({"Url": url}).encode(),
            method="PUT",
        )
        urllib.request.urlopen(request, timeout=30).close()
        # Orthanc streams the study chunked and answers 500 if we refuse any part of it.
        peer.post("/dicom-web/servers/statlane/stow", {"Resources": [study_id]})
    assert {pydicom.dcmread(p).SOPInstanceUID for p in spooled(spool)} == {
        sop_uid(p) for p in head.files
    }
