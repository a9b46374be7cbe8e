"""A worklist rank change as HL7 v2.5.1 ORM^O01 (for the RIS) and as a FHIR R4B Task.

When the worklist re-orders a study (``router.worklist.signals.RankChange``), the JSON webhook
payload has two siblings built here, both from the change alone and both validated before they
leave:

- **HL7 v2** ``ORM^O01`` with order control ``XO`` (change order), checked by
  ``validate_rank_change_hl7`` at hl7apy STRICT level. The RIS finds its order by its own
  placer and filler order numbers (ORC-2/ORC-3 and OBR-2/OBR-3, from the order it sent, as the
  ORU does) and by accession number (OBR-18, as elsewhere in statlane); for a study without a
  received order, or an order without those numbers, the accession number stands in for both
  (radiology systems commonly use it as the filler order number). ORM_O01 in v2.5.1 has
  no TQ1 segment, so the priority (HL7 table 0027: ``S`` stat when the study carries a red flag)
  goes in the TQ priority component of ORC-7 and, equal to it as IHE Radiology asks, of OBR-27.
  Without a red flag both stay empty: the change does not know the order's own priority, and a
  signal must never downgrade a stat order to routine. The Study Instance UID travels coded,
  in one OBX (DICOM
  ``110180^Study Instance UID^DCM``, value type ST, result status ``O``: order detail, not a
  result): IHE's ZDS segment does not parse at STRICT where IHE puts it (after OBR), and the
  OBR placer/filler fields are 60 characters in v2.5.1, short of the 64 a UID may have. One NTE
  says what happened in words.
- **FHIR** ``Task`` (status requested, intent order, priority stat with a red flag, else none:
  never a downgrade) whose ``focus``
  is the ImagingStudy by ``urn:oid:`` Study Instance UID and whose ``basedOn`` is the
  ServiceRequest by accession number, both logical references by identifier with the same
  systems as ``router.messages.fhir``. ``input`` carries old rank, new rank, red flag and AI
  label; ``businessStatus.text`` is the same sentence as the NTE. ``validate_rank_change_fhir``
  runs the ``fhir.resources`` R4B model and our bindings.

No PHI: a rank change goes to every worklist consumer whenever a study moves, so it names the
study only by accession number and Study Instance UID, never by patient name or ID. The HL7
message has no PID segment (optional in ORM_O01) and the Task no ``for``; the validators refuse
both. Error texts name the study by Study Instance UID.

Layout of the HL7 message::

    MSH  ORM^O01^ORM_O01, 2.5.1, MSH-7 = when the order was computed
    ORC  XO, ORC-2/ORC-3 = the order's placer/filler numbers (else accession), ORC-7.6 priority
         S or empty, ORC-9 = MSH-7
    OBR  OBR-2/OBR-3 = ORC-2/ORC-3, OBR-4 ^AI worklist priority, OBR-18 accession,
         OBR-27.6 = ORC-7.6
    NTE  "AI: critical finding suspected; worklist rank 15 -> 1"
    OBX  ST, 110180^Study Instance UID^DCM, the UID, OBX-11 O
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from datetime import datetime
from functools import cache
from typing import Any

import pydantic
from fhir.resources.R4B.task import Task
from hl7apy import load_reference
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message, Segment
from hl7apy.exceptions import HL7apyException
from hl7apy.parser import parse_message
from hl7apy.validation import Validator

from router.messages.codes import DICOM_UID, V2_0203, Code, MessageInvalid
from router.messages.hl7_oru import (
    VERSION,
    _building,
    _ft,
    _is,
    _reason,
    _set_code,
    _st,
    hl7_datetime,
)
from router.messages.identifiers import IdentifierSystems
from router.vocabulary import OrderContext
from router.worklist.signals import RankChange

log = logging.getLogger(__name__)

MESSAGE_TYPE = "ORM^O01^ORM_O01"
ORDER_CONTROL = "XO"  # HL7 table 0119: change order/service request
PRIORITY_STAT = "S"  # HL7 table 0027
# OBR-4: what is "ordered" by this message; free text, no code system claims it.
SERVICE_TEXT = "AI worklist priority"
STUDY_INSTANCE_UID = Code("110180", "DCM", "Study Instance UID")  # DICOM PS3.16
RESULT_STATUS_ORDER_DETAIL = "O"  # HL7 table 0085: order detail description only (no result)

TASK_CODE_TEXT = "worklist priority change"
TASK_STATUS = frozenset(  # R4B task-status, required binding
    {
        "draft",
        "requested",
        "received",
        "accepted",
        "rejected",
        "ready",
        "cancelled",
        "in-progress",
        "on-hold",
        "failed",
        "completed",
        "entered-in-error",
    }
)
TASK_INTENT = frozenset(  # R4B task-intent, required binding
    {
        "unknown",
        "proposal",
        "plan",
        "order",
        "original-order",
        "reflex-order",
        "filler-order",
        "instance-order",
        "option",
    }
)
# Task.input types (type.text) and the value[x] each carries.
INPUT_OLD_RANK = "old worklist rank"
INPUT_NEW_RANK = "new worklist rank"
INPUT_RED_FLAG = "red flag"
INPUT_LABEL = "AI label"
INPUT_VALUE: dict[str, str] = {
    INPUT_OLD_RANK: "valueInteger",
    INPUT_NEW_RANK: "valueInteger",
    INPUT_RED_FLAG: "valueBoolean",
    INPUT_LABEL: "valueString",
}

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DICOM_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")


def describe_rank_change(change: RankChange) -> str:
    """The change in plain words, one line: the NTE of the ORM and the Task's businessStatus.

    Examples: ``AI: critical finding suspected; worklist rank 15 -> 1``,
    ``AI pending; added to the worklist at rank 4``, ``Removed from the worklist (was rank 7)``.
    """
    if change.old_rank is None and change.new_rank is None:
        where = "not on the worklist"
    elif change.old_rank is None:
        where = f"added to the worklist at rank {change.new_rank}"
    elif change.new_rank is None:
        where = f"removed from the worklist (was rank {change.old_rank})"
    elif change.old_rank == change.new_rank:
        where = f"worklist rank {change.new_rank} (unchanged)"
    else:
        where = f"worklist rank {change.old_rank} -> {change.new_rank}"
    head = "AI: critical finding suspected" if change.red_flag else change.label.value
    sentence = f"{head}; {where}" if head else where
    return sentence[:1].upper() + sentence[1:]


def build_rank_change_hl7(
    change: RankChange,
    at: datetime,
    *,
    message_control_id: str,
    order: OrderContext | None = None,
    sending_application: str = "STATLANE",
    sending_facility: str = "STATLANE",
    receiving_application: str = "RIS",
    receiving_facility: str = "",
) -> str:
    """The ORM^O01 (order control XO) of ``change`` as ER7 text, segments separated by ``\\r``.

    Args:
        change: The study's rank change.
        at: When the new order was computed: MSH-7 and ORC-9, timezone-aware.
        message_control_id: MSH-10, 1-20 characters.
        order: The order the RIS sent for this accession number, if one was received: its
            placer and filler order numbers go in ORC-2/ORC-3 and OBR-2/OBR-3.
        sending_application: MSH-3.
        sending_facility: MSH-4.
        receiving_application: MSH-5.
        receiving_facility: MSH-6 (left empty when "").

    Raises:
        MessageInvalid: The change cannot make a valid message (no accession number or Study
            Instance UID, an order of another accession number, a naive datetime, a field
            too long ...); the text is checked with ``validate_rank_change_hl7`` before it is
            returned.
    """
    uid = _required_uid(change)
    if not change.accession.strip():
        raise MessageInvalid(f"study {uid}: no accession number; the RIS cannot find the order")
    placer, filler = _order_numbers(change, order, uid)
    if not 0 < len(message_control_id) <= 20:  # MSH-10 is ST(20) in v2.5.1
        raise MessageInvalid(f"study {uid}: MSH-10 message control ID must be 1-20 characters")
    when = hl7_datetime(at)
    priority = PRIORITY_STAT if change.red_flag else ""  # never a downgrade: none without a flag
    message = Message("ORM_O01", version=VERSION, validation_level=VALIDATION_LEVEL.STRICT)
    with _building(uid, "MSH"):
        _fill_msh(
            message.msh,
            when,
            message_control_id,
            (sending_application, sending_facility),
            (receiving_application, receiving_facility),
        )
    order_group = message.add_group("ORM_O01_ORDER")
    with _building(uid, "ORC"):
        _fill_orc(order_group.add_segment("ORC"), placer, filler, priority, when)
    detail = order_group.add_group("ORM_O01_ORDER_DETAIL")
    with _building(uid, "OBR"):
        obr = detail.add_group("ORM_O01_OBRRQDRQ1RXOODSODT_SUPPGRP").add_segment("OBR")
        _fill_obr(obr, placer, filler, priority, change.accession)
    with _building(uid, "NTE"):
        _fill_nte(detail.add_segment("NTE"), change)
    with _building(uid, "OBX"):
        obx = _study_uid_obx(uid)
        detail.add_group("ORM_O01_OBSERVATION").add(obx)
    with _building(uid, "ORM_O01"):
        text: str = message.to_er7()
    try:  # what the RIS will parse, not the object tree, is what must be valid
        validate_rank_change_hl7(text)
    except MessageInvalid as exc:
        raise MessageInvalid(f"study {uid}: built an invalid message: {exc}") from None
    log.debug("built ORM^O01 %s for study %s: priority %s", message_control_id, uid, priority)
    return text


def _fill_msh(
    msh: Segment,
    when: str,
    control_id: str,
    sender: tuple[str, str],
    receiver: tuple[str, str],
) -> None:
    """MSH: sending and receiving (application, facility), MSH-7 ``when``, MSH-10 ``control_id``.

    An empty receiving facility leaves MSH-6 empty.
    """
    msh.msh_3.hd_1 = _is(sender[0])
    msh.msh_4.hd_1 = _is(sender[1])
    msh.msh_5.hd_1 = _is(receiver[0])
    if receiver[1]:
        msh.msh_6.hd_1 = _is(receiver[1])
    msh.msh_7.ts_1 = when
    msh.msh_9 = MESSAGE_TYPE
    msh.msh_10 = _st(control_id)
    msh.msh_11 = "P"
    msh.msh_18 = "UNICODE UTF-8"


def _fill_orc(orc: Segment, placer: str, filler: str, priority: str, when: str) -> None:
    """ORC: change order (XO), ORC-2/ORC-3 order numbers, ORC-7.6 priority, ORC-9 ``when``."""
    orc.orc_1 = ORDER_CONTROL
    if placer:
        orc.orc_2.ei_1 = _st(placer)
    if filler:
        orc.orc_3.ei_1 = _st(filler)
    if priority:
        orc.orc_7.tq_6 = priority
    orc.orc_9.ts_1 = when


def _fill_obr(obr: Segment, placer: str, filler: str, priority: str, accession: str) -> None:
    """OBR: the order numbers again, the service text, OBR-18 accession, OBR-27.6 priority."""
    obr.obr_1 = "1"
    if placer:
        obr.obr_2.ei_1 = _st(placer)
    if filler:
        obr.obr_3.ei_1 = _st(filler)
    obr.obr_4.ce_2 = _st(SERVICE_TEXT)
    obr.obr_18 = _st(accession)
    if priority:
        obr.obr_27.tq_6 = priority


def _fill_nte(nte: Segment, change: RankChange) -> None:
    """NTE: the change in plain words, a comment from statlane."""
    nte.nte_1 = "1"
    nte.nte_2 = "L"  # comment from statlane
    nte.nte_3 = _ft(describe_rank_change(change))


def _study_uid_obx(uid: str) -> Segment:
    """OBX carrying the Study Instance UID, coded, as order detail (OBX-11 ``O``)."""
    obx = Segment("OBX", version=VERSION, validation_level=VALIDATION_LEVEL.STRICT)
    obx.obx_1 = "1"
    obx.obx_2 = "ST"
    _set_code(obx.obx_3, STUDY_INSTANCE_UID)
    obx.obx_5 = uid  # digits and dots only (checked): nothing to escape
    obx.obx_11 = RESULT_STATUS_ORDER_DETAIL
    return obx


def _order_numbers(change: RankChange, order: OrderContext | None, uid: str) -> tuple[str, str]:
    """Placer and filler order numbers for ORC-2/ORC-3: the order's, else the accession."""
    if order is None:
        return change.accession, change.accession
    if order.accession_number != change.accession:
        raise MessageInvalid(f"study {uid}: the order given is of another accession number")
    if not (order.placer_order_number or order.filler_order_number):
        return change.accession, change.accession
    return order.placer_order_number, order.filler_order_number


