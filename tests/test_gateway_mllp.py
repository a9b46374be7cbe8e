"""HL7 orders over MLLP: framing, the threaded server, the client, ORM/OMI parsing and ACK/NAKs.

Network tests use a real TCP server on 127.0.0.1 port 0. Replies are read until the server
closes the connection (the client half-closes first), so "exactly N ACKs" needs no sleeps.
hl7apy is the independent judge of the ACKs we write.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message
from hl7apy.parser import parse_message

from router.vocabulary import AssigningAuthority, OrderContext, OrderPriority
from serving.gateway.hl7_orders import (
    Er7Message,
    MalformedMessage,
    OrderReceiver,
    UnparseableMessage,
    build_ack,
    escape,
    parse_order,
    unescape,
)
from serving.gateway.mllp import MllpServer
from serving.mllp import (
    MllpDecoder,
    MllpError,
    MllpFrameTooLarge,
    ack_code,
    ack_error_code,
    decode_hl7,
    frame,
    send_message,
)
from tests.orthanc_peer import free_port

NOW = datetime(2024, 3, 11, 8, 30, 5, tzinfo=UTC)
PHI = ("SYN123", "SYN456", "DOE", "JANE", "RØE", "RICHARD")  # synthetic identities in samples
CT_HEAD_UID = "1.2.826.0.1.3680043.8.498.10"
CT_CHEST_UID = "1.2.826.0.1.3680043.8.498.20"


def segment(name: str, fields: dict[int, str]) -> str:
    """One ER7 segment with the given fields (1-based) and empty fields in between."""
    return "|".join([name] + [fields.get(i, "") for i in range(1, max(fields) + 1)])


def message(*segments: str, sep: str = "\r") -> str:
    return sep.join(segments) + sep


def orm(
    *,
    version: str = "2.4",
    orc: dict[int, str] | None = None,
    obr: dict[int, str] | None = None,
    extra: tuple[str, ...] = (),
    message_type: str = "ORM^O01",
    sep: str = "\r",
) -> str:
    """A stat CT head order from the emergency department (ORM^O01), overridable per field."""
    return message(
        f"MSH|^~\\&|RIS|HOSP|STATLANE|RAD|20240311083000||{message_type}|MSG0001|P|{version}",
        "PID|1||SYN123^^^HOSP^MR||DOE^JANE||19700101|F",
        "PV1|1|E",
        segment("ORC", orc or {1: "NW", 2: "PL1001", 3: "FL2001", 7: "^^^20240311083000^^S"}),
        segment(
            "OBR",
            obr
            or {
                1: "1",
                2: "PL1001",
                3: "FL2001",
                4: "30799-1^CT Head WO contrast^LN",
                18: "ACC0001",
                31: "R51^Headache \\T\\ vomiting \\F\\ fall^I10",
            },
        ),
        f"ZDS|{CT_HEAD_UID}^RIS^Application^DICOM",
        *extra,
        sep=sep,
    )


def omi() -> str:
    """An ASAP CT chest order (OMI^O23, v2.5.1, UTF-8) with IPC accession and study UID."""
    return message(
        "MSH|^~\\&|RIS|HOSP|STATLANE|RAD|20240311090000+0100||OMI^O23^OMI_O23|MSG0002|P|2.5.1"
        "|||AL|NE||UNICODE UTF-8",
        "PID|1||SYN456^^^HOSP^MR||RØE^RICHARD||19650505|M",
        segment("ORC", {1: "NW", 2: "PL2002", 3: "FL3003"}),
        segment("TQ1", {1: "1", 9: "A^ASAP^HL70485"}),
        segment(
            "OBR",
            {1: "1", 2: "PL2002", 3: "FL3003", 4: "24627-2^CT Chest^LN", 13: "Atemnot – V.a. LE"},
        ),
        segment("IPC", {1: "ACC0002^HOSP", 2: "RP77", 3: CT_CHEST_UID, 4: "SPS1", 5: "CT"}),
    )


ADT = message(
    "MSH|^~\\&|ADT|HOSP|STATLANE|RAD|20240311083000||ADT^A01^ADT_A01|MSG0003|P|2.5",
    "EVN|A01|20240311083000",
    "PID|1||SYN123^^^HOSP^MR||DOE^JANE",
)


# ---------------------------------------------------------------- network helpers


@pytest.fixture
def orders() -> Iterator[tuple[int, list[OrderContext]]]:
    """A running MLLP server with an OrderReceiver; yields (port, orders received)."""
    received: list[OrderContext] = []
    receiver = OrderReceiver(received.append, clock=lambda: NOW)
    with MllpServer(receiver.handle, host="127.0.0.1", port=0) as server:
        yield server.port, received


def converse(port: int, writes: list[bytes]) -> list[str]:
    """Send the writes (one sendall each), half-close, and return every framed reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for data in writes:
            connection.sendall(data)
        connection.shutdown(socket.SHUT_WR)
        decoder, replies = MllpDecoder(), []
        while chunk := connection.recv(65536):
            replies += [decode_hl7(payload) for payload in decoder.feed(chunk)]
    return replies


