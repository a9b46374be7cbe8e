"""HL7 v2 orders in: ORM^O01 / OMI^O23 become an `OrderContext`, answered by an ACK or a NAK.

The ER7 reader is deliberately small. It splits segments on CR, LF or CRLF, takes the field
separator and encoding characters from MSH-1/MSH-2 (so a RIS that uses other delimiters still
parses), and decodes escape sequences only after splitting, so an escaped delimiter never splits
a field. hl7apy is the independent validator of what we send back (see the tests).

Where the accession number, the priority and the procedure code are read is an
:class:`OrderMapping` (``hl7.order_mapping`` in ``statlane.yaml``): ordered lists of field paths
such as ``OBR-18`` or ``ORC-7.6``, the first non-empty one wins; the default is IHE Scheduled
Workflow's. Placer and filler order numbers (ORC-2/ORC-3, else OBR-2/OBR-3) keep their EI
namespace and universal ID, the patient ID (PID-3) its assigning authority (PID-3.4).

Nothing here logs a patient identifier: logs carry the message control id (MSH-10), the
accession number and the reason a message was refused.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache

from router.vocabulary import AssigningAuthority, OrderContext, OrderPriority

logger = logging.getLogger(__name__)

# HL7 table 0357, message error condition codes (ERR-3 from v2.5, ERR-1.4 before).
SEGMENT_SEQUENCE_ERROR = 100
REQUIRED_FIELD_MISSING = 101
DATA_TYPE_ERROR = 102
UNSUPPORTED_MESSAGE_TYPE = 200
UNSUPPORTED_EVENT_CODE = 201
APPLICATION_INTERNAL_ERROR = 207
_ERROR_NAMES = {
    SEGMENT_SEQUENCE_ERROR: "Segment sequence error",
    REQUIRED_FIELD_MISSING: "Required field missing",
    DATA_TYPE_ERROR: "Data type error",
    UNSUPPORTED_MESSAGE_TYPE: "Unsupported message type",
    UNSUPPORTED_EVENT_CODE: "Unsupported event code",
    APPLICATION_INTERNAL_ERROR: "Application internal error",
}

ACK_CODES = frozenset({"AA", "AE", "AR", "CA", "CE", "CR"})
DEFAULT_VERSION = "2.5"
_SUPPORTED = frozenset({("ORM", "O01"), ("OMI", "O23")})
_LEADING = "\ufeff\x0b \t\r\n"  # BOM, a stray MLLP start block, blank lines
_SEGMENT_BREAK = re.compile(r"\r\n|\r|\n")
_SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{2}\Z")
_VERSION = re.compile(r"2\.\d+(\.\d+)?\Z")
_PRIORITIES = {
    "S": OrderPriority.STAT,
    "STAT": OrderPriority.STAT,
    "A": OrderPriority.ASAP,
    "ASAP": OrderPriority.ASAP,
}

ErrorLocation = tuple[str, int]
"""(segment ID, field number) of an error; field 0 means the segment itself."""


class MalformedMessage(ValueError):
    """An inbound HL7 message that is not an order we can accept; answered with an AE NAK.

    Attributes:
        reason: One line saying what is wrong, never containing patient data.
        error_code: HL7 table 0357 code for ERR (e.g. 101 required field missing).
        location: Where the error is, or None.
        message_control_id: MSH-10 of the message when it could be read, else empty.
    """

    def __init__(
        self,
        reason: str,
        *,
        error_code: int = APPLICATION_INTERNAL_ERROR,
        location: ErrorLocation | None = None,
        message_control_id: str = "",
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error_code = error_code
        self.location = location
        self.message_control_id = message_control_id


class UnparseableMessage(MalformedMessage):
    """Not HL7 v2 at all (no MSH, bad delimiters); answered with an AR NAK."""


@dataclass(frozen=True)
class EncodingCharacters:
    """The five ER7 delimiters declared by MSH-1 and MSH-2."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"