def validate_rank_change_hl7(text: str) -> None:
    """Parse ``text`` at hl7apy STRICT level, validate it as ORM_O01 v2.5.1, check our profile.

    The profile: default encoding characters, MSH-12 ``2.5.1`` (checked before parsing, as
    hl7apy would otherwise parse by whatever version MSH-12 names), MSH-9 ``ORM^O01^ORM_O01``;
    one order, ORC-1 ``XO``; ORC-7 and OBR-27 priority ``S`` or ``R`` and equal; OBR-18 (the
    accession) present; no PID. hl7apy's validation is run with choice groups handled as the
    standard defines them (see ``_relaxed_reference``).

    Raises:
        MessageInvalid: One line with the reason.
    """
    header = text.split("\r", 1)[0].split("|")
    if header[:2] != ["MSH", "^~\\&"]:
        raise MessageInvalid("ORM invalid: does not start with MSH and the encoding ^~\\&")
    if len(header) < 12 or header[11].split("^")[0] != VERSION:  # before hl7apy picks a version
        raise MessageInvalid(f"ORM invalid: MSH-12 version is not {VERSION}")
    try:
        message = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT)
        if message.name != "ORM_O01":
            raise MessageInvalid(f"ORM invalid: message structure is {message.name}, not ORM_O01")
        Validator.validate(message, reference=_relaxed_reference(message.name, message.version))
        _check_choices(message)
        _check_profile(message)
    except MessageInvalid:
        raise
    except HL7apyException as exc:
        raise MessageInvalid(f"ORM invalid: {_one_line(_reason(exc))}") from None
    # hl7apy fails on garbage with any type; its text may hold values, so only the type is named.
    except Exception as exc:  # noqa: BLE001
        raise MessageInvalid(f"ORM invalid: unparseable ({type(exc).__name__})") from None


