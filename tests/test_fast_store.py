"""The C-STORE fast path's codecs against pynetdicom's own encoder and decoder."""

from __future__ import annotations

from io import BytesIO
from typing import Any

import pytest
from pydicom.uid import CTImageStorage
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA

from serving.gateway.fast_store import (
    DimseProtocolError,
    PDataRouter,
    StoreRequest,
    parse_command_set,
    store_response_pdu,
)

INSTANCE_UID = "1.2.826.0.1.3680043.8.498.12345"  # odd length: padded with NUL


def _store_pdus(data: bytes, *, context_id: int = 1, max_pdu: int = 16384) -> list[bytes]:
    """pynetdicom's encoding of a C-STORE-RQ as P-DATA-TF PDU bodies (after the header)."""
    request = C_STORE()
    request.MessageID = 7
    request.AffectedSOPClassUID = CTImageStorage
    request.AffectedSOPInstanceUID = INSTANCE_UID
    request.Priority = 1
    request.DataSet = BytesIO(data)
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    return [_body(p) for p in message.encode_msg(context_id, max_pdu)]


def _echo_pdus(context_id: int = 3) -> list[bytes]:
    request = C_ECHO()
    request.MessageID = 9
    request.AffectedSOPClassUID = "1.2.840.10008.1.1"
    message = C_ECHO_RQ()
    message.primitive_to_message(request)
    return [_body(p) for p in message.encode_msg(context_id, 16384)]


def _body(primitive: P_DATA) -> bytes:
    pdu = P_DATA_TF()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())[6:]


class _Sink:
    """Collects what the router hands on; pynetdicom's message state is simulated."""

    def __init__(self) -> None:
        self.completed: list[StoreRequest] = []
        self.passed_on: list[tuple[int, bytes]] = []
        self.busy = False
        self.router = PDataRouter(self.completed.append, self._pass_on, lambda: self.busy)

    def _pass_on(self, context_id: int, pdv: bytes) -> None:
        self.passed_on.append((context_id, pdv))


def test_a_c_store_in_many_pdus_is_reassembled_without_pynetdicom() -> None:
    data = bytes(range(256)) * 1000
    sink = _Sink()
    pdus = _store_pdus(data, max_pdu=4096)
    assert len(pdus) > 50
    for body in pdus:
        sink.router.feed(body)
    assert sink.passed_on == []
    (request,) = sink.completed
    assert request.data == data
    assert (request.context_id, request.message_id, request.priority) == (1, 7, 1)
    assert request.sop_class_uid == CTImageStorage
    assert request.sop_instance_uid == INSTANCE_UID
    assert not sink.router.receiving


def test_pdvs_of_two_requests_in_one_pdu_are_routed_in_order() -> None:
    first, second = _store_pdus(b"A" * 10), _store_pdus(b"B" * 12, context_id=5)
    # Each message fits one PDU; put all four PDVs in one P-DATA-TF.
    sink = _Sink()
    sink.router.feed(b"".join(first + second))
    assert [(r.context_id, r.data) for r in sink.completed] == [(1, b"A" * 10), (5, b"B" * 12)]


def test_c_echo_and_split_commands_go_to_pynetdicom_whole() -> None:
    sink = _Sink()
    for body in _echo_pdus():
        sink.router.feed(body)
    assert sink.completed == []
    message = DIMSEMessage()
    primitive = P_DATA()
    primitive.presentation_data_value_list.extend(sink.passed_on)
    assert message.decode_msg(primitive)
    assert message.command_set.CommandField == 0x0030

    # A command set split over PDVs (allowed, if unusual) is left to pynetdicom too.
    sink = _Sink()
    pdus = _store_pdus(b"C" * 100, max_pdu=64)  # command fragments of < 64 bytes
    for body in pdus:
        sink.router.feed(body)
        sink.busy = True  # pynetdicom now holds a message in progress
    assert sink.completed == []
    assert sum(len(pdv) - 1 for _, pdv in sink.passed_on if pdv[0] & 1 == 0) == 100


def test_fragments_out_of_order_are_a_protocol_error() -> None:
    command_pdu, data_pdu = _store_pdus(b"D" * 40)
    sink = _Sink()
    sink.router.feed(command_pdu)
    assert sink.router.receiving
    with pytest.raises(DimseProtocolError, match="command fragment"):
        sink.router.feed(command_pdu)  # a new command where data set fragments belong

    sink = _Sink()
    sink.router.feed(command_pdu)
    with pytest.raises(DimseProtocolError, match="another context"):
        sink.router.feed(_store_pdus(b"F" * 40, context_id=9)[1])

    with pytest.raises(DimseProtocolError, match="PDV item length"):
        _Sink().router.feed(b"\x00\x00\x00\xff\x01\x02")  # claims 255 bytes, has 2
    with pytest.raises(DimseProtocolError, match="item header"):
        _Sink().router.feed(data_pdu + b"\x00\x00\x00")


@pytest.mark.parametrize(("status", "comment"), [(0x0000, None), (0xC000, "truncated data")])
def test_the_response_is_what_pynetdicom_decodes(status: int, comment: str | None) -> None:
    request = StoreRequest(3, 41, CTImageStorage, INSTANCE_UID, 0)
    pdu_bytes = store_response_pdu(request, status, comment)
    assert pdu_bytes[0] == 0x04
    assert int.from_bytes(pdu_bytes[2:6], "big") == len(pdu_bytes) - 6
    pdu = P_DATA_TF()
    pdu.decode(pdu_bytes)
    message = DIMSEMessage()
    assert message.decode_msg(pdu.to_primitive())
    assert message.context_id == 3
    response: Any = message.message_to_primitive()
    assert isinstance(response, C_STORE)
    assert response.MessageIDBeingRespondedTo == 41
    assert response.Status == status
    assert response.AffectedSOPClassUID == CTImageStorage
    assert response.AffectedSOPInstanceUID == INSTANCE_UID
    cs = message.command_set
    assert cs.CommandDataSetType == 0x0101
    assert cs.get("ErrorComment") == comment
    # The group length counts every element after it.
    elements = parse_command_set(pdu_bytes[12:])
    assert int.from_bytes(elements[0], "little") == len(pdu_bytes) - 12 - 12


def test_a_truncated_command_set_is_not_taken_for_a_store() -> None:
    sink = _Sink()
    body = _store_pdus(b"G" * 8)[0]
    length = int.from_bytes(body[:4], "big")
    # Cut the command PDV short by 3 bytes (and fix its length): pynetdicom gets it.
    cut = (length - 3).to_bytes(4, "big") + body[4 : 4 + length - 3]
    sink.router.feed(cut)
    assert sink.completed == []
    assert not sink.router.receiving
    assert len(sink.passed_on) == 1
    with pytest.raises(DimseProtocolError):
        parse_command_set(body[6 : 4 + length - 3])