def hl7apy_ack(text: str, level: int = VALIDATION_LEVEL.STRICT) -> Message:
    """Parse with hl7apy; at STRICT level also validate the whole message."""
    parsed = parse_message(text, validation_level=level, find_groups=False)
    if level == VALIDATION_LEVEL.STRICT:
        parsed.validate()
    return parsed


# ---------------------------------------------------------------- orders over TCP


def test_orm_order_is_acknowledged_and_every_field_read(
    orders: tuple[int, list[OrderContext]],
) -> None:
    port, received = orders
    ack = send_message("127.0.0.1", port, orm(), timeout_s=5)

    assert ack_code(ack) == "AA"
    assert received == [
        OrderContext(
            accession_number="ACC0001",
            priority=OrderPriority.STAT,
            procedure_code="30799-1",
            procedure_scheme="LN",
            procedure_meaning="CT Head WO contrast",
            indication="Headache & vomiting | fall",
            patient_id="SYN123",
            patient_id_authority=AssigningAuthority(namespace_id="HOSP"),
            placer_order_number="PL1001",
            filler_order_number="FL2001",
            study_instance_uid=CT_HEAD_UID,
            order_control="NW",
            message_control_id="MSG0001",
        )
    ]
    parsed = hl7apy_ack(ack)
    assert parsed.msh.msh_3.to_er7() == "STATLANE"  # swapped from the inbound MSH-5/6 ...
    assert parsed.msh.msh_4.to_er7() == "RAD"
    assert parsed.msh.msh_5.to_er7() == "RIS"  # ... and MSH-3/4
    assert parsed.msh.msh_6.to_er7() == "HOSP"
    assert parsed.msh.msh_7.to_er7() == "20240311083005+0000"
    assert parsed.msh.msh_9.to_er7() == "ACK^O01^ACK"
    assert parsed.msh.msh_10.to_er7() not in ("", "MSG0001")
    assert parsed.msh.msh_12.to_er7() == "2.4"
    assert parsed.msa.msa_2.to_er7() == "MSG0001"


def test_omi_order_is_acknowledged_and_every_field_read(
    orders: tuple[int, list[OrderContext]],
) -> None:
    port, received = orders
    ack = send_message("127.0.0.1", port, omi(), timeout_s=5)

    assert ack_code(ack) == "AA"
    assert received == [
        OrderContext(
            accession_number="ACC0002",
            priority=OrderPriority.ASAP,
            procedure_code="24627-2",
            procedure_scheme="LN",
            procedure_meaning="CT Chest",
            indication="Atemnot – V.a. LE",
            patient_id="SYN456",
            patient_id_authority=AssigningAuthority(namespace_id="HOSP"),
            placer_order_number="PL2002",
            filler_order_number="FL3003",
            study_instance_uid=CT_CHEST_UID,
            order_control="NW",
            message_control_id="MSG0002",
        )
    ]
    parsed = hl7apy_ack(ack)
    assert parsed.msh.msh_9.to_er7() == "ACK^O23^ACK"
    assert parsed.msh.msh_12.to_er7() == "2.5.1"
    assert parsed.msh.msh_18.to_er7() == "UNICODE UTF-8"
    assert parsed.msa.msa_2.to_er7() == "MSG0002"