# hl7apy 1.3.5's Validator treats a "choice" group like a "sequence" and so demands every
# alternative (crs4/hl7apy#151): ORM_O01's OBR|RQD|RQ1|RXO|ODS|ODT group can never validate. The
# message is validated against its own reference with each alternative made optional, and
# ``_check_choices`` then asks for exactly one alternative, as the standard does.
@cache
def _relaxed_reference(name: str, version: str) -> Any:
    """hl7apy's reference of message ``name`` with the alternatives of choice groups optional."""
    return _relax(load_reference(name, "Message", version))


def _relax(structure: Any) -> Any:
    if structure[0] not in ("sequence", "choice"):
        return structure
    children = []
    for name, child, cardinality, *rest in structure[1]:
        if structure[0] == "choice":
            cardinality = (0, cardinality[1])
        children.append((name, _relax(child), cardinality, *rest))
    return (structure[0], tuple(children), *structure[2:])


@cache
def _choice_groups(name: str, version: str) -> frozenset[str]:
    """Names of the choice groups in message ``name``."""
    found: set[str] = set()
    pending = [load_reference(name, "Message", version)]
    while pending:
        structure = pending.pop()
        for child_name, child, _cardinality, kind in structure[1]:
            if kind == "GRP":  # segments and fields hold no groups
                if child[0] == "choice":
                    found.add(child_name)
                pending.append(child)
    return frozenset(found)


