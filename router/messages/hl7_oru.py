"""HL7 v2.5.1 ORU^R01 for one AI result: the findings as preliminary observations for the RIS.

The message is built with hl7apy objects at STRICT validation, so a field that is too long or a
segment in the wrong place fails while building, not at the receiver. Free text (names,
descriptions, identifiers from the source) is escaped (``| ^ & ~ \\``) and enters as hl7apy
``ST``/``FT``/``IS``/``ID`` values; line breaks become spaces because ``\\r`` ends a segment.

Layout::

    MSH  ORU^R01^ORU_R01, 2.5.1
    PID  PID-3 Patient ID^^^assigning authority^MR, PID-5 name, PID-7 birth date, PID-8 sex
    ORC  RE, ORC-2 placer / ORC-3 filler order numbers (EI, with their namespaces)
    OBR  OBR-2/3 as ORC-2/3, OBR-4 procedure, OBR-7 study date/time, OBR-18 accession,
         OBR-25 P (C for a corrected result)
    NTE  "AI result - preliminary, not verified"; the algorithm (name, version, maker, UID);
         for a corrected result, what it replaces (task, SR UID)
    OBX  per finding, sub-ID = finding number: presence (CWE), probability (NM, 1),
         volume (NM, mL), area (NM, mm2); OBX-11 P (C for a corrected result), OBX-18 device
         UID, OBX-19 analysis time
    ZDS  ZDS-1 Study Instance UID^<MSH-3>^Application^DICOM (IHE RAD), the last segment

The order's identifiers go back as received: placer and filler order numbers with their EI
namespace and universal ID, the patient ID's assigning authority (PID-3.4). Without an order
(or without a filler number) ORC-3/OBR-3 is statlane's own filler number, namespace
``STATLANE`` (``identifiers.statlane_filler_number``); without the order's PID-3.4 the
authority is the study's IssuerOfPatientID. OBR-18 is the study's accession number (equal to
the order's).

A result that replaces an earlier version (``AIResult.replaces``: a re-run on more images, or
another model version) is a correction: OBR-25 and every OBX-11 are ``C`` (HL7 tables 0123 and
0085: "Correction to results"), with the same order numbers, so the RIS replaces the
observations it holds for the order.

hl7apy drops Z segments from its tree, so ZDS is appended to the ER7 text and ``validate_oru``
checks it with a pattern of its own.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from hl7apy.base_datatypes import FT, ID, IS, ST
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Field, Group, Message, Segment
from hl7apy.exceptions import HL7apyException, MaxLengthReached
from hl7apy.parser import parse_message

from models.postprocess import Finding
from router.messages.codes import (
    ABSENT,
    IMAGING_REPORT,
    PRELIMINARY_NOTICE,
    PRESENT,
    Code,
    MessageInvalid,
    check_order,
    measurements,
)
from router.messages.identifiers import (
    STATLANE_NAMESPACE,
    patient_authority,
    statlane_filler_number,
)
from router.result import AIResult, StudyIdentity
from router.vocabulary import AssigningAuthority, OrderContext

log = logging.getLogger(__name__)

VERSION = "2.5.1"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_DICOM_TIME = re.compile(r"^(\d{2}(?:\d{2}(?:\d{2})?)?)(?:\.(\d{1,6}))?$")
_SEX = {"M", "F", "O"}  # DICOM PatientSex values that HL7 table 0001 shares
# A DICOM UID as the gateway accepts it (PS3.5 9.1): a study it stored gets its ORU.
_UID = re.compile(r"(0|[1-9]\d*)(\.(0|[1-9]\d*))*")
# ZDS-1 (RP): Study Instance UID ^ application ID ^ type of data ^ subtype (IHE RAD TF-2).
_ZDS = re.compile(r"ZDS\|(?P<uid>[0-9.]{1,64})\^[^|^~\\&]+\^Application\^DICOM")


def build_oru(
    result: AIResult,
    order: OrderContext | None,
    *,
    sending_application: str = "STATLANE",
    sending_facility: str = "STATLANE",
    receiving_application: str = "RIS",
    receiving_facility: str = "HOSPITAL",
    message_control_id: str,
    now: datetime,
) -> str:
    """The ORU^R01 of ``result`` as ER7 text, segments separated by ``\\r``.

    Args:
        result: The postprocessed AI result (its study identity fills PID and OBR).
        order: The imaging order, if one arrived; it supplies ORC/OBR order numbers (with their
            namespaces), OBR-4 and PID-3's assigning authority.
        sending_application: MSH-3.
        sending_facility: MSH-4.
        receiving_application: MSH-5.
        receiving_facility: MSH-6.
        message_control_id: MSH-10, at most 20 characters.
        now: MSH-7 and ORC-9, timezone-aware.

    Raises:
        MessageInvalid: The result cannot make a valid message (no Patient ID, an order of
            another study, a field too long, a naive datetime ...).
    """
    uid = result.study.study_instance_uid
    check_order(result.study, order)
    if not result.study.patient_id:
        raise MessageInvalid(f"study {uid}: no Patient ID; PID-3 is required")
    if not result.study.patient_name.split("=")[0].split("^")[0].strip():
        raise MessageInvalid(f"study {uid}: no patient family name; PID-5 is required")
    if not 0 < len(message_control_id) <= 20:  # MSH-10 is ST(20) in v2.5.1
        raise MessageInvalid(f"study {uid}: MSH-10 message control ID must be 1-20 characters")
    message = Message("ORU_R01", version=VERSION, validation_level=VALIDATION_LEVEL.STRICT)
    with _building(uid, "MSH"):
        _msh(message.msh, now, message_control_id, sending_application, sending_facility)
        message.msh.msh_5.hd_1 = _is(receiving_application)
        message.msh.msh_6.hd_1 = _is(receiving_facility)
    patient_result = message.add_group("ORU_R01_PATIENT_RESULT")
    if not _UID.fullmatch(uid) or len(uid) > 64:
        raise MessageInvalid(f"study {uid!r}: the Study Instance UID is not a DICOM UID (ZDS-1)")
    with _building(uid, "PID"):
        pid = patient_result.add_group("ORU_R01_PATIENT").add_segment("PID")
        _pid(pid, result.study, patient_authority(result.study, order))
    order_observation = patient_result.add_group("ORU_R01_ORDER_OBSERVATION")
    with _building(uid, "ORC/OBR"):
        filler = (
            (order.filler_order_number, order.filler_order_authority)
            if order is not None and order.filler_order_number
            else (
                statlane_filler_number(uid, result.algorithm.device_uid),
                AssigningAuthority(namespace_id=STATLANE_NAMESPACE),
            )
        )
        _orc(order_observation.add_segment("ORC"), order, filler, now)
        _obr(order_observation.add_segment("OBR"), result, order, filler)
    with _building(uid, "NTE"):
        algorithm = result.algorithm
        _nte(order_observation, 1, PRELIMINARY_NOTICE)
        _nte(
            order_observation,
            2,
            f"Algorithm {algorithm.name} version {algorithm.version}, manufacturer "
            f"{algorithm.manufacturer}, device UID {algorithm.device_uid}",
        )
        if result.replaces is not None:
            _nte(
                order_observation,
                3,
                f"Corrected result: replaces the result of {result.replaces.model} "
                f"(SR {result.replaces.sr_sop_instance_uid})",
            )
    set_id = 0
    for number, finding in enumerate(result.findings, start=1):
        with _building(uid, f"OBX of finding {finding.name}"):
            for obx in _observations(finding, number, result):
                set_id += 1
                obx.obx_1 = str(set_id)
                order_observation.add_group("ORU_R01_OBSERVATION").add(obx)
    with _building(uid, "ORU_R01"):
        text: str = message.to_er7()
    # IHE's study identification, last: hl7apy keeps no Z segment in its tree.
    text += f"\rZDS|{uid}^{escape_text(_clean(sending_application))}^Application^DICOM"
    try:  # what the receiver will parse, not the object tree, is what must be valid
        validate_oru(text)
    except MessageInvalid as exc:
        raise MessageInvalid(f"study {uid}: built an invalid message: {exc}") from None
    log.debug(
        "built ORU^R01 %s for study %s: %d findings, %d OBX",
        message_control_id,
        uid,
        len(result.findings),
        set_id,
    )
    return text


def validate_oru(text: str) -> None:
    """Parse ``text`` back at hl7apy STRICT level and validate it against the ORU_R01 structure.

    hl7apy leaves Z segments out of what it parses, so the one Z segment allowed, ZDS, is checked
    here: exactly one, the last segment, ZDS-1 a DICOM UID with ``^<application>^Application^
    DICOM``.

    Raises:
        MessageInvalid: With hl7apy's reason (values that may carry PHI are left out).
    """
    segments = [s for s in re.split(r"\r\n|\r|\n", text) if s]
    z_segments = [i for i, s in enumerate(segments) if s.startswith("Z")]
    if z_segments != [len(segments) - 1] or not segments[-1].startswith("ZDS|"):
        raise MessageInvalid("ORU invalid: ZDS must be the last segment, and the only Z segment")
    match = _ZDS.fullmatch(segments[-1])
    if match is None or not _UID.fullmatch(match["uid"]):
        raise MessageInvalid("ORU invalid: ZDS-1 is not UID^application^Application^DICOM")
    try:
        message = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT)
        if message.name != "ORU_R01":
            raise MessageInvalid(f"ORU invalid: message structure is {message.name}, not ORU_R01")
        message.validate()
    except MessageInvalid:
        raise
    except HL7apyException as exc:
        raise MessageInvalid(f"ORU invalid: {_reason(exc)}") from None
    # hl7apy fails on garbage with any type; its text may hold PHI, so only the type is named.
    except Exception as exc:  # noqa: BLE001
        raise MessageInvalid(f"ORU invalid: unparseable ({type(exc).__name__})") from None


def _msh(msh: Segment, now: datetime, control_id: str, application: str, facility: str) -> None:
    msh.msh_3.hd_1 = _is(application)
    msh.msh_4.hd_1 = _is(facility)
    msh.msh_7.ts_1 = hl7_datetime(now)
    msh.msh_9 = "ORU^R01^ORU_R01"
    msh.msh_10 = _st(control_id)
    msh.msh_11 = "P"
    msh.msh_18 = "UNICODE UTF-8"


def _pid(pid: Segment, study: StudyIdentity, authority: AssigningAuthority) -> None:
    pid.pid_1 = "1"
    pid.pid_3.cx_1 = _st(study.patient_id)
    if authority.namespace_id:
        pid.pid_3.cx_4.hd_1 = _is(authority.namespace_id)
    if authority.universal_id:
        pid.pid_3.cx_4.hd_2 = _st(authority.universal_id)
    if authority.universal_id_type:
        pid.pid_3.cx_4.hd_3 = _id(authority.universal_id_type)
    pid.pid_3.cx_5 = _id("MR")
    # DICOM PN family^given^middle^prefix^suffix → XPN family^given^middle^suffix^prefix;
    # only the alphabetic group (before the first "=") is sent.
    parts = [*study.patient_name.split("=")[0].split("^"), "", "", "", "", ""][:5]
    family, given, middle, prefix, suffix = (_clean(p) for p in parts)
    pid.pid_5.xpn_1.fn_1 = _st(family)
    for name, value in (("xpn_2", given), ("xpn_3", middle), ("xpn_4", suffix), ("xpn_5", prefix)):
        if value:
            setattr(pid.pid_5, name, _st(value))
    if re.fullmatch(r"\d{8}", study.patient_birth_date):
        pid.pid_7.ts_1 = study.patient_birth_date
    if study.patient_sex:
        pid.pid_8 = _is(study.patient_sex if study.patient_sex in _SEX else "U")


OrderNumber = tuple[str, AssigningAuthority]
"""An order number (EI-1) and who assigned it (EI-2..4)."""


def _set_ei(field: Field, number: OrderNumber) -> None:
    value, authority = number
    field.ei_1 = _st(value)
    if authority.namespace_id:
        field.ei_2 = _is(authority.namespace_id)
    if authority.universal_id:
        field.ei_3 = _st(authority.universal_id)
    if authority.universal_id_type:
        field.ei_4 = _id(authority.universal_id_type)


def _orc(orc: Segment, order: OrderContext | None, filler: OrderNumber, now: datetime) -> None:
    orc.orc_1 = "RE"  # observations to follow
    if order is not None and order.placer_order_number:
        _set_ei(orc.orc_2, (order.placer_order_number, order.placer_order_authority))
    _set_ei(orc.orc_3, filler)
    orc.orc_9.ts_1 = hl7_datetime(now)


def _obr(obr: Segment, result: AIResult, order: OrderContext | None, filler: OrderNumber) -> None:
    study = result.study
    obr.obr_1 = "1"
    if order is not None and order.placer_order_number:
        _set_ei(obr.obr_2, (order.placer_order_number, order.placer_order_authority))
    _set_ei(obr.obr_3, filler)
    if order is not None and order.procedure_code:
        obr.obr_4.ce_1 = _st(order.procedure_code)
        obr.obr_4.ce_2 = _st(order.procedure_meaning)
        obr.obr_4.ce_3 = _id(order.procedure_scheme)
    elif study.study_description:
        obr.obr_4.ce_2 = _st(study.study_description)
    else:  # OBR-4 is required: say what kind of study this is, generically
        _set_code(obr.obr_4, IMAGING_REPORT)
    observed = study_datetime(study)
    if observed:
        obr.obr_7.ts_1 = observed
    if study.accession_number:
        obr.obr_18 = _st(study.accession_number)
    obr.obr_22.ts_1 = hl7_datetime(result.completed_at)
    obr.obr_24 = "RAD"
    # Preliminary: an AI result is never a verified report; a new version corrects the last.
    obr.obr_25 = result_status(result)


def _nte(group: Group, set_id: int, text: str) -> None:
    nte = group.add_segment("NTE")
    nte.nte_1 = str(set_id)
    nte.nte_2 = "L"  # comment from the filler (statlane)
    nte.nte_3 = _ft(text)


def _observations(finding: Finding, number: int, result: AIResult) -> list[Segment]:
    """Presence, probability and measurements of one finding; they share OBX-4 = ``number``."""
    concept = Code(finding.concept_value, finding.concept_scheme, finding.concept_meaning)
    presence = _obx("CWE", concept, number, result)
    value = PRESENT if finding.present else ABSENT
    presence.obx_5 = f"{value.value}^{value.meaning}^{value.scheme}"  # constants: no escaping
    if finding.present:
        presence.obx_8 = "AA" if finding.critical else "A"
    segments = [presence]
    for measurement in measurements(finding):
        obx = _obx("NM", measurement.code, number, result)
        obx.obx_5 = measurement.text
        _set_code(obx.obx_6, measurement.unit)
        segments.append(obx)
    return segments


def _obx(value_type: str, code: Code, sub_id: int, result: AIResult) -> Segment:
    obx = Segment("OBX", version=VERSION, validation_level=VALIDATION_LEVEL.STRICT)
    obx.obx_2 = value_type
    _set_code(obx.obx_3, code)
    obx.obx_4 = str(sub_id)
    obx.obx_11 = result_status(result)
    observed = study_datetime(result.study)
    if observed:
        obx.obx_14.ts_1 = observed
    obx.obx_18.ei_1 = _st(result.algorithm.device_uid)
    obx.obx_19.ts_1 = hl7_datetime(result.completed_at)
    return obx


def result_status(result: AIResult) -> str:
    """OBR-25 and OBX-11: ``P`` (preliminary), or ``C`` (correction) for a result that
    replaces an earlier version of the same task lineage."""
    return "C" if result.replaces is not None else "P"


def _set_code(field: Field, code: Code) -> None:
    field.ce_1 = _st(code.value)
    field.ce_2 = _st(code.meaning)
    field.ce_3 = _id(code.scheme)


def hl7_datetime(moment: datetime) -> str:
    """HL7 DTM ``YYYYMMDDHHMMSS+ZZZZ`` of a timezone-aware datetime (seconds precision)."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise MessageInvalid("datetimes in messages must be timezone-aware")
    return moment.strftime("%Y%m%d%H%M%S%z")