STANDARD_ENCODING = EncodingCharacters()
_OUTBOUND_ESCAPES = str.maketrans(
    {"\\": "\\E\\", "|": "\\F\\", "^": "\\S\\", "&": "\\T\\", "~": "\\R\\"}
    | {"\r": "\\X0D\\", "\n": "\\X0A\\"}
)


def escape(value: str) -> str:
    """Escape a value for ER7 written with the standard delimiters ``|^~\\&``."""
    return value.translate(_OUTBOUND_ESCAPES)


def unescape(value: str, encoding: EncodingCharacters = STANDARD_ENCODING) -> str:
    r"""Decode ER7 escapes: \F\ \S\ \T\ \R\ \E\, \Xhh..\, \.br\ and formatting."""
    marker = encoding.escape
    if marker not in value:
        return value
    out: list[str] = []
    index = 0
    while index < len(value):
        end = value.find(marker, index + 1) if value[index] == marker else -1
        if end > index + 1:
            out.append(_escape_sequence(value[index + 1 : end], encoding))
            index = end + 1
        else:
            out.append(value[index])
            index += 1
    return "".join(out)


def _escape_sequence(code: str, encoding: EncodingCharacters) -> str:
    delimiters = {
        "F": encoding.field,
        "S": encoding.component,
        "T": encoding.subcomponent,
        "R": encoding.repetition,
        "E": encoding.escape,
    }
    if code in delimiters:
        return delimiters[code]
    if code == ".br" or code.startswith(".sp"):
        return "\n"
    if code in ("H", "N") or code[0] in ".CM":
        return ""  # highlighting, layout commands and ISO 2022 charset switches carry no text
    if code[0] == "X" and re.fullmatch(r"(?:[0-9A-Fa-f]{2})+", code[1:]):
        raw = bytes.fromhex(code[1:])
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("latin-1")
    return f"{encoding.escape}{code}{encoding.escape}"  # unknown (e.g. local \Z..\): keep as sent


class Er7Message:
    """An ER7-encoded HL7 v2 message split into segments; values are decoded on access.

    ``fields[n]`` of a segment is field n, so for MSH ``fields[1]`` is MSH-1 (the field
    separator) and ``fields[2]`` is MSH-2 (the encoding characters), as in the standard.
    """

    def __init__(self, segments: list[list[str]], encoding: EncodingCharacters) -> None:
        self.segments = segments
        self.encoding = encoding

    @classmethod
    def parse(cls, text: str) -> Er7Message:
        """Split ``text`` into segments; raises UnparseableMessage or MalformedMessage."""
        body = text.lstrip(_LEADING)
        if not body.startswith("MSH") or len(body) < 8:
            raise UnparseableMessage(
                "not an HL7 v2 message: it does not start with an MSH segment",
                error_code=SEGMENT_SEQUENCE_ERROR,
            )
        encoding = _encoding_characters(body)
        lines = [line for line in _SEGMENT_BREAK.split(body) if line.strip()]
        msh = ["MSH", encoding.field, *lines[0].split(encoding.field)[1:]]
        message = cls([msh], encoding)
        control_id = message.value("MSH", 10)
        for number, line in enumerate(lines[1:], start=2):
            name = line[:3]
            if not _SEGMENT_ID.match(name) or line[3:4] not in ("", encoding.field):
                raise MalformedMessage(
                    f"segment {number} has no valid segment ID",
                    error_code=SEGMENT_SEQUENCE_ERROR,
                    message_control_id=control_id,
                )
            if name == "MSH":
                raise MalformedMessage(
                    "more than one MSH segment (batches are not accepted)",
                    error_code=SEGMENT_SEQUENCE_ERROR,
                    message_control_id=control_id,
                )
            message.segments.append(line.split(encoding.field))
        return message

    def has(self, name: str) -> bool:
        """Whether a segment with this ID is present."""
        return any(fields[0] == name for fields in self.segments)

    def repetitions(self, name: str, field: int) -> list[list[str]]:
        """Decoded components of each repetition of a field of the first such segment."""
        fields = next((f for f in self.segments if f[0] == name), None)
        if fields is None or field >= len(fields) or not fields[field]:
            return []
        if name == "MSH" and field <= 2:
            return [[fields[field]]]
        enc = self.encoding
        return [
            [_null_to_empty(unescape(c, enc)) for c in repetition.split(enc.component)]
            for repetition in fields[field].split(enc.repetition)
        ]

    def value(self, name: str, field: int, component: int = 1) -> str:
        """One component (1-based) of the first repetition of a field, decoded; "" if absent."""
        repetitions = self.repetitions(name, field)
        if not repetitions or component > len(repetitions[0]):
            return ""
        return repetitions[0][component - 1]

    def subcomponents(self, name: str, field: int, component: int) -> list[str]:
        """Decoded subcomponents of one component of a field's first repetition ([] if absent).

        ``value`` decodes a whole component, so a subcomponent separator stays in it; an HD
        inside a CX (PID-3.4, ``HOSP&1.2.3&ISO``) is split here, before decoding.
        """
        fields = next((f for f in self.segments if f[0] == name), None)
        if fields is None or field >= len(fields) or not fields[field]:
            return []
        enc = self.encoding
        components = fields[field].split(enc.repetition)[0].split(enc.component)
        if component > len(components) or not components[component - 1]:
            return []
        return [
            _null_to_empty(unescape(part, enc))
            for part in components[component - 1].split(enc.subcomponent)
        ]