def _check_choices(message: Message) -> None:
    """Every choice group of the message holds exactly one of its alternatives."""
    choices = _choice_groups(message.name, message.version)
    pending = [message]
    while pending:
        element = pending.pop()
        if element.name in choices and len(element.children) != 1:
            raise MessageInvalid(
                f"ORM invalid: {element.name} holds {len(element.children)} alternatives, "
                "expected exactly 1"
            )
        pending.extend(c for c in element.children if c.classname == "Group")


def _check_profile(message: Message) -> None:
    if message.msh.msh_9.to_er7() != MESSAGE_TYPE:
        raise MessageInvalid(f"ORM invalid: MSH-9 is not {MESSAGE_TYPE}")
    if message.children.get("ORM_O01_PATIENT"):
        raise MessageInvalid("ORM invalid: a PID group; worklist signals carry no patient data")
    orders = message.children.get("ORM_O01_ORDER")
    if len(orders) != 1:
        raise MessageInvalid(f"ORM invalid: {len(orders)} orders, expected 1")
    orc = orders[0].orc
    if orc.orc_1.to_er7() != ORDER_CONTROL:
        raise MessageInvalid(f"ORM invalid: ORC-1 is not {ORDER_CONTROL}")
    details = orders[0].children.get("ORM_O01_ORDER_DETAIL")
    obrs = details[0].children.get("ORM_O01_OBRRQDRQ1RXOODSODT_SUPPGRP") if details else []
    if not obrs or not obrs[0].children.get("OBR"):
        raise MessageInvalid("ORM invalid: no OBR")
    obr = obrs[0].obr
    if not obr.obr_18.to_er7():
        raise MessageInvalid("ORM invalid: OBR-18 accession number is empty")
    priority = orc.orc_7.tq_6.to_er7()
    if priority not in (PRIORITY_STAT, ""):
        raise MessageInvalid(f"ORM invalid: ORC-7.6 priority {priority!r} is not S or empty")
    if obr.obr_27.tq_6.to_er7() != priority:
        raise MessageInvalid("ORM invalid: OBR-27.6 priority differs from ORC-7.6")