def test_adt_is_refused_as_unsupported_message_type(
    orders: tuple[int, list[OrderContext]],
) -> None:
    port, received = orders
    ack = send_message("127.0.0.1", port, ADT, timeout_s=5)

    assert ack_code(ack) == "AE"
    assert received == []
    parsed = hl7apy_ack(ack)
    assert unescape(parsed.msa.msa_3.to_er7()) == "unsupported message type ADT^A01"
    assert parsed.err.err_3.to_er7() == "200^Unsupported message type^HL70357"
    assert parsed.msa.msa_2.to_er7() == "MSG0003"


def test_orm_without_accession_is_refused_naming_obr_18(
    orders: tuple[int, list[OrderContext]],
) -> None:
    port, received = orders
    text = orm(version="2.5", obr={1: "1", 2: "PL1001", 4: "30799-1^CT Head^LN"})
    ack = send_message("127.0.0.1", port, text, timeout_s=5)

    assert ack_code(ack) == "AE"
    assert received == []
    parsed = hl7apy_ack(ack)
    assert "OBR-18" in unescape(parsed.msa.msa_3.to_er7())
    assert parsed.err.err_2.to_er7() == "OBR^1^18"
    assert parsed.err.err_3.to_er7() == "101^Required field missing^HL70357"
    assert unescape(parsed.err.err_8.to_er7()) == "ORM^O01 without accession (OBR-18)"


def test_bytes_that_are_not_hl7_are_rejected_with_ar(
    orders: tuple[int, list[OrderContext]],
) -> None:
    port, received = orders
    replies = converse(port, [frame("GET / HTTP/1.1\r\nHost: pacs\r\n\r\n")])

    assert [ack_code(reply) for reply in replies] == ["AR"]
    assert received == []
    hl7apy_ack(replies[0], VALIDATION_LEVEL.TOLERANT)


def test_two_messages_in_one_write_get_two_acks_in_order(
    orders: tuple[int, list[OrderContext]],
) -> None:
    port, received = orders
    replies = converse(port, [frame(orm()) + frame(ADT)])

    assert [ack_code(r) for r in replies] == ["AA", "AE"]
    assert [Er7Message.parse(r).value("MSA", 2) for r in replies] == ["MSG0001", "MSG0003"]
    assert [order.accession_number for order in received] == ["ACC0001"]


def test_message_split_across_writes_gets_one_ack(
    orders: tuple[int, list[OrderContext]],
) -> None:
    port, received = orders
    data = frame(omi())
    writes = [data[:1], data[1:40], data[40:-1], data[-1:]]  # last write: the trailing 0x0D

    assert [ack_code(r) for r in converse(port, writes)] == ["AA"]
    assert [order.accession_number for order in received] == ["ACC0002"]


def test_logs_carry_no_patient_identity(
    caplog: pytest.LogCaptureFixture, orders: tuple[int, list[OrderContext]]
) -> None:
    caplog.set_level(logging.DEBUG)
    port, _ = orders
    for text in (orm(), omi(), ADT, orm(obr={1: "1", 4: "30799-1^CT^LN"})):
        send_message("127.0.0.1", port, text, timeout_s=5)

    assert "ACC0001" in caplog.text  # the accession and control ids are what we log
    assert "MSG0003" in caplog.text
    assert not [word for word in PHI if word in caplog.text]