def _null_to_empty(value: str) -> str:
    return "" if value == '""' else value  # HL7 explicit null: no value for our purposes


def _encoding_characters(body: str) -> EncodingCharacters:
    separator = body[3]
    declared = body[4:].split(separator, 1)[0]
    # v2.7 adds a fifth (truncation) character; it needs no handling when reading.
    usable = separator.isprintable() and not separator.isalnum() and not separator.isspace()
    distinct = len(set(declared + separator)) == len(declared) + 1
    plain = all(c.isprintable() and not c.isalnum() and not c.isspace() for c in declared)
    if not (usable and 4 <= len(declared) <= 5 and distinct and plain):
        raise UnparseableMessage(
            "bad encoding characters in MSH-1/MSH-2", error_code=DATA_TYPE_ERROR
        )
    return EncodingCharacters(separator, declared[0], declared[1], declared[2], declared[3])


_FIELD_PATH = re.compile(
    r"(?P<segment>[A-Z][A-Z0-9]{2})-(?P<field>[1-9]\d*)(?:\.(?P<component>[1-9]\d*))?"
)
_PATH_VERSION = "2.5.1"  # field positions are checked against this version's segments
_Z_PATHS = frozenset({("ZDS", 1)})  # IHE RAD: ZDS-1 Study Instance UID (RP)


class FieldPathError(ValueError):
    """A field path that names no field of HL7 v2.5.1 (e.g. ``OBR-99``, ``XYZ-1``)."""


@dataclass(frozen=True)
class FieldPath:
    """One place in an order message: ``SEG-field`` or ``SEG-field.component`` (1-based).

    Attributes:
        segment: Segment ID, e.g. ``OBR``; the first such segment of the message is read.
        field: Field number (MSH-1 is the field separator, as in the standard).
        component: Component number; None reads component 1 (or, for a coded field, 1-3).
    """

    segment: str
    field: int
    component: int | None = None

    def __str__(self) -> str:
        suffix = f".{self.component}" if self.component is not None else ""
        return f"{self.segment}-{self.field}{suffix}"