#: Accession system when the caller names none: the default site's (see ``identifiers``).
DEFAULT_ACCESSION_SYSTEM = IdentifierSystems().accession_system()


def build_rank_change_fhir(
    change: RankChange, at: datetime, *, accession_system: str = DEFAULT_ACCESSION_SYSTEM
) -> dict[str, Any]:
    """The FHIR R4B Task of ``change`` as plain JSON data.

    Args:
        change: The study's rank change.
        at: When the new order was computed: ``authoredOn``, timezone-aware.
        accession_system: FHIR system of the site's accession numbers (``basedOn``), as in
            the result bundles (``identifiers.accession_system`` in ``statlane.yaml``).

    Raises:
        MessageInvalid: No (DICOM) Study Instance UID or a naive datetime; the Task is checked
            with ``validate_rank_change_fhir`` before it is returned. Without an accession
            number the Task has no ``basedOn`` (the ImagingStudy still identifies the study).
    """
    uid = _required_uid(change)
    if at.tzinfo is None or at.utcoffset() is None:
        raise MessageInvalid("datetimes in messages must be timezone-aware")
    inputs: list[dict[str, Any]] = []
    if change.old_rank is not None:
        inputs.append(_input(INPUT_OLD_RANK, change.old_rank))
    if change.new_rank is not None:
        inputs.append(_input(INPUT_NEW_RANK, change.new_rank))
    inputs.append(_input(INPUT_RED_FLAG, change.red_flag))
    if change.label.value:  # FHIR strings may not be empty: no label, no entry
        inputs.append(_input(INPUT_LABEL, change.label.value))
    task: dict[str, Any] = {
        "resourceType": "Task",
        "status": "requested",
        "businessStatus": {"text": describe_rank_change(change)},
        "intent": "order",
        "code": {"text": TASK_CODE_TEXT},
        "focus": {
            "type": "ImagingStudy",
            "identifier": {"system": DICOM_UID, "value": f"urn:oid:{uid}"},
        },
        "authoredOn": at.isoformat(),
        "input": inputs,
    }
    if change.red_flag:  # never a downgrade: without a red flag the order keeps its own
        task["priority"] = "stat"
    if change.accession.strip():  # as fhir.py: no accession, no ServiceRequest to point at
        task["basedOn"] = [
            {
                "type": "ServiceRequest",
                "identifier": {
                    "type": {"coding": [{"system": V2_0203, "code": "ACSN"}]},
                    "system": accession_system,
                    "value": change.accession,
                },
            }
        ]
    try:  # eager: a Task that leaves here has passed the model and the bindings
        validate_rank_change_fhir(task)
    except MessageInvalid as exc:
        raise MessageInvalid(f"study {uid}: built an invalid Task: {exc}") from None
    return task


