"""The C-STORE fast path: P-DATA-TF PDUs straight to stored instances, without pynetdicom's
per-message machinery.

pynetdicom turns every received PDU into objects, runs it through its state machine, decodes
the command set with pydicom (validating every UID), builds a C-STORE primitive, looks up the
service class, and encodes the response the same way on the way back. At 512x512 CT that is
~2 ms of Python per instance, more than the durable write. Here a C-STORE request whose
command set arrives whole in one PDV (what every SCU we know sends) is handled with ``struct``:

* :class:`PDataRouter` splits each P-DATA-TF PDU into PDVs. A complete C-STORE-RQ command
  with a data set to follow starts a :class:`StoreRequest`; its data set fragments are kept as
  views of the received buffers and joined once. Everything else (C-ECHO, a command split over
  PDVs, a C-STORE without data set, any other DIMSE message) goes to pynetdicom unchanged, PDV
  by PDV, exactly as its state machine would have passed it on.
* :func:`store_response_pdu` encodes the C-STORE-RSP command set (Implicit VR Little Endian,
  PS3.7 9.3.1.2) in one P-DATA-TF PDU.

Protocol errors inside a fast message (a command fragment where data set fragments belong, a
PDV for another presentation context, a malformed PDV item) raise :class:`DimseProtocolError`,
which the reactor turns into an A-ABORT as pynetdicom does for undecodable PDUs.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = [
    "C_STORE_RQ",
    "SOP_CLASS_MISMATCH",
    "STATUS_SOP_CLASS_NOT_SUPPORTED",
    "DimseProtocolError",
    "PDataRouter",
    "StoreRequest",
    "parse_command_set",
    "store_response_pdu",
]

C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
_NO_DATA_SET = 0x0101
#: The status and error comment for a C-STORE whose SOP class is not the one negotiated for its
#: presentation context (PS3.4 B.2.3), on the fast path and pynetdicom's alike.
STATUS_SOP_CLASS_NOT_SUPPORTED = 0x0122
SOP_CLASS_MISMATCH = "SOP class differs from the presentation context's"

_AFFECTED_SOP_CLASS = 0x00000002
_COMMAND_FIELD = 0x00000100
_MESSAGE_ID = 0x00000110
_MESSAGE_ID_RESPONDED = 0x00000120
_PRIORITY = 0x00000700
_DATA_SET_TYPE = 0x00000800
_STATUS = 0x00000900
_ERROR_COMMENT = 0x00000902
_AFFECTED_SOP_INSTANCE = 0x00001000

_ELEMENT = struct.Struct("<HHI")  # group, element, value length (Implicit VR Little Endian)
_PDV_HEADER = struct.Struct(">IBB")  # item length, presentation context ID, control header
_PDU_HEADER = struct.Struct(">BBI")  # PDU type, reserved, PDU length
_UID = re.compile(rb"[0-9]+(\.[0-9]+)*")
_UID_MAX = 64


class DimseProtocolError(ValueError):
    """The peer broke the DIMSE message rules (PS3.7 6.3.1, PS3.8 9.3.5): abort."""


@dataclass
class StoreRequest:
    """One C-STORE request being received, then handed to the association's thread.

    Attributes:
        context_id: Presentation context the request arrived on.
        message_id: (0000,0110), echoed in the response.
        sop_class_uid: (0000,0002) Affected SOP Class UID.
        sop_instance_uid: (0000,1000) Affected SOP Instance UID.
        priority: (0000,0700): 0 medium, 1 high, 2 low.
        fragments: The data set as received (in the context's transfer syntax): views of the
            received PDUs, complete once the last fragment arrived. They are joined once,
            with the Part-10 header in front, where the instance is stored.
    """

    context_id: int
    message_id: int
    sop_class_uid: str
    sop_instance_uid: str
    priority: int
    fragments: list[memoryview] = field(default_factory=list, repr=False)

    def add(self, fragment: memoryview, last: bool) -> bool:
        """Keep one data set fragment; True once the last one was added."""
        self.fragments.append(fragment)
        return last

    @property
    def data(self) -> bytes:
        """The data set in one piece (a copy: the store path joins the fragments itself)."""
        return b"".join(self.fragments)


def parse_command_set(encoded: bytes | memoryview) -> dict[int, bytes]:
    """The elements of a command set (Implicit VR Little Endian) as tag -> raw value.

    Raises:
        DimseProtocolError: An element runs past the end of the command set.
    """
    elements: dict[int, bytes] = {}
    view = memoryview(encoded)
    offset, end = 0, len(view)
    while offset < end:
        if end - offset < _ELEMENT.size:
            raise DimseProtocolError("command set ends inside an element header")
        group, element, length = _ELEMENT.unpack_from(view, offset)
        offset += _ELEMENT.size
        if length > end - offset:
            raise DimseProtocolError("command set element runs past its end")
        elements[(group << 16) | element] = bytes(view[offset : offset + length])
        offset += length
    return elements


def _uid(elements: dict[int, bytes], tag: int) -> str | None:
    value = elements.get(tag, b"").rstrip(b"\0 ")
    if not value or len(value) > _UID_MAX or not _UID.fullmatch(value):
        return None
    return value.decode("ascii")


def _us(elements: dict[int, bytes], tag: int) -> int | None:
    value = elements.get(tag)
    return struct.unpack("<H", value)[0] if value is not None and len(value) == 2 else None


def store_request(context_id: int, command: bytes | memoryview) -> StoreRequest | None:
    """A :class:`StoreRequest` for a complete C-STORE-RQ command set with a data set to
    follow; None for anything else (pynetdicom handles it, and explains its errors)."""
    try:
        elements = parse_command_set(command)
    except DimseProtocolError:
        return None
    if _us(elements, _COMMAND_FIELD) != C_STORE_RQ:
        return None
    data_set_type = _us(elements, _DATA_SET_TYPE)
    message_id = _us(elements, _MESSAGE_ID)
    sop_class = _uid(elements, _AFFECTED_SOP_CLASS)
    sop_instance = _uid(elements, _AFFECTED_SOP_INSTANCE)
    if data_set_type in (None, _NO_DATA_SET) or message_id is None:
        return None
    if sop_class is None or sop_instance is None:
        return None
    return StoreRequest(
        context_id=context_id,
        message_id=message_id,
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        priority=_us(elements, _PRIORITY) or 0,
    )


def _element(tag: int, value: bytes) -> bytes:
    return _ELEMENT.pack(tag >> 16, tag & 0xFFFF, len(value)) + value


def _padded(text: str, pad: bytes) -> bytes:
    raw = text.encode("ascii", "replace")
    return raw + pad if len(raw) % 2 else raw


def store_response_pdu(request: StoreRequest, status: int, comment: str | None = None) -> bytes:
    """The C-STORE-RSP for ``request`` as one P-DATA-TF PDU (command, last fragment).

    Args:
        request: The request answered.
        status: DIMSE status (0x0000 success, 0xA700 out of resources, ...).
        comment: (0000,0902) Error Comment for a failure, at most 64 characters (LO).
    """
    body = b"".join(
        (
            _element(_AFFECTED_SOP_CLASS, _padded(request.sop_class_uid, b"\0")),
            _element(_COMMAND_FIELD, struct.pack("<H", C_STORE_RSP)),
            _element(_MESSAGE_ID_RESPONDED, struct.pack("<H", request.message_id)),
            _element(_DATA_SET_TYPE, struct.pack("<H", _NO_DATA_SET)),
            _element(_STATUS, struct.pack("<H", status)),
            _element(_ERROR_COMMENT, _padded(comment[:64], b" ")) if comment else b"",
            _element(_AFFECTED_SOP_INSTANCE, _padded(request.sop_instance_uid, b"\0")),
        )
    )
    command = _element(0x00000000, struct.pack("<I", len(body))) + body
    pdv = _PDV_HEADER.pack(len(command) + 2, request.context_id, 0x03) + command
    return _PDU_HEADER.pack(0x04, 0, len(pdv)) + pdv


class PDataRouter:
    """Routes the PDVs of received P-DATA-TF PDUs: C-STORE requests to the fast path, all
    else to pynetdicom.

    Args:
        completed: Called (on the reading thread) with each fully received request.
        to_pynetdicom: Called with ``(context_id, control header + fragment)`` for each PDV
            that pynetdicom handles.
        pynetdicom_busy: True while pynetdicom holds part of a message (its fragments must
            all go to it).
    """

    def __init__(
        self,
        completed: Callable[[StoreRequest], None],
        to_pynetdicom: Callable[[int, bytes], None],
        pynetdicom_busy: Callable[[], bool],
    ) -> None:
        self._completed = completed
        self._to_pynetdicom = to_pynetdicom
        self._pynetdicom_busy = pynetdicom_busy
        self._current: StoreRequest | None = None

    @property
    def receiving(self) -> bool:
        """True while a fast C-STORE request is waiting for more data set fragments."""
        return self._current is not None

    def feed(self, body: bytearray | bytes) -> None:
        """Route every PDV of one P-DATA-TF PDU (``body``: the PDU after its 6-byte header).

        Raises:
            DimseProtocolError: Malformed items, or fragments out of order for a fast request.
        """
        view = memoryview(body)
        offset, end = 0, len(view)
        while offset < end:
            if end - offset < _PDV_HEADER.size:
                raise DimseProtocolError("P-DATA-TF ends inside a PDV item header")
            length, context_id, control = _PDV_HEADER.unpack_from(view, offset)
            if length < 2 or offset + 4 + length > end:
                raise DimseProtocolError("PDV item length does not fit its P-DATA-TF PDU")
            fragment = view[offset + _PDV_HEADER.size : offset + 4 + length]
            offset += 4 + length
            self._route(context_id, control, fragment)

    def _route(self, context_id: int, control: int, fragment: memoryview) -> None:
        is_command, is_last = bool(control & 0x01), bool(control & 0x02)
        current = self._current
        if current is not None:
            if is_command:
                raise DimseProtocolError("a command fragment arrived inside a C-STORE data set")
            if context_id != current.context_id:
                raise DimseProtocolError("a data set fragment arrived on another context")
            if current.add(fragment, is_last):
                self._current = None
                self._completed(current)
            return
        if is_command and is_last and not self._pynetdicom_busy():
            request = store_request(context_id, fragment)
            if request is not None:
                self._current = request
                return
        self._to_pynetdicom(context_id, bytes((control,)) + bytes(fragment))