def parse_field_path(text: str) -> FieldPath:
    """``"ORC-7.6"`` → ``FieldPath("ORC", 7, 6)``, checked against HL7 v2.5.1.

    The segment must be a v2.5.1 segment (or IHE's ZDS, field 1 only), the field one of its
    fields and the component one of the field's data type.

    Raises:
        FieldPathError: Not ``SEG-n[.m]``, or no such segment, field or component.
    """
    match = _FIELD_PATH.fullmatch(text.strip())
    if match is None:
        raise FieldPathError(f"{text!r} is not a field path like OBR-18 or ORC-7.6")
    path = FieldPath(
        match["segment"],
        int(match["field"]),
        int(match["component"]) if match["component"] else None,
    )
    if path.segment.startswith("Z"):
        if (path.segment, path.field) not in _Z_PATHS or (path.component or 1) > 4:
            raise FieldPathError(f"{text}: the only Z segment field read is ZDS-1 (IHE RAD)")
        return path
    fields = _segment_fields(path.segment)
    if fields is None:
        raise FieldPathError(f"{text}: {path.segment} is not an HL7 v{_PATH_VERSION} segment")
    if path.field > len(fields):
        raise FieldPathError(
            f"{text}: {path.segment} has {len(fields)} fields in HL7 v{_PATH_VERSION}"
        )
    components = fields[path.field - 1]
    if path.component is not None and path.component > components:
        raise FieldPathError(f"{text}: {path.segment}-{path.field} has {components} component(s)")
    return path


@cache
def _segment_fields(segment: str) -> tuple[int, ...] | None:
    """Component count of each field of a v2.5.1 segment (1 for a primitive); None if unknown."""
    from hl7apy import load_reference
    from hl7apy.exceptions import ChildNotFound

    try:
        reference = load_reference(segment, "Segment", _PATH_VERSION)
    except ChildNotFound:
        return None
    counts = []
    for _name, (kind, children, *_rest), *_more in reference[1]:
        counts.append(len(children) if kind == "sequence" else 1)
    return tuple(counts)


def _paths(*texts: str) -> tuple[FieldPath, ...]:
    return tuple(parse_field_path(t) for t in texts)


@dataclass(frozen=True)
class OrderMapping:
    """Where an order's accession, priority and procedure code are read; first non-empty wins.

    The default is IHE Scheduled Workflow's: accession IPC-1 (OMI^O23), then OBR-18; priority
    TQ1-9, ORC-7.6 (TQ), OBR-27.6 (TQ), OBR-5; procedure OBR-4 (code^text^scheme).

    Attributes:
        accession: Paths of the accession number (component 1 unless one is named).
        priority: Paths of the priority code (S, A, R ...; component 1 unless one is named).
        procedure_code: Paths of the coded procedure: components 1-3 (code, text, scheme) of
            the first path whose component 1 is not empty.
    """

    accession: tuple[FieldPath, ...] = field(default_factory=lambda: _paths("IPC-1", "OBR-18"))
    priority: tuple[FieldPath, ...] = field(
        default_factory=lambda: _paths("TQ1-9", "ORC-7.6", "OBR-27.6", "OBR-5")
    )
    procedure_code: tuple[FieldPath, ...] = field(default_factory=lambda: _paths("OBR-4"))

    @classmethod
    def from_texts(
        cls, accession: list[str], priority: list[str], procedure_code: list[str]
    ) -> OrderMapping:
        """A mapping from field path texts (as in ``statlane.yaml``); raises FieldPathError."""
        return cls(_paths(*accession), _paths(*priority), _paths(*procedure_code))


IHE_ORDER_MAPPING = OrderMapping()


def _read(message: Er7Message, path: FieldPath) -> str:
    return message.value(path.segment, path.field, path.component or 1).strip()


def _first(message: Er7Message, paths: tuple[FieldPath, ...]) -> tuple[str, FieldPath | None]:
    """The first non-empty value along ``paths`` and where it was found."""
    for path in paths:
        value = _read(message, path)
        if value:
            return value, path
    return "", None


def _authority(components: list[str]) -> AssigningAuthority:
    """HD (namespace, universal ID, its type) from its three parts; missing parts are empty."""
    namespace, universal, kind = [*components, "", "", ""][:3]
    return AssigningAuthority(namespace.strip(), universal.strip(), kind.strip())


