"""Fuzzing the running listeners over real sockets on 127.0.0.1 (issue 15, part 5).

One DICOM gateway, one STOW-RS server and one MLLP listener serve the whole module. Each case
sends mutated bytes on a new connection, half-closes, and reads until the server closes: the
answer must be a protocol-level refusal or a success (A-ASSOCIATE-AC/RJ, A-ABORT, a DIMSE
status, A-RELEASE-RP, a closed connection; HTTP 2xx/4xx/503; HL7 AA/AE/AR), never an exception
on a server thread or an error logged with a traceback (``tests/fuzz_support.watching_servers``).
Every ``ALIVE_EVERY`` cases, and once at the end, a real C-ECHO, ``GET /dicomweb/health`` and a
valid order must still succeed, and the process RSS must stay within ``RSS_BUDGET_BYTES``.

The in-process parser fuzzing (many more examples) is ``tests/test_fuzz_parsers.py``; budget
and seed are in ``tests/fuzz_support.py``.
"""

from __future__ import annotations

import http.client
import re
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pynetdicom import AE

from router.vocabulary import OrderContext
from serving.gateway.dimse import DicomGateway
from serving.gateway.fast_store import parse_command_set
from serving.gateway.hl7_orders import OrderReceiver
from serving.gateway.mllp import MllpServer
from serving.gateway.spool import Spool
from serving.gateway.stow import StowServer
from serving.mllp import END_BLOCK, START_BLOCK, MllpDecoder, ack_code, decode_hl7, frame
from tests.fuzz_support import (
    RSS_BUDGET_BYTES,
    VERIFICATION,
    Watch,
    associate_rq,
    fuzz_settings,
    mutated,
    p_data_tf,
    pdv,
    rss_bytes,
    small_ct,
    store_command,
    watching_servers,
)
from tests.test_fuzz_parsers import BOUNDARY, CONTENT_TYPE, MULTIPART, OMI, ORM

# pydicom warns about each odd value the servers decode; pytest would keep every warning.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

ALIVE_EVERY = 40  # cases between liveness checks
READ_TIMEOUT_S = 10.0  # a server that neither answers nor closes in this time fails the case
NOW = datetime(2024, 3, 11, 8, 30, 5, tzinfo=UTC)
SOP_UID, DATA_SET, PART10 = small_ct()
ASSOCIATE_RQ = associate_rq()
RELEASE_RQ = bytes([0x05, 0]) + (4).to_bytes(4, "big") + bytes(4)

A_ASSOCIATE_AC, A_ASSOCIATE_RJ, P_DATA_TF, A_RELEASE_RP, A_ABORT = 0x02, 0x03, 0x04, 0x06, 0x07
#: DIMSE statuses the gateway answers by design (0xC211 "unable to process" means an
#: unexpected exception, which the watch reports as well).
EXPECTED_STATUSES = frozenset({0x0000, 0xA700, 0xC000, 0x0122, 0x0211, 0x0212, 0xA900})