def test_failing_order_store_answers_ae_without_leaking_its_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def store(order: OrderContext) -> None:
        raise RuntimeError(f"duplicate order for patient {order.patient_id} DOE^JANE")

    caplog.set_level(logging.DEBUG)
    ack = OrderReceiver(store, clock=lambda: NOW).handle(orm(version="2.5"))

    parsed = hl7apy_ack(ack)
    assert parsed.msa.msa_1.to_er7() == "AE"
    assert parsed.msa.msa_3.to_er7() == "application internal error"
    assert parsed.err.err_3.to_er7() == "207^Application internal error^HL70357"
    assert "RuntimeError" in caplog.text
    assert not [word for word in PHI if word in caplog.text + ack]


# ---------------------------------------------------------------- server robustness


def test_server_survives_a_raising_handler_and_a_peer_leaving_mid_frame() -> None:
    calls: list[str] = []

    def handler(text: str) -> str:
        calls.append(text)
        if len(calls) == 1:
            raise RuntimeError("boom for DOE^JANE")
        return build_ack(text, "AA", "", NOW)

    with MllpServer(handler, host="127.0.0.1", port=0) as server:
        first, second = converse(server.port, [frame(orm()), frame(orm())])
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as leaving:
            leaving.sendall(frame(omi())[:30])
        after = send_message("127.0.0.1", server.port, omi(), timeout_s=5)

    assert ack_code(first) == "AR"
    assert Er7Message.parse(first).value("MSA", 3) == "application internal error"
    assert "DOE" not in first
    assert ack_code(second) == "AA"
    assert ack_code(after) == "AA"
    assert len(calls) == 3  # the partial frame never reached the handler


def test_a_reply_that_cannot_be_encoded_becomes_an_ar_nak() -> None:
    ascii_reply = "MSH|^~\\&|A|B|||20240311||ACK^O01^ACK|1|P|2.5||||||ASCII\rMSA|AA|MSG0001|Ö\r"
    with MllpServer(lambda _: ascii_reply, host="127.0.0.1", port=0) as server:
        replies = converse(server.port, [frame(orm()), frame(orm())])
    assert [ack_code(reply) for reply in replies] == ["AR", "AR"]


def test_oversized_frame_gets_ar_and_the_connection_is_closed() -> None:
    handled: list[str] = []

    def handler(text: str) -> str:
        handled.append(text)
        return build_ack(text, "AA", "", NOW)

    with MllpServer(handler, host="127.0.0.1", port=0, max_message_bytes=256) as server:
        replies = converse(server.port, [frame(orm()), frame(orm())])

    assert [ack_code(reply) for reply in replies] == ["AR"]
    assert "larger than 256 bytes" in replies[0]
    assert handled == []


def test_idle_connection_is_closed_by_the_server() -> None:
    server = MllpServer(lambda text: text, host="127.0.0.1", port=0, idle_timeout_s=0.2)
    with server, socket.create_connection(("127.0.0.1", server.port), timeout=5) as idle:
        assert idle.recv(10) == b""  # closed after 0.2 s of silence, well before 5 s


def test_stop_closes_open_connections_promptly() -> None:
    server = MllpServer(lambda text: build_ack(text, "AA", "", NOW), host="127.0.0.1", port=0)
    server.start()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as lingering:
        lingering.sendall(frame(orm()))
        assert lingering.recv(65536).startswith(b"\x0bMSH")  # its connection thread is live
        lingering.sendall(b"\x0bMSH|")  # and now waits for the rest of a frame
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 2  # not the 300 s idle timeout
        with contextlib.suppress(ConnectionResetError):  # a reset (partial frame unread) is
            assert lingering.recv(10) == b""  # as closed as an orderly end of stream


# ---------------------------------------------------------------- client


def test_client_to_a_closed_port_fails_fast() -> None:
    started = time.monotonic()
    with pytest.raises(MllpError, match="refused"):
        send_message("127.0.0.1", free_port(), orm(), timeout_s=5)
    assert time.monotonic() - started < 2