def study_datetime(study: StudyIdentity) -> str:
    """HL7 DTM of the study's DICOM date and time (local time, no zone); "" without a date."""
    if not re.fullmatch(r"\d{8}", study.study_date):
        return ""
    match = _DICOM_TIME.match(study.study_time)
    if match is None:
        return study.study_date
    whole, fraction = match.groups()
    # HL7 DTM carries at most four fraction digits, and only after full seconds.
    if fraction and len(whole) == 6:
        return f"{study.study_date}{whole}.{fraction[:4]}"
    return f"{study.study_date}{whole}"


def _clean(text: str) -> str:
    """Control characters (``\\r`` ends a segment) become single spaces."""
    return _CONTROL.sub(" ", text).strip()


# Free text enters the message only through these. The text is escaped here, completely (a
# source value that happens to contain "\F\" must arrive as those three characters, which
# hl7apy's own escaping would leave alone); hl7apy's escaping then finds nothing left to do, and
# at STRICT level it refuses values longer than the datatype allows.
def escape_text(text: str) -> str:
    """``text`` with HL7 v2 delimiters escaped (default encoding characters ``|^~\\&``)."""
    escaped = text.replace("\\", "\\E\\")
    for char, sequence in (("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\")):
        escaped = escaped.replace(char, sequence)
    return escaped


def _st(text: str) -> ST:
    return ST(escape_text(_clean(text)), validation_level=VALIDATION_LEVEL.STRICT)


def _ft(text: str) -> FT:
    return FT(escape_text(_clean(text)), validation_level=VALIDATION_LEVEL.STRICT)


def _is(text: str) -> IS:
    return IS(escape_text(_clean(text)), validation_level=VALIDATION_LEVEL.STRICT)


def _id(text: str) -> ID:
    return ID(escape_text(_clean(text)), validation_level=VALIDATION_LEVEL.STRICT)


def _reason(exc: HL7apyException) -> str:
    if isinstance(exc, MaxLengthReached):  # its text repeats the value, which may be PHI
        return f"a value is longer than {exc.limit} characters"
    return f"{type(exc).__name__}: {exc}"


@contextmanager
def _building(uid: str, where: str) -> Iterator[None]:
    """hl7apy errors while building become one MessageInvalid naming the study and segment."""
    try:
        yield
    except HL7apyException as exc:
        raise MessageInvalid(f"study {uid}: {where}: {_reason(exc)}") from None