def _order_number(message: Er7Message, field_number: int) -> tuple[str, AssigningAuthority]:
    """ORC-n (else OBR-n) as an EI: the number and EI-2..4, as received."""
    for segment in ("ORC", "OBR"):
        repetitions = message.repetitions(segment, field_number)
        if repetitions and repetitions[0][0].strip():
            first = repetitions[0]
            return first[0].strip(), _authority(first[1:4])
    return "", AssigningAuthority()


def parse_order(text: str, mapping: OrderMapping = IHE_ORDER_MAPPING) -> OrderContext:
    """Read one imaging order from an ORM^O01 (v2.3-2.5.1) or OMI^O23 (v2.5+) message.

    The first ORC/OBR (and IPC) group is the order; ``mapping`` says where its accession,
    priority and procedure code are. Raises MalformedMessage (or its subclass
    UnparseableMessage for text that is not HL7 at all) with a reason naming the field.
    """
    message = Er7Message.parse(text)
    control_id = message.value("MSH", 10)

    def refuse(reason: str, code: int, location: ErrorLocation) -> MalformedMessage:
        return MalformedMessage(
            reason, error_code=code, location=location, message_control_id=control_id
        )

    kind = message.value("MSH", 9, 1).strip().upper()
    event = message.value("MSH", 9, 2).strip().upper()
    if not kind:
        raise refuse("MSH-9 message type missing", REQUIRED_FIELD_MISSING, ("MSH", 9))
    name = f"{kind}^{event}" if event else kind
    if (kind, event) not in _SUPPORTED:
        code = UNSUPPORTED_EVENT_CODE if kind in ("ORM", "OMI") else UNSUPPORTED_MESSAGE_TYPE
        raise refuse(f"unsupported message type {name}", code, ("MSH", 9))
    for segment in ("ORC", "OBR"):
        if not message.has(segment):
            raise refuse(f"{name} without {segment} segment", SEGMENT_SEQUENCE_ERROR, (segment, 0))

    accession, _ = _first(message, mapping.accession)
    if not accession:
        # Name the configured places this message could have had it (its segments), in order.
        looked = [p for p in mapping.accession if message.has(p.segment)] or list(mapping.accession)
        where = " or ".join(str(p) for p in looked)
        location = (looked[0].segment, looked[0].field)
        raise refuse(f"{name} without accession ({where})", REQUIRED_FIELD_MISSING, location)

    _code, procedure = _first(message, mapping.procedure_code)
    placer, placer_authority = _order_number(message, 2)
    filler, filler_authority = _order_number(message, 3)
    return OrderContext(
        accession_number=accession,
        priority=_priority(message, mapping.priority),
        procedure_code=_procedure(message, procedure, 1),
        procedure_meaning=_procedure(message, procedure, 2),
        procedure_scheme=_procedure(message, procedure, 3),
        indication=_indication(message),
        patient_id=message.value("PID", 3, 1),
        placer_order_number=placer,
        filler_order_number=filler,
        placer_order_authority=placer_authority,
        filler_order_authority=filler_authority,
        patient_id_authority=_authority(message.subcomponents("PID", 3, 4)),
        study_instance_uid=message.value("IPC", 3) or message.value("ZDS", 1),
        order_control=message.value("ORC", 1).strip().upper() or "NW",
        message_control_id=control_id,
    )


def _procedure(message: Er7Message, path: FieldPath | None, component: int) -> str:
    """Component 1-3 (code, text, scheme) of the procedure field; "" without one."""
    if path is None:
        return ""
    return message.value(path.segment, path.field, component)


def _priority(message: Er7Message, paths: tuple[FieldPath, ...]) -> OrderPriority:
    """The first priority code along ``paths``: S → STAT, A → ASAP, anything else ROUTINE."""
    code, _ = _first(message, paths)
    if not code:
        return OrderPriority.UNKNOWN
    return _PRIORITIES.get(code.upper(), OrderPriority.ROUTINE)