def validate_rank_change_fhir(resource: Mapping[str, Any]) -> None:
    """Validate a rank-change Task with ``fhir.resources`` (R4B) and our bindings.

    Beyond the model: resourceType Task; status, intent and priority in their required value
    sets; ``code.text``; ``focus`` an ImagingStudy by ``urn:dicom:uid``; ``basedOn`` (when
    present) ServiceRequests by ACSN identifier; every input of a known ``type.text`` with the
    value[x] that type takes, at most once each, ranks >= 1, red flag present and agreeing with
    the priority (stat exactly when red-flagged); no ``for`` (no patient).

    Raises:
        MessageInvalid: One line, the first problems by path (values left out).
    """
    if resource.get("resourceType") != "Task":
        raise MessageInvalid(f"FHIR Task invalid: resourceType {resource.get('resourceType')!r}")
    try:
        Task.model_validate(dict(resource))
    except pydantic.ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in e['loc'])}: {_one_line(e['msg'])[:120]}"
            for e in exc.errors(include_url=False, include_input=False, include_context=False)
        ]
        raise MessageInvalid(f"FHIR Task invalid: {'; '.join(problems[:3])}") from None
    violations = _task_violations(resource)
    if violations:
        raise MessageInvalid(f"FHIR Task violates bindings: {'; '.join(violations[:3])}")


def _task_violations(task: Mapping[str, Any]) -> list[str]:
    found: list[str] = []
    for name, allowed in (("status", TASK_STATUS), ("intent", TASK_INTENT)):
        if task.get(name) not in allowed:
            found.append(f"Task.{name} {task.get(name)!r} not in value set")
    if task.get("priority", "stat") != "stat":  # only ever raised, never lowered
        found.append(f"Task.priority {task.get('priority')!r} is not stat (or absent)")
    if "for" in task:
        found.append("Task.for names a patient; worklist signals carry no patient data")
    if not (task.get("code") or {}).get("text"):
        found.append("Task.code.text is missing")
    focus = task.get("focus") or {}
    focus_id = focus.get("identifier") or {}
    if (
        focus.get("type") != "ImagingStudy"
        or focus_id.get("system") != DICOM_UID
        or not str(focus_id.get("value", "")).startswith("urn:oid:")
    ):
        found.append("Task.focus is not an ImagingStudy by urn:dicom:uid identifier")
    for i, based_on in enumerate(task.get("basedOn") or []):
        identifier = based_on.get("identifier") or {}
        codings = (identifier.get("type") or {}).get("coding") or []
        if (
            based_on.get("type") != "ServiceRequest"
            or not identifier.get("value")
            or not identifier.get("system")
            or not any(c.get("system") == V2_0203 and c.get("code") == "ACSN" for c in codings)
        ):
            found.append(f"Task.basedOn[{i}] is not a ServiceRequest by accession (ACSN)")
    seen: dict[str, Any] = {}
    for i, entry in enumerate(task.get("input") or []):
        kind = str((entry.get("type") or {}).get("text") or "")
        value_key = INPUT_VALUE.get(kind)
        if value_key is None:
            found.append(f"Task.input[{i}].type.text {kind!r} is not a known input type")
        elif kind in seen:
            found.append(f"Task.input[{i}] repeats {kind!r}")
        elif value_key not in entry:
            found.append(f"Task.input[{i}] ({kind}) has no {value_key}")
        else:
            seen[kind] = entry[value_key]
            if value_key == "valueInteger" and entry[value_key] < 1:
                found.append(f"Task.input[{i}] ({kind}) is not a 1-based rank")
    priority = task.get("priority")
    if INPUT_RED_FLAG not in seen:
        found.append(f"Task.input has no {INPUT_RED_FLAG!r}")
    elif (priority == "stat") != bool(seen[INPUT_RED_FLAG]):
        found.append(f"Task.priority {priority!r} disagrees with the red flag input")
    return found


def _input(kind: str, value: int | bool | str) -> dict[str, Any]:
    return {"type": {"text": kind}, INPUT_VALUE[kind]: value}


def _required_uid(change: RankChange) -> str:
    """The change's Study Instance UID, which must be a DICOM UID (digits and dots, <= 64)."""
    uid = change.study_uid
    if not uid:
        raise MessageInvalid("rank change without a Study Instance UID")
    if len(uid) > 64 or not _DICOM_UID.fullmatch(uid):
        raise MessageInvalid("rank change: Study Instance UID is not a DICOM UID")
    return uid


def _one_line(text: str) -> str:
    """Control characters (a pattern in pydantic's text, hl7apy's) shown escaped, not raw."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)
