"""Fuzzing the gateway's parsers in process, many examples each (issue 15, part 5).

Every entry point's parser gets mutated valid input (and some plain garbage) and must answer
with its typed refusal or a result, never another exception: the DIMSE command set and P-DATA-TF
router of the fast path, the first-PDU admission check, the Part-10 header reader (both walks),
multipart bodies and media types, chunked bodies, MLLP deframing and HL7 orders.

The budget and seed are in ``tests/fuzz_support.py`` (``STATLANE_FUZZ_EXAMPLES`` for the full
run); the same inputs over real sockets are ``tests/test_fuzz_network.py``.
"""

from __future__ import annotations

import contextlib
import warnings
from datetime import UTC, datetime
from io import BytesIO

from hypothesis import given
from hypothesis import strategies as st

from serving.gateway import instance_header
from serving.gateway.admission import ASSOCIATE_RQ_MAX_BYTES, check_associate_header
from serving.gateway.errors import InvalidInstance, MalformedRequest
from serving.gateway.fast_store import (
    DimseProtocolError,
    PDataRouter,
    StoreRequest,
    parse_command_set,
    store_request,
)
from serving.gateway.hl7_orders import MalformedMessage, OrderReceiver, parse_order
from serving.gateway.multipart import parse_media_type, receive_body, split_multipart
from serving.mllp import (
    END_BLOCK,
    START_BLOCK,
    MllpDecoder,
    MllpFrameTooLarge,
    ack_code,
    decode_hl7,
    hl7_codec,
)
from tests.fuzz_support import (
    echo_command,
    fuzz_settings,
    mutated,
    pdv,
    small_ct,
    splits,
    store_command,
)

SOP_UID, DATA_SET, PART10 = small_ct()
COMMAND = store_command(SOP_UID)
NOW = datetime(2024, 3, 11, 8, 30, 5, tzinfo=UTC)

# ---------------------------------------------------------------- DIMSE (fast path)


@fuzz_settings(600)
@given(st.one_of(mutated(COMMAND, 6), mutated(echo_command(), 4), st.binary(max_size=96)))
def test_command_set_parses_or_is_refused(command: bytes) -> None:
    try:
        elements = parse_command_set(command)
    except DimseProtocolError:
        elements = None
    request = store_request(1, command)
    if request is not None:
        assert elements is not None
        assert 0 <= request.message_id <= 0xFFFF
        assert 0 < len(request.sop_instance_uid) <= 64