def _indication(message: Er7Message) -> str:
    """Text of each OBR-31 reason (its code when it has no text), else OBR-13."""
    reasons = [
        (rep[1] if len(rep) > 1 and rep[1] else rep[0]).strip()
        for rep in message.repetitions("OBR", 31)
    ]
    return "; ".join(r for r in reasons if r) or message.value("OBR", 13).strip()


def _inbound_msh(inbound: str | None) -> Er7Message:
    """The inbound MSH alone (later segments may be what is wrong); empty if unreadable."""
    first_line = _SEGMENT_BREAK.split((inbound or "").lstrip(_LEADING), maxsplit=1)[0]
    try:
        return Er7Message.parse(first_line)
    except MalformedMessage:
        return Er7Message([["MSH", "|", "^~\\&"]], STANDARD_ENCODING)


def _reencoded(msh: Er7Message, field: int) -> str:
    """An inbound MSH field (first repetition), escaped again for the standard delimiters."""
    components = (msh.repetitions("MSH", field) or [[]])[0]
    return "^".join(escape(c) for c in components).rstrip("^")


def _timestamp(now: datetime) -> str:
    """HL7 DTM: seconds resolution, with the UTC offset when ``now`` is timezone-aware."""
    return now.strftime("%Y%m%d%H%M%S%z" if now.tzinfo else "%Y%m%d%H%M%S")


def build_ack(
    inbound: str | None,
    code: str,
    text: str,
    now: datetime,
    *,
    error_code: int | None = None,
    error_location: ErrorLocation | None = None,
    control_id: str | None = None,
    sending_application: str = "STATLANE",
    sending_facility: str = "STATLANE",
) -> str:
    """Build the original-mode acknowledgement of ``inbound`` (ER7, CR-terminated segments).

    Sender and receiver are swapped from the inbound MSH (ours default to the given names),
    MSH-9 is ``ACK^<inbound trigger>^ACK``, MSH-12 the inbound version, MSH-18 the inbound
    character set, MSA-2 the inbound MSH-10. A code other than AA/CA adds an ERR segment with
    ``error_code`` from HL7 table 0357 (default 207) laid out for the inbound version.
    ``inbound`` may be None or unreadable: the NAK then carries our defaults and an empty MSA-2.
    ``now`` stamps MSH-7; ``control_id`` (MSH-10) defaults to a random 20-character id.
    """
    if code not in ACK_CODES:
        raise ValueError(f"{code!r} is not an HL7 acknowledgement code ({sorted(ACK_CODES)})")
    inbound_msh = _inbound_msh(inbound)
    declared = inbound_msh.value("MSH", 12).strip()
    version = declared if _VERSION.match(declared) else DEFAULT_VERSION
    numeric = tuple(int(part) for part in version.split("."))
    trigger = escape(inbound_msh.value("MSH", 9, 2).strip().upper())
    msh = [
        "MSH",
        "^~\\&",
        _reencoded(inbound_msh, 5) or escape(sending_application),
        _reencoded(inbound_msh, 6) or escape(sending_facility),
        _reencoded(inbound_msh, 3),
        _reencoded(inbound_msh, 4),
        _timestamp(now),
        "",
        f"ACK^{trigger}^ACK" if numeric >= (2, 3, 1) else f"ACK^{trigger}".rstrip("^"),
        escape(uuid.uuid4().hex[:20] if control_id is None else control_id),
        escape(inbound_msh.value("MSH", 11).strip()) or "P",
        version,
    ]
    if charset := inbound_msh.value("MSH", 18).strip():
        msh += ["", "", "", "", "", escape(charset)]  # MSH-13..17 empty, MSH-18
    # MSA-3 was withdrawn in v2.7; ERR-8 carries the text from v2.5 on.
    msa = ["MSA", code, escape(inbound_msh.value("MSH", 10))]
    if numeric < (2, 7):
        msa.append(escape(text[:80]))
    segments = [msh, msa]
    if code not in ("AA", "CA"):
        segments.append(
            _err_segment(error_code or APPLICATION_INTERNAL_ERROR, error_location, text, numeric)
        )
    return "".join("|".join(fields).rstrip("|") + "\r" for fields in segments)