def test_client_times_out_when_no_reply_comes() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # the kernel accepts; nobody ever answers
        with pytest.raises(MllpError, match="no MLLP reply"):
            send_message("127.0.0.1", silent.getsockname()[1], orm(), timeout_s=0.3)


def serve_once(reply: bytes) -> tuple[int, threading.Thread]:
    listener = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        with listener, listener.accept()[0] as connection:
            connection.recv(65536)
            connection.sendall(reply)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    return listener.getsockname()[1], thread


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", "not an MLLP frame"),
        (b"\x0bMSA|AA|MSG", "closed the connection without a reply"),
    ],
)
def test_client_refuses_a_reply_that_is_not_a_frame(reply: bytes, error: str) -> None:
    port, thread = serve_once(reply)
    with pytest.raises(MllpError, match=error):
        send_message("127.0.0.1", port, orm(), timeout_s=5)
    thread.join(5)


def test_ack_code_requires_an_msa() -> None:
    assert ack_code(build_ack(orm(), "CE", "queue full", NOW)) == "CE"
    with pytest.raises(MllpError, match="MSA-1"):
        ack_code(orm())
    with pytest.raises(MllpError, match="not an HL7 acknowledgement"):
        ack_code("<html>")


# ---------------------------------------------------------------- framing and encoding


def test_decoder_handles_byte_by_byte_garbage_and_merged_frames() -> None:
    decoder = MllpDecoder()
    stream = b"noise" + frame("MSH|one") + b"\r\n" + frame("MSH|two") + frame("MSH|three")
    payloads = [p for byte in range(len(stream)) for p in decoder.feed(stream[byte : byte + 1])]

    assert payloads == [b"MSH|one", b"MSH|two", b"MSH|three"]
    assert decoder.discarded_bytes == len(b"noise\r\n")
    assert decoder.pending_bytes == 0


def test_decoder_drops_an_abandoned_frame_and_recovers_from_an_oversized_one() -> None:
    decoder = MllpDecoder(max_message_bytes=16)
    assert list(decoder.feed(b"\x0bMSH|abandoned" + frame("MSH|next"))) == [b"MSH|next"]

    with pytest.raises(MllpFrameTooLarge, match="larger than 16 bytes"):
        list(decoder.feed(b"\x0b" + b"x" * 17))
    assert list(decoder.feed(b"x" * 100 + b"\x1c\r" + frame("MSH|ok"))) == [b"MSH|ok"]


def test_frames_complete_before_an_oversized_one_are_still_delivered() -> None:
    decoder = MllpDecoder(max_message_bytes=16)
    payloads = decoder.feed(frame("MSH|first") + b"\x0b" + b"x" * 32)
    assert next(payloads) == b"MSH|first"
    with pytest.raises(MllpFrameTooLarge):
        next(payloads)


def test_frame_encodes_in_the_declared_character_set() -> None:
    latin = "MSH|^~\\&|RIS|HOSP|||20240311||ORM^O01|M1|P|2.3||||||8859/1\rPID|1||X||MÜLLER"
    assert frame(latin) == b"\x0b" + latin.encode("latin-1") + b"\x1c\r"
    assert decode_hl7(latin.encode("latin-1")) == latin

    undeclared = "MSH|^~\\&|RIS|HOSP|||20240311||ORM^O01|M1|P|2.3\rPID|1||X||MÜLLER"
    assert frame(undeclared)[1:-2] == undeclared.encode("utf-8")
    assert decode_hl7(undeclared.encode("utf-8")) == undeclared
    assert decode_hl7(undeclared.encode("latin-1")) == undeclared  # invalid UTF-8: fallback


# ---------------------------------------------------------------- parsing


@pytest.mark.parametrize("sep", ["\r", "\n", "\r\n"])
def test_any_segment_separator_reads_the_same_order(sep: str) -> None:
    assert parse_order(orm(sep=sep)) == parse_order(orm())