@dataclass
class Servers:
    """The listeners of this module, the watch on their threads and the liveness bookkeeping."""

    gateway: DicomGateway
    stow: StowServer
    mllp: MllpServer
    watch: Watch
    rss_before: int
    orders: list[OrderContext] = field(default_factory=list)
    cases: int = 0

    def case_done(self) -> None:
        """After each case: nothing escaped a server thread; every ALIVE_EVERY, all answer."""
        problems = self.watch.problems()
        self.watch.clear()  # reported once: the next case starts clean
        assert not problems, problems
        self.cases += 1
        if self.cases % ALIVE_EVERY == 0:
            self.assert_alive()

    def assert_alive(self) -> None:
        """A C-ECHO, GET /dicomweb/health and a valid ORM succeed; RSS within budget."""
        ae = AE(ae_title="FUZZECHO")
        ae.add_requested_context(VERIFICATION)
        association = ae.associate("127.0.0.1", self.gateway.port, ae_title="STATLANE")
        assert association.is_established, "the gateway no longer associates"
        try:
            status = association.send_c_echo()
            assert int(status.Status) == 0x0000
        finally:
            association.release()
        connection = http.client.HTTPConnection("127.0.0.1", self.stow.port, timeout=10)
        try:
            connection.request("GET", "/dicomweb/health")
            assert connection.getresponse().status == 200
        finally:
            connection.close()
        (ack,) = mllp_exchange(self.mllp.port, frame(ORM))
        assert ack_code(ack) == "AA"
        grown = rss_bytes() - self.rss_before
        assert grown < RSS_BUDGET_BYTES, f"RSS grew by {grown / 1024**2:.0f} MiB"
        problems = self.watch.problems()
        self.watch.clear()
        assert not problems, problems


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    root = tmp_path_factory.mktemp("fuzz")
    received: list[OrderContext] = []
    receiver = OrderReceiver(received.append, clock=lambda: NOW)
    with watching_servers() as watch:
        rss_before = rss_bytes()
        gateway = DicomGateway(
            Spool(root / "dicom-spool", min_free_bytes=0),
            host="127.0.0.1",
            port=0,
            association_timeout_s=1.0,
            idle_timeout_s=5.0,
            max_connections_per_address=64,
        )
        stow = StowServer(
            Spool(root / "stow-spool", min_free_bytes=0),
            host="127.0.0.1",
            port=0,
            max_body_bytes=1024**2,
            header_timeout_s=2.0,
            idle_timeout_s=2.0,
        )
        mllp = MllpServer(
            receiver.handle,
            host="127.0.0.1",
            port=0,
            max_message_bytes=4096,
            idle_timeout_s=2.0,
            frame_timeout_s=2.0,
        )
        with gateway, stow, mllp:
            yield Servers(gateway, stow, mllp, watch, rss_before, received)


# ---------------------------------------------------------------- sockets


def _send_and_drain(connection: socket.socket, writes: tuple[bytes, ...], into: bytearray) -> None:
    """Send ``writes``, half-close, read until the server closes (or resets)."""
    try:
        for data in writes:
            connection.sendall(data)
        connection.shutdown(socket.SHUT_WR)
    except OSError:  # reset, broken pipe, not connected: closed on us, a refusal
        pass
    try:
        while chunk := connection.recv(65536):
            into += chunk
    except ConnectionResetError:  # closed with our bytes unread: what came first counts
        pass
    except TimeoutError:
        pytest.fail(f"no close within {READ_TIMEOUT_S} s after {bytes(into[:64])!r}")


def _connect(port: int) -> socket.socket:
    connection = socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT_S)
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return connection


def exchange(port: int, *writes: bytes) -> bytes:
    """Send ``writes`` on a new connection, half-close, return all bytes until the server
    closes. The server may close early (a refusal): what it sent is still returned."""
    received = bytearray()
    with _connect(port) as connection:
        _send_and_drain(connection, writes, received)
    return bytes(received)