PDU_BODY = (
    pdv(3, 0x03, COMMAND)
    + pdv(3, 0x00, DATA_SET[: len(DATA_SET) // 2])
    + pdv(3, 0x02, DATA_SET[len(DATA_SET) // 2 :])
)


@fuzz_settings(600)
@given(st.lists(mutated(PDU_BODY, 6), min_size=1, max_size=3), st.booleans())
def test_p_data_router_routes_or_refuses(bodies: list[bytes], pynetdicom_busy: bool) -> None:
    completed: list[StoreRequest] = []
    forwarded: list[tuple[int, bytes]] = []
    router = PDataRouter(
        completed.append, lambda c, b: forwarded.append((c, b)), lambda: pynetdicom_busy
    )
    for body in bodies:
        try:
            router.feed(body)
        except DimseProtocolError:
            return  # the reactor aborts the association
    for request in completed:
        assert request.sop_instance_uid
        assert isinstance(request.data, bytes)
    assert all(len(fragment) >= 1 for _, fragment in forwarded)


@fuzz_settings(300)
@given(st.binary(max_size=8))
def test_first_pdu_header_is_admitted_only_as_a_bounded_associate_rq(header: bytes) -> None:
    reason = check_associate_header(header)
    if reason is None:
        assert header[0] == 0x01
        assert int.from_bytes(header[2:6], "big") <= ASSOCIATE_RQ_MAX_BYTES


# ---------------------------------------------------------------- Part-10 header


def _read(data: bytes) -> tuple[str, str]:
    """("ok", SOP Instance UID) or ("refused", reason) from read_header."""
    try:
        identity, _header = instance_header.read_header(data)
    except InvalidInstance as error:
        return "refused", str(error)
    return "ok", identity.sop_instance_uid


@fuzz_settings(800)
@given(mutated(PART10, 5))
def test_part10_header_is_read_or_refused_alike_on_both_paths(data: bytes) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = _read(data)
        walk = instance_header.fast_walk
        instance_header.fast_walk = None
        try:
            standard = _read(data)
        finally:
            instance_header.fast_walk = walk
    assert fast[0] == standard[0], (fast, standard)
    if fast[0] == "ok":
        assert fast == standard


# ---------------------------------------------------------------- STOW-RS bodies

BOUNDARY = "fuzz-boundary-0123"
MULTIPART = (
    b"preamble\r\n"
    + f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    + PART10[:300]
    + f"\r\n--{BOUNDARY}\r\nContent-Type: application/dicom\r\nX-A: b\r\n c\r\n\r\n".encode()
    + b"second part"
    + f"\r\n--{BOUNDARY}--\r\nepilogue".encode()
)
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"'


@fuzz_settings(800)
@given(
    mutated(MULTIPART, 6),
    st.one_of(st.just(BOUNDARY), mutated(BOUNDARY.encode(), 2).map(lambda b: b.decode("latin-1"))),
)
def test_multipart_body_splits_or_is_refused(body: bytes, boundary: str) -> None:
    status: int | None = None
    try:
        parts = split_multipart(body, boundary)
    except MalformedRequest as error:
        parts, status = [], error.http_status
    assert status is None or 400 <= status < 500
    for part in parts:
        assert 0 <= part.start <= part.end <= len(body)
        with contextlib.suppress(MalformedRequest):
            part.media_type  # noqa: B018 - parsing the part's Content-Type is the point


@fuzz_settings(500)
@given(st.one_of(mutated(CONTENT_TYPE.encode(), 5).map(lambda b: b.decode("latin-1")), st.text()))
def test_media_type_parses_or_is_refused(value: str) -> None:
    try:
        essence, status = parse_media_type(value).essence, None
    except MalformedRequest as error:
        essence, status = "", error.http_status
    assert status == 415 if status is not None else essence.count("/") == 1


CHUNKED = b"5\r\nhello\r\n1a;ext=1\r\n" + b"x" * 26 + b"\r\n0\r\nTrailer: t\r\n\r\n"


@fuzz_settings(500)
@given(mutated(CHUNKED, 5), st.sampled_from([None, "chunked"]), st.sampled_from([None, "10", "x"]))
def test_request_body_is_received_or_refused(
    data: bytes, transfer_encoding: str | None, content_length: str | None
) -> None:
    status = None
    try:
        with receive_body(
            BytesIO(data),
            content_length=content_length,
            transfer_encoding=transfer_encoding,
            max_bytes=64,
            memory_bytes=16,
        ) as body:
            assert len(body) <= 64
    except MalformedRequest as error:
        status = error.http_status
    assert status in (None, 400, 411, 413)


# ---------------------------------------------------------------- MLLP and HL7

ORM = (
    "MSH|^~\\&|RIS|HOSP|STATLANE|RAD|20240311083000||ORM^O01|MSG0001|P|2.4\r"
    "PID|1||SYN123^^^HOSP^MR||DOE^JANE||19700101|F\r"
    "PV1|1|E\r"
    "ORC|NW|PL1001|FL2001||||^^^20240311083000^^S\r"
    "OBR|1|PL1001|FL2001|30799-1^CT Head WO contrast^LN||||||||||||||ACC0001"
    "|||||||||||||R51^Headache \\T\\ vomiting^I10\r"
    "ZDS|1.2.826.0.1.3680043.8.498.10^RIS^Application^DICOM\r"
)
OMI = (
    "MSH|^~\\&|RIS|HOSP|STATLANE|RAD|20240311090000+0100||OMI^O23^OMI_O23|MSG0002|P|2.5.1"
    "|||AL|NE||UNICODE UTF-8\r"
    "PID|1||SYN456^^^HOSP^MR||RØE^RICHARD||19650505|M\r"
    "ORC|NW|PL2002|FL3003\r"
    "TQ1|1||||||||A^ASAP^HL70485\r"
    "OBR|1|PL2002|FL3003|24627-2^CT Chest^LN|||||||||Atemnot – V.a. LE\r"
    "IPC|ACC0002^HOSP|RP77|1.2.826.0.1.3680043.8.498.20|SPS1|CT\r"
)
HL7_MESSAGES = st.one_of(
    mutated(ORM.encode(), 6), mutated(OMI.encode("utf-8"), 6), st.binary(max_size=200)
)


@fuzz_settings(1000)
@given(HL7_MESSAGES)
def test_hl7_order_parses_or_is_refused_and_always_acknowledged(payload: bytes) -> None:
    text = decode_hl7(payload)
    try:
        order = parse_order(text)
    except MalformedMessage:
        order = None
    if order is not None:
        assert order.accession_number
    received: list[object] = []
    ack = OrderReceiver(received.append, clock=lambda: NOW, control_ids=lambda: "ACK1").handle(text)
    assert ack_code(ack) == "AA" if order is not None else ack_code(ack) in ("AE", "AR")
    assert len(received) == (order is not None)
    ack.encode(hl7_codec(ack) or "utf-8", errors="replace")  # what the listener sends


FRAMES = START_BLOCK + ORM.encode() + END_BLOCK + b"junk" + START_BLOCK + b"MSH|x" + END_BLOCK


@fuzz_settings(800)
@given(mutated(FRAMES, 6).flatmap(splits), st.sampled_from([64, 1024]))
def test_mllp_stream_deframes_or_refuses_a_large_frame(chunks: list[bytes], limit: int) -> None:
    decoder = MllpDecoder(limit)
    for chunk in chunks:
        try:
            for payload in decoder.feed(chunk):
                assert len(payload) <= limit
                assert START_BLOCK not in payload
        except MllpFrameTooLarge:
            assert decoder.pending_bytes == 0
        assert decoder.pending_bytes <= limit + 1  # + a 0x1C waiting for its 0x0D


@fuzz_settings(400)
@given(
    st.lists(
        st.binary(max_size=40).map(
            lambda b: b.replace(START_BLOCK, b"").replace(END_BLOCK[:1], b"")
        ),
        max_size=5,
    ).flatmap(
        lambda payloads: st.tuples(
            st.just(payloads), splits(b"".join(START_BLOCK + p + END_BLOCK for p in payloads))
        )
    )
)
def test_mllp_frames_come_back_whole_however_they_are_cut(
    case: tuple[list[bytes], list[bytes]],
) -> None:
    payloads, chunks = case
    decoder = MllpDecoder(1024)
    received = [payload for chunk in chunks for payload in decoder.feed(chunk)]
    assert received == payloads
    assert decoder.pending_bytes == 0