def test_escape_sequences_are_decoded_and_round_trip() -> None:
    raw = r"A\F\B\S\C\T\D\R\E\E\F \H\bold\N\ line\.br\two \X48C3A9\ \Z1" + "\\"
    assert unescape(raw) == "A|B^C&D~E\\F bold line\ntwo Hé \\Z1\\"
    text = "fracture | ^ & ~ \\ ?"
    assert unescape(escape(text)) == text


def test_custom_delimiters_declared_in_msh_are_honoured() -> None:
    text = orm().replace("|", "#").replace("^", "$")
    order = parse_order(text)
    assert (order.accession_number, order.procedure_code) == ("ACC0001", "30799-1")
    assert order.priority is OrderPriority.STAT


ORC_BASE = {1: "NW", 2: "PL1"}
OBR_BASE = {1: "1", 4: "30799-1^CT Head^LN", 18: "ACC9"}


@pytest.mark.parametrize(
    ("tq1", "orc_priority", "obr_27", "obr_5", "expected"),
    [
        ("", "", "", "S", OrderPriority.STAT),
        ("", "", "^^^^^stat", "", OrderPriority.STAT),
        ("", "R", "", "S", OrderPriority.ROUTINE),  # ORC-7.6 outranks OBR-5
        ("A^ASAP^HL70485", "S", "", "", OrderPriority.ASAP),  # TQ1-9 outranks ORC-7.6
        ("", "P", "", "", OrderPriority.ROUTINE),
        ("", "C", "", "", OrderPriority.ROUTINE),
        ("", "", "^^^^^T", "", OrderPriority.ROUTINE),
        ("", "", "", "", OrderPriority.UNKNOWN),
    ],
)
def test_priority_sources_and_precedence(
    tq1: str, orc_priority: str, obr_27: str, obr_5: str, expected: OrderPriority
) -> None:
    orc = ORC_BASE | ({7: f"^^^^^{orc_priority}"} if orc_priority else {})
    obr = OBR_BASE | {5: obr_5, 27: obr_27}
    extra = (segment("TQ1", {1: "1", 9: tq1}),) if tq1 else ()
    assert parse_order(orm(orc=orc, obr=obr, extra=extra)).priority is expected


def test_omi_without_ipc_falls_back_to_obr_18() -> None:
    lines = [line for line in omi().split("\r") if not line.startswith("IPC")]
    lines = [line + "|||||ACC0003" if line.startswith("OBR") else line for line in lines]
    order = parse_order("\r".join(lines))
    assert (order.accession_number, order.study_instance_uid) == ("ACC0003", "")


def test_cancel_order_control_and_obr_fallbacks_are_read() -> None:
    orc = {1: "CA", 2: "PL1", 3: '""'}  # "" is HL7's explicit null
    text = orm(orc=orc, obr=OBR_BASE | {2: "OB2", 3: "OB3", 13: "?SAH"})
    order = parse_order(text)
    assert order.order_control == "CA"
    assert order.indication == "?SAH"  # no OBR-31: OBR-13
    assert (order.placer_order_number, order.filler_order_number) == ("PL1", "OB3")


@pytest.mark.parametrize(
    ("text", "kind", "reason", "code"),
    [
        ("hello world", UnparseableMessage, "does not start with an MSH", 100),
        ("MSH|^~|RIS|HOSP", UnparseableMessage, "bad encoding characters", 102),
        (ADT, MalformedMessage, "unsupported message type ADT^A01", 200),
        (orm(message_type="ORM^O02"), MalformedMessage, "unsupported message type ORM^O02", 201),
        (orm(obr={1: "1"}), MalformedMessage, "ORM^O01 without accession (OBR-18)", 101),
        (orm(extra=("not a segment",)), MalformedMessage, "segment 7 has no valid", 100),
        (orm().replace("\rORC|", "\rNTE|"), MalformedMessage, "without ORC segment", 100),
        (omi().replace("\rIPC|ACC0002^HOSP", "\rIPC|"), MalformedMessage, "IPC-1 or OBR-18", 101),
    ],
)
def test_malformed_messages_say_what_is_wrong(
    text: str, kind: type[MalformedMessage], reason: str, code: int
) -> None:
    with pytest.raises(kind, match=re.escape(reason)) as caught:
        parse_order(text)
    assert caught.value.error_code == code
    assert not [word for word in PHI if word in caught.value.reason]