def _receive_exactly(connection: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        assert chunk, "closed in the middle of a PDU"
        data += chunk
    return bytes(data)


def split_pdus(data: bytes, *, partial_ok: bool = False) -> list[tuple[int, bytes]]:
    """The PDUs in ``data`` as (type, body); a trailing partial PDU fails the case unless
    ``partial_ok`` (then it is left out)."""
    pdus, offset = [], 0
    while offset < len(data):
        complete = len(data) - offset >= 6 and offset + 6 + int.from_bytes(
            data[offset + 2 : offset + 6], "big"
        ) <= len(data)
        if not complete and partial_ok:
            break
        assert complete, f"partial PDU {data[offset : offset + 16]!r}"
        pdu_type, _, length = struct.unpack_from(">BBI", data, offset)
        pdus.append((pdu_type, data[offset + 6 : offset + 6 + length]))
        offset += 6 + length
    return pdus


def dimse_statuses(body: bytes) -> list[int]:
    """Status (0000,0900) of every complete command in a P-DATA-TF body."""
    statuses, offset = [], 0
    while offset < len(body):
        length, _context, control = struct.unpack_from(">IBB", body, offset)
        fragment = body[offset + 6 : offset + 4 + length]
        offset += 4 + length
        if control & 0x01:
            command = parse_command_set(fragment)
            assert struct.unpack("<H", command[0x00000100])[0] & 0x8000, "not a response"
            statuses.append(struct.unpack("<H", command[0x00000900])[0])
    return statuses


def _read_pdus_until_the_end(connection: socket.socket, silence_s: float | None) -> bytes:
    """Read until an A-RELEASE-RP or A-ABORT is complete, or the server closes.

    With ``silence_s``, a server quiet that long may be waiting for bytes a mutated length
    promised: the half-close then ends the case (a closed connection is an answer too).
    """
    received = bytearray()
    connection.settimeout(silence_s or READ_TIMEOUT_S)
    while True:
        pdus = split_pdus(bytes(received), partial_ok=True)
        if pdus and pdus[-1][0] in (A_RELEASE_RP, A_ABORT):
            return bytes(received)
        try:
            chunk = connection.recv(65536)
        except ConnectionResetError:
            return bytes(received)
        except TimeoutError:
            if silence_s is None:
                pytest.fail(f"no answer within {READ_TIMEOUT_S} s after {bytes(received[:64])!r}")
            connection.settimeout(READ_TIMEOUT_S)
            _send_and_drain(connection, (), received)
            return bytes(received)
        if not chunk:
            return bytes(received)
        received += chunk


def associated_exchange(
    port: int, *writes: bytes, silence_s: float | None = None
) -> list[tuple[int, bytes]]:
    """Associate (the valid request, up to its A-ASSOCIATE-AC), then send ``writes`` and an
    A-RELEASE-RQ; the PDUs the gateway sent after the AC, up to its A-RELEASE-RP or A-ABORT."""
    with _connect(port) as connection:
        connection.sendall(ASSOCIATE_RQ)
        header = _receive_exactly(connection, 6)
        assert header[0] == A_ASSOCIATE_AC, header
        _receive_exactly(connection, int.from_bytes(header[2:6], "big"))
        try:
            for data in (*writes, RELEASE_RQ):
                connection.sendall(data)
        except OSError:  # reset or broken pipe: aborted on us, read what came before
            pass
        received = _read_pdus_until_the_end(connection, silence_s)
    return split_pdus(received, partial_ok=True)


def mllp_exchange(port: int, data: bytes) -> list[str]:
    """Every framed reply the MLLP listener sends for ``data``."""
    decoder = MllpDecoder()
    return [decode_hl7(payload) for payload in decoder.feed(exchange(port, data))]


# ---------------------------------------------------------------- DICOM


@fuzz_settings(120)
@given(
    st.one_of(
        mutated(ASSOCIATE_RQ, 5),
        st.binary(min_size=6, max_size=64),  # fewer bytes wait for the association timeout
        mutated(ASSOCIATE_RQ, 3).map(lambda rq: rq + RELEASE_RQ),
    )
)
def test_association_requests_are_accepted_rejected_or_aborted(
    servers: Servers, request_bytes: bytes
) -> None:
    pdus = split_pdus(exchange(servers.gateway.port, request_bytes))
    types = [pdu_type for pdu_type, _ in pdus]
    if types:
        assert types[0] in (A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ABORT), types
        assert set(types[1:]) <= {A_RELEASE_RP, A_ABORT, P_DATA_TF}, types
    servers.case_done()


def _store_pdus(command: bytes, data_set: bytes, context_id: int = 3) -> bytes:
    half = len(data_set) // 2
    return p_data_tf(pdv(context_id, 0x03, command)) + p_data_tf(
        pdv(context_id, 0x00, data_set[:half]) + pdv(context_id, 0x02, data_set[half:])
    )


STORE = _store_pdus(store_command(SOP_UID), DATA_SET)


@fuzz_settings(120)
@given(mutated(STORE, 5))
def test_p_data_after_association_is_answered_or_aborted(servers: Servers, p_data: bytes) -> None:
    pdus = associated_exchange(servers.gateway.port, p_data, silence_s=0.3)
    for pdu_type, body in pdus:
        assert pdu_type in (P_DATA_TF, A_RELEASE_RP, A_ABORT), pdu_type
        if pdu_type == P_DATA_TF:
            assert set(dimse_statuses(body)) <= EXPECTED_STATUSES
    servers.case_done()


@fuzz_settings(150)
@given(mutated(DATA_SET, 5), st.sampled_from([3, 5]))
def test_mutated_data_sets_get_a_dimse_status(
    servers: Servers, data_set: bytes, context_id: int
) -> None:
    """Framing and command intact, the data set's elements, lengths and VRs mutated (also sent
    on the Implicit VR context): exactly one C-STORE response, then the release."""
    pdus = associated_exchange(
        servers.gateway.port, _store_pdus(store_command(SOP_UID), data_set, context_id)
    )
    assert [pdu_type for pdu_type, _ in pdus] == [P_DATA_TF, A_RELEASE_RP], pdus
    (status,) = dimse_statuses(pdus[0][1])
    assert status in EXPECTED_STATUSES, hex(status)
    servers.case_done()


# ---------------------------------------------------------------- STOW-RS


STOW_BODY = (
    f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    + PART10
    + f"\r\n--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    + PART10[:-40]  # a truncated instance: reported as failed, the request goes on
    + f"\r\n--{BOUNDARY}--\r\n".encode()
)


def _header_value(raw: bytes) -> str:
    """A header value http.client sends (it refuses line breaks itself)."""
    return raw.decode("latin-1").replace("\r", "").replace("\n", "")


@fuzz_settings(150)
@given(
    mutated(STOW_BODY, 6),
    st.one_of(st.just(CONTENT_TYPE), mutated(CONTENT_TYPE.encode(), 3).map(_header_value)),
    st.sampled_from(["/dicomweb/studies", f"/dicomweb/studies/{'1.2.3'}"]),
)
def test_stow_bodies_are_stored_or_refused(
    servers: Servers, body: bytes, content_type: str, path: str
) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", servers.stow.port, timeout=10)
    try:
        connection.request("POST", path, body=body, headers={"Content-Type": content_type})
        response = connection.getresponse()
        response.read()
    finally:
        connection.close()
    assert 200 <= response.status < 300 or 400 <= response.status < 500 or response.status == 503
    servers.case_done()


REQUEST = (
    b"POST /dicomweb/studies HTTP/1.1\r\nHost: x\r\n"
    + f"Content-Type: {CONTENT_TYPE}\r\n".encode()
    + f"Content-Length: {len(MULTIPART)}\r\n\r\n".encode()
    + MULTIPART
)


@fuzz_settings(100)
@given(mutated(REQUEST, 5))
def test_raw_http_requests_are_answered_or_closed(servers: Servers, request: bytes) -> None:
    reply = exchange(servers.stow.port, request)
    if reply.startswith(b"HTTP/"):
        status_line = reply.split(b"\r\n", 1)[0]
        status = int(status_line.split()[1])
        assert status < 500 or status in (501, 503), status_line  # 501: unknown method
    elif reply:  # a request line without a version: http.server answers as HTTP/0.9 does
        match = re.search(rb"Error code: (\d+)", reply)
        assert match, reply[:200]
        assert 400 <= int(match[1]) < 500, reply[:200]
    servers.case_done()


# ---------------------------------------------------------------- MLLP and HL7

FRAMES = frame(ORM) + b"junk" + frame(OMI) + START_BLOCK + b"MSH|^~\\&|partial"


@fuzz_settings(120)
@given(st.one_of(mutated(FRAMES, 6), st.binary(max_size=64)))
def test_mllp_streams_get_acks_or_are_closed(servers: Servers, data: bytes) -> None:
    acks = mllp_exchange(servers.mllp.port, data)
    assert len(acks) <= data.count(END_BLOCK) + 1  # + the NAK of a frame too large
    assert all(ack_code(ack) in ("AA", "AE", "AR") for ack in acks), acks
    servers.case_done()


def _framed(payload: bytes) -> bytes:
    return START_BLOCK + payload.replace(START_BLOCK, b"").replace(b"\x1c", b"") + END_BLOCK


@fuzz_settings(150)
@given(st.lists(st.one_of(mutated(ORM.encode(), 6), mutated(OMI.encode(), 6)), min_size=1))
def test_each_mutated_order_gets_one_ack(servers: Servers, messages: list[bytes]) -> None:
    acks = mllp_exchange(servers.mllp.port, b"".join(_framed(m) for m in messages[:3]))
    assert len(acks) == len(messages[:3])
    assert all(ack_code(ack) in ("AA", "AE", "AR") for ack in acks), acks
    servers.case_done()


# ---------------------------------------------------------------- after all that


def test_servers_still_answer_after_fuzzing(servers: Servers) -> None:
    servers.assert_alive()


# ---------------------------------------------------------------- what fuzzing found


def _command(*elements: tuple[int, bytes]) -> bytes:
    body = b"".join(struct.pack("<HHI", 0, element, len(v)) + v for element, v in elements)
    return struct.pack("<HHI", 0, 0, 4) + struct.pack("<I", len(body)) + body


@pytest.mark.parametrize(
    "command",
    [
        _command((0x0002, b"1.2.840.10008.1.1\0"), (0x0110, b"\1\0"), (0x0800, b"\1\1")),
        _command((0x0002, b"1.2.840.10008.1.1\0"), (0x0100, b"\3\0"), (0x0800, b"\1\1")),
    ],
    ids=["no-command-field", "unknown-command-field"],
)
def test_an_undecodable_dimse_command_aborts_the_association(
    servers: Servers, command: bytes
) -> None:
    """pynetdicom's decoder raised AttributeError/KeyError in the DUL thread (logged with a
    traceback as "Exception in DUL.run()"); the fast path now aborts it as a protocol error."""
    if not servers.gateway.fast_path:
        pytest.skip("pynetdicom's standard server logs this as an exception in DUL.run()")
    pdus = associated_exchange(servers.gateway.port, p_data_tf(pdv(1, 0x03, command)))
    assert [pdu_type for pdu_type, _ in pdus] == [A_ABORT]
    servers.case_done()


def test_an_even_presentation_context_id_is_refused(servers: Servers) -> None:
    """pynetdicom's A-ASSOCIATE-RQ action raised ValueError in the DUL thread, which died;
    the fast path's reactor now aborts the association."""
    if not servers.gateway.fast_path:
        pytest.skip("pynetdicom's standard DUL thread dies with the ValueError")
    request, offset, contexts = bytearray(ASSOCIATE_RQ), 74, 0  # variable items after byte 74
    while contexts < 2:
        contexts += request[offset] == 0x20  # a presentation context item
        if contexts < 2:
            offset += 4 + int.from_bytes(request[offset + 2 : offset + 4], "big")
    request[offset + 4] = 2  # its presentation context ID (pynetdicom refuses to build it)
    pdus = split_pdus(exchange(servers.gateway.port, bytes(request)))
    assert [pdu_type for pdu_type, _ in pdus] in ([A_ABORT], [A_ASSOCIATE_RJ], [])
    servers.case_done()


def test_a_non_ascii_sop_instance_uid_is_refused_as_not_understood(servers: Servers) -> None:
    """part10_header could not encode it: 0xC211 and a traceback, now 0xC000."""
    command = store_command(SOP_UID).replace(SOP_UID.encode(), SOP_UID[:-2].encode() + b"\xe9")
    pdus = associated_exchange(servers.gateway.port, _store_pdus(command, DATA_SET))
    assert [pdu_type for pdu_type, _ in pdus] == [P_DATA_TF, A_RELEASE_RP]
    assert dimse_statuses(pdus[0][1]) == [0xC000]
    servers.case_done()


def test_standard_log_handlers_are_not_bound_to_fast_associations() -> None:
    """pynetdicom's debug formatting handlers raised on malformed PDUs (an A-ASSOCIATE-RJ
    result, a C-STORE-RQ without its UIDs), logged with a traceback on every such PDU."""
    from pynetdicom._handlers import standard_dimse_recv_handler, standard_pdu_recv_handler

    from serving.gateway.reactor import _is_standard_log_handler

    assert _is_standard_log_handler(standard_pdu_recv_handler)
    assert _is_standard_log_handler(standard_dimse_recv_handler)
    assert not _is_standard_log_handler(lambda event: None)