def _err_segment(
    error_code: int, location: ErrorLocation | None, text: str, version: tuple[int, ...]
) -> list[str]:
    name = escape(_ERROR_NAMES.get(error_code, "Application error"))
    segment, field = location if location else ("", 0)
    where = [segment, "1" if segment else "", str(field) if field else ""]
    if version < (2, 5):  # ERR-1 (ELD): segment^sequence^field^code&text&table
        return ["ERR", "^".join([*where, f"{error_code}&{name}&HL70357"])]
    erl = "^".join(where).rstrip("^")
    return ["ERR", "", erl, f"{error_code}^{name}^HL70357", "E", "", "", "", escape(text[:250])]


class OrderReceiver:
    """Turns order messages into OrderContext, hands them to ``on_order`` and answers each.

    ``handle`` is the MllpServer handler. ``on_order`` is called from server threads, once per
    accepted message and possibly concurrently across connections; an AA goes back only after it
    returns, so it should persist the order before returning.

    Args:
        on_order: Receives each parsed order.
        clock: Wall-clock time (timezone-aware datetime) for MSH-7 of the ACKs.
        sending_application: Our MSH-3 when the inbound MSH-5 is empty.
        sending_facility: Our MSH-4 when the inbound MSH-6 is empty.
        control_ids: Source of ACK MSH-10 values; random 20-character ids by default.
        mapping: Where accession, priority and procedure code are read (IHE SWF by default).
    """

    def __init__(
        self,
        on_order: Callable[[OrderContext], None],
        *,
        clock: Callable[[], datetime],
        sending_application: str = "STATLANE",
        sending_facility: str = "STATLANE",
        control_ids: Callable[[], str] | None = None,
        mapping: OrderMapping = IHE_ORDER_MAPPING,
    ) -> None:
        self._on_order = on_order
        self._mapping = mapping
        self._clock = clock
        self._sending_application = sending_application
        self._sending_facility = sending_facility
        self._control_ids = control_ids or (lambda: uuid.uuid4().hex[:20])

    def handle(self, text: str) -> str:
        """Parse, deliver and acknowledge one inbound message; never raises for bad input."""
        try:
            order = parse_order(text, self._mapping)
        except MalformedMessage as exc:
            code = "AR" if isinstance(exc, UnparseableMessage) else "AE"
            logger.warning(
                "HL7 message %s refused (%s): %s", exc.message_control_id or "?", code, exc.reason
            )
            return self._ack(text, code, exc.reason, exc.error_code, exc.location)
        try:
            self._on_order(order)
        except Exception as exc:  # noqa: BLE001 - the exception text may quote patient data: log its type only
            logger.error(
                "order %s (message %s) not stored: %s",
                order.accession_number,
                order.message_control_id,
                type(exc).__name__,
            )
            return self._ack(text, "AE", "application internal error", APPLICATION_INTERNAL_ERROR)
        logger.info(
            "order %s %s accepted (message %s, priority %s)",
            order.accession_number,
            order.order_control,
            order.message_control_id,
            order.priority.value,
        )
        return self._ack(text, "AA", "", None)

    def _ack(
        self,
        text: str,
        code: str,
        reason: str,
        error_code: int | None,
        location: ErrorLocation | None = None,
    ) -> str:
        return build_ack(
            text,
            code,
            reason,
            self._clock(),
            error_code=error_code,
            error_location=location,
            control_id=self._control_ids(),
            sending_application=self._sending_application,
            sending_facility=self._sending_facility,
        )