# ---------------------------------------------------------------- ACKs


def inbound(version: str, message_type: str = "ORM^O01") -> str:
    return orm(version=version, message_type=message_type)


@pytest.mark.parametrize("version", ["2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.8"])
@pytest.mark.parametrize("code", ["AA", "AE", "AR"])
def test_acks_are_valid_hl7_at_strict_level(version: str, code: str) -> None:
    text = "ORM^O01 without accession (OBR-18)" if code != "AA" else ""
    ack = build_ack(inbound(version), code, text, NOW, error_code=101, error_location=("OBR", 18))

    parsed = hl7apy_ack(ack)
    assert parsed.msa.msa_1.to_er7() == code
    assert parsed.msh.msh_12.to_er7() == version
    if code == "AA":
        assert "ERR" not in ack
    elif version < "2.5":
        assert parsed.err.err_1.to_er7() == "OBR^1^18^101&Required field missing&HL70357"
    else:
        assert parsed.err.err_3.to_er7() == "101^Required field missing^HL70357"
        assert parsed.err.err_4.to_er7() == "E"


def test_v23_ack_has_two_component_message_type_and_nak_without_inbound_uses_defaults() -> None:
    v23 = build_ack(inbound("2.3"), "AA", "", NOW, control_id="C1")
    assert v23.split("\r")[0] == (
        "MSH|^~\\&|STATLANE|RAD|RIS|HOSP|20240311083005+0000||ACK^O01|C1|P|2.3"
    )
    hl7apy_ack(v23, VALIDATION_LEVEL.TOLERANT)

    nak = build_ack(None, "AR", "not HL7", NOW, control_id="C2")
    assert nak.split("\r")[:2] == [
        "MSH|^~\\&|STATLANE|STATLANE|||20240311083005+0000||ACK^^ACK|C2|P|2.5",
        "MSA|AR||not HL7",
    ]
    with pytest.raises(ValueError, match="not an HL7 acknowledgement code"):
        build_ack(None, "OK", "", NOW)


def test_receiver_uses_its_own_names_when_the_inbound_does_not_address_us() -> None:
    anonymous = orm().replace("|STATLANE|RAD|", "|||", 1)
    received: list[OrderContext] = []
    ids = iter(["ACK1"])
    receiver = OrderReceiver(
        received.append,
        clock=lambda: NOW,
        sending_application="AI^GW",
        sending_facility="ER",
        control_ids=lambda: next(ids),
    )
    msh = Er7Message.parse(receiver.handle(anonymous))
    assert [msh.value("MSH", n) for n in (3, 4, 10)] == ["AI^GW", "ER", "ACK1"]
    assert len(received) == 1


@pytest.mark.parametrize(
    ("err", "code"),
    [
        ("", ""),
        ("ERR|||207^Application internal error^HL70357|E\r", "207"),  # v2.5: ERR-3.1
        ("ERR|MSH^1^9^102&Data type error&HL70357\r", "102"),  # v2.4: ERR-1.4.1
        ("ERR|||^no code^HL70357|E\rERR|||101^Required field missing^HL70357|E\r", "101"),
        ("ERR|||DOE^JANE|E\r", ""),  # free text is never a code
    ],
)
def test_ack_error_code_reads_only_the_numeric_code(err: str, code: str) -> None:
    ack = (
        "MSH|^~\\&|RIS|HOSP|STATLANE|RAD|20261130120001||ACK^R01^ACK|ACK0001|P|2.5\r"
        f"MSA|AE|MSG0001|no visit for DOE^JANE\r{err}"
    )
    assert ack_error_code(ack) == code
    assert ack_error_code("not an HL7 message") == ""
