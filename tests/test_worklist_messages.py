"""Worklist rank-change signals as HL7 v2.5.1 ORM^O01 and FHIR R4B Task (router.messages).

The ORM is read back with a plain ER7 splitter (an oracle independent of the builder) and parsed
with hl7apy at STRICT level; the Task goes through fhir.resources' R4B model directly. Corrupted
messages and Tasks must fail the validators with a one-line ValueError.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from fhir.resources.R4B.task import Task
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from router.messages import (
    MessageInvalid,
    build_rank_change_fhir,
    build_rank_change_hl7,
    validate_rank_change_fhir,
    validate_rank_change_hl7,
)
from router.messages.codes import DICOM_UID, V2_0203
from router.messages.worklist_signal import describe_rank_change
from router.worklist import AIStatus, Label, RankChange, Worklist, WorklistEntry, rank_changes
from serving.gateway.hl7_orders import unescape  # the ingest side decodes what we send

AT = datetime(2026, 11, 30, 12, 5, 7, tzinfo=UTC)
STUDY_UID = "1.2.826.0.1.3680043.8.498.10498726317464051244711085734019266713"  # 64 chars
ACCESSION = "RAD2026113000417"
# What the PACS knows about the same study; none of it may travel with a worklist signal.
PATIENT_ID = "MRN-00482913"
PATIENT_NAME = "DOE^JANE^Q"


def change(
    old_rank: int | None = 15,
    new_rank: int | None = 1,
    red_flag: bool = True,
    label: Label = Label.CRITICAL,
    accession: str = ACCESSION,
    study_uid: str = STUDY_UID,
) -> RankChange:
    return RankChange(study_uid, accession, old_rank, new_rank, red_flag, label)


def hl7(c: RankChange, **kwargs: Any) -> str:
    return build_rank_change_hl7(c, AT, message_control_id="WLS000123", **kwargs)


def segments(text: str, name: str) -> list[list[str]]:
    """Fields of every ``name`` segment; index n is field n (MSH: n - 1, MSH-1 is the bar)."""
    return [s.split("|") for s in text.split("\r") if s.startswith(name + "|")]


def one(text: str, name: str) -> list[str]:
    found = segments(text, name)
    assert len(found) == 1, f"{len(found)} {name} segments"
    return found[0]


def field(seg: list[str], n: int) -> str:
    return seg[n] if n < len(seg) else ""


def component(value: str, n: int) -> str:
    parts = value.split("^")
    return parts[n - 1] if n <= len(parts) else ""


CASES = {
    "red flag up": change(),
    "pending, new on worklist": change(None, 4, False, Label.PENDING),
    "left worklist": change(7, None, False, Label.NONE),
    "no critical, moved down": change(2, 5, False, Label.NO_CRITICAL),
    "label only, same rank": change(3, 3, False, Label.UNAVAILABLE),
}


# --- HL7 v2 ORM^O01 ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_orm_parses_back_and_validates_at_strict(name: str) -> None:
    text = hl7(CASES[name])
    validate_rank_change_hl7(text)
    message = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT)
    assert message.name == "ORM_O01"
    assert message.msh.msh_12.to_er7() == "2.5.1"
    assert [s.split("|")[0] for s in text.split("\r")] == ["MSH", "ORC", "OBR", "NTE", "OBX"]


def test_orm_header() -> None:
    text = hl7(change(), receiving_facility="GENERAL HOSPITAL")
    msh = one(text, "MSH")
    assert msh[1] == "^~\\&"
    assert msh[2:6] == ["STATLANE", "STATLANE", "RIS", "GENERAL HOSPITAL"]
    assert msh[6] == "20261130120507+0000"  # MSH-7 = at
    assert msh[8] == "ORM^O01^ORM_O01"  # MSH-9
    assert msh[9] == "WLS000123"  # MSH-10
    assert msh[10] == "P"  # MSH-11
    assert msh[11] == "2.5.1"  # MSH-12
    default = one(hl7(change()), "MSH")
    assert default[5] == ""  # MSH-6 empty unless given


def test_orm_time_keeps_the_offset() -> None:
    local = AT.astimezone(timezone(timedelta(hours=-5)))
    text = build_rank_change_hl7(change(), local, message_control_id="X1")
    assert one(text, "MSH")[6] == "20261130070507-0500"
    assert field(one(text, "ORC"), 9) == "20261130070507-0500"


def test_orm_change_order_by_accession() -> None:
    text = hl7(change())
    orc, obr = one(text, "ORC"), one(text, "OBR")
    assert field(orc, 1) == "XO"
    assert field(orc, 2) == ACCESSION  # placer order number
    assert field(orc, 3) == ACCESSION  # filler order number
    assert field(orc, 9) == "20261130120507+0000"
    assert field(obr, 1) == "1"
    assert field(obr, 2) == ACCESSION
    assert field(obr, 3) == ACCESSION
    assert field(obr, 4) == "^AI worklist priority"
    assert field(obr, 18) == ACCESSION  # the project's accession field


def test_orm_names_the_ris_order_numbers_of_a_received_order() -> None:
    from router.vocabulary import OrderContext

    order = OrderContext(ACCESSION, placer_order_number="PO-7781", filler_order_number="FO-1290")
    text = hl7(change(), order=order)
    validate_rank_change_hl7(text)
    orc, obr = one(text, "ORC"), one(text, "OBR")
    assert (field(orc, 2), field(orc, 3)) == ("PO-7781", "FO-1290")
    assert (field(obr, 2), field(obr, 3)) == ("PO-7781", "FO-1290")
    assert field(obr, 18) == ACCESSION
    placer_only = OrderContext(ACCESSION, placer_order_number="PO-7781")
    orc = one(hl7(change(), order=placer_only), "ORC")
    assert (field(orc, 2), field(orc, 3)) == ("PO-7781", "")
    numberless = OrderContext(ACCESSION)  # e.g. an OMI^O23 without ORC-2/ORC-3
    orc = one(hl7(change(), order=numberless), "ORC")
    assert (field(orc, 2), field(orc, 3)) == (ACCESSION, ACCESSION)


def test_orm_refuses_an_order_of_another_accession() -> None:
    from router.vocabulary import OrderContext

    other = OrderContext("ACC-OTHER", placer_order_number="PO-1")
    with pytest.raises(MessageInvalid, match="another accession number"):
        hl7(change(), order=other)


@pytest.mark.parametrize(("red_flag", "priority"), [(True, "S"), (False, "")])
def test_orm_priority_in_orc7_and_obr27(red_flag: bool, priority: str) -> None:
    """S with a red flag; otherwise empty, so a stat order is never downgraded to routine."""
    label = Label.CRITICAL if red_flag else Label.NO_CRITICAL
    text = hl7(change(red_flag=red_flag, label=label))
    assert component(field(one(text, "ORC"), 7), 6) == priority
    assert component(field(one(text, "OBR"), 27), 6) == priority
    message = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT)
    assert message.ORM_O01_ORDER.ORC.orc_7.tq_6.to_er7() == priority


def test_orm_carries_the_study_instance_uid_in_a_coded_obx() -> None:
    obx = one(hl7(change()), "OBX")
    assert field(obx, 1) == "1"
    assert field(obx, 2) == "ST"
    assert field(obx, 3) == "110180^Study Instance UID^DCM"
    assert field(obx, 5) == STUDY_UID
    assert field(obx, 11) == "O"  # order detail, not a result


@pytest.mark.parametrize(
    ("c", "sentence"),
    [
        (change(), "AI: critical finding suspected; worklist rank 15 -> 1"),
        (change(None, 4, False, Label.PENDING), "AI pending; added to the worklist at rank 4"),
        (change(7, None, False, Label.NONE), "Removed from the worklist (was rank 7)"),
        (change(2, 5, False, Label.NO_CRITICAL), "AI: no critical finding; worklist rank 2 -> 5"),
        (change(3, 3, False, Label.UNAVAILABLE), "AI unavailable; worklist rank 3 (unchanged)"),
        (change(9, 12, False, Label.NONE), "Worklist rank 9 -> 12"),
        (
            change(None, 1, True, Label.CRITICAL),
            "AI: critical finding suspected; added to the worklist at rank 1",
        ),
    ],
)
def test_nte_says_what_changed_in_words(c: RankChange, sentence: str) -> None:
    assert describe_rank_change(c) == sentence
    nte = one(hl7(c), "NTE")
    assert field(nte, 1) == "1"
    assert field(nte, 2) == "L"
    assert unescape(field(nte, 3)) == sentence
    assert build_rank_change_fhir(c, AT)["businessStatus"]["text"] == sentence


@pytest.mark.parametrize(
    "accession",
    [
        "A|B^C~D\\E&F",
        "\\F\\literal",  # looks like an escape sequence; must arrive as these characters
        "ACC-" + "|^~\\&" * 12 + "-END",  # long and odd: 68 characters, 60 of them delimiters
    ],
)
def test_accession_with_delimiters_is_escaped(accession: str) -> None:
    text = hl7(change(accession=accession))
    validate_rank_change_hl7(text)
    orc, obr = one(text, "ORC"), one(text, "OBR")
    # No stray field separators.
    assert len(orc) == 10
    assert len(obr) == 28
    for value in (field(orc, 2), field(orc, 3), field(obr, 2), field(obr, 3), field(obr, 18)):
        assert not set(value) & set("|^~&")
        assert unescape(value) == accession
    message = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT)
    obr18 = message.ORM_O01_ORDER.ORM_O01_ORDER_DETAIL.ORM_O01_OBRRQDRQ1RXOODSODT_SUPPGRP.OBR
    assert unescape(obr18.obr_18.to_er7()) == accession
    task = build_rank_change_fhir(change(accession=accession), AT)
    assert task["basedOn"][0]["identifier"]["value"] == accession  # JSON needs no escaping


def test_escaped_accession_exact_bytes() -> None:
    obr = one(hl7(change(accession="A|B^C~D\\E&F")), "OBR")
    assert field(obr, 18) == "A\\F\\B\\S\\C\\R\\D\\E\\E\\T\\F"


def test_no_patient_data_in_the_orm() -> None:
    text = hl7(change())
    names = {s.split("|")[0] for s in text.split("\r")}
    assert names.isdisjoint({"PID", "PD1", "PV1", "PV2", "IN1", "GT1", "AL1"})
    for value in (PATIENT_ID, PATIENT_NAME, "DOE", "JANE"):
        assert value not in text


def test_orm_refuses_what_the_ris_could_not_use() -> None:
    with pytest.raises(MessageInvalid, match="no accession number"):
        hl7(change(accession=""))
    with pytest.raises(MessageInvalid, match="timezone-aware"):
        build_rank_change_hl7(change(), AT.replace(tzinfo=None), message_control_id="X1")
    with pytest.raises(MessageInvalid, match="MSH-10"):
        build_rank_change_hl7(change(), AT, message_control_id="X" * 21)
    with pytest.raises(MessageInvalid, match="MSH-10"):
        build_rank_change_hl7(change(), AT, message_control_id="")
    with pytest.raises(MessageInvalid, match="not a DICOM UID"):
        hl7(change(study_uid="1.2.3|4"))
    with pytest.raises(MessageInvalid, match="not a DICOM UID"):
        hl7(change(study_uid="1." + "2" * 64))
    with pytest.raises(MessageInvalid, match="longer than 199"):
        hl7(change(accession="A" * 200))


def _without(name: str) -> Callable[[str], str]:
    return lambda text: "\r".join(s for s in text.split("\r") if not s.startswith(name + "|"))


def _emptied(name: str, n: int) -> Callable[[str], str]:
    """Empty field ``n`` of segment ``name``."""

    def corrupt(text: str) -> str:
        lines = text.split("\r")
        for i, line in enumerate(lines):
            if line.startswith(name + "|"):
                fields = line.split("|")
                fields[n] = ""
                lines[i] = "|".join(fields)
        return "\r".join(lines)

    return corrupt


BROKEN_ORM: dict[str, tuple[Callable[[str], str], str]] = {
    "MSH-12 2.5": (lambda t: t.replace("|2.5.1|", "|2.5|"), "MSH-12"),
    "MSH-12 2.3": (lambda t: t.replace("|2.5.1|", "|2.3|"), "MSH-12"),
    "no ORC": (_without("ORC"), "Missing required child ORM_O01_ORDER.ORC"),
    "no OBR": (_without("OBR"), "Missing required child"),
    "no MSH": (_without("MSH"), "does not start with MSH"),
    "other encoding": (lambda t: t.replace("MSH|^~\\&|", "MSH|^~\\#|"), "does not start with MSH"),
    "ORU type": (lambda t: t.replace("ORM^O01^ORM_O01", "ORU^R01^ORU_R01"), "not ORM_O01"),
    "new order": (lambda t: t.replace("ORC|XO|", "ORC|NW|"), "ORC-1"),
    "priority X": (lambda t: t.replace("^^^^^S", "^^^^^X"), "priority"),
    "priorities differ": (lambda t: t.replace("^^^^^S", "", 1), "OBR-27.6"),
    "no OBR-18": (_emptied("OBR", 18), "OBR-18"),
    "no OBR-4": (_emptied("OBR", 4), "Missing required child OBR.OBR_4"),
    "PID": (lambda t: t.replace("\rORC|", "\rPID|1||MRN-1^^^^MR||DOE^JANE\rORC|"), "PID"),
    "OBR and RQD": (lambda t: t.replace("\rNTE|", "\rRQD|1\rNTE|"), "holds 2 alternatives"),
    "RQD for OBR": (lambda t: t.replace("\rOBR|1|", "\rRQD|1|"), "ORM invalid: "),
    "garbage": (lambda t: "not an HL7 message", "does not start with MSH"),
    "truncated": (lambda t: t[:40], "ORM invalid"),
}


@pytest.mark.parametrize("name", list(BROKEN_ORM))
def test_validate_rejects_broken_orm(name: str) -> None:
    corrupt, reason = BROKEN_ORM[name]
    text = hl7(change())
    broken = corrupt(text)
    assert broken != text
    with pytest.raises(ValueError, match=re.escape(reason)) as info:
        validate_rank_change_hl7(broken)
    assert isinstance(info.value, MessageInvalid)
    assert "\n" not in str(info.value)
    assert "\r" not in str(info.value)
    assert "DOE" not in str(info.value)


# --- FHIR R4B Task ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_task_validates_with_fhir_resources(name: str) -> None:
    task = build_rank_change_fhir(CASES[name], AT)
    validate_rank_change_fhir(task)
    model = Task.model_validate(task)
    assert model.status == "requested"
    assert model.intent == "order"
    assert json.loads(json.dumps(task)) == task  # plain JSON data


def test_task_fields() -> None:
    task = build_rank_change_fhir(change(), AT)
    assert task["resourceType"] == "Task"
    assert task["status"] == "requested"
    assert task["intent"] == "order"
    assert task["code"] == {"text": "worklist priority change"}
    assert task["authoredOn"] == "2026-11-30T12:05:07+00:00"
    assert datetime.fromisoformat(task["authoredOn"]) == AT
    assert task["focus"] == {
        "type": "ImagingStudy",
        "identifier": {"system": DICOM_UID, "value": f"urn:oid:{STUDY_UID}"},
    }
    assert task["basedOn"] == [
        {
            "type": "ServiceRequest",
            "identifier": {
                "type": {"coding": [{"system": V2_0203, "code": "ACSN"}]},
                "system": "urn:statlane:local:accession",  # a receiver can match it
                "value": ACCESSION,
            },
        }
    ]
    configured = build_rank_change_fhir(change(), AT, accession_system="urn:oid:1.2.3.4")
    assert configured["basedOn"][0]["identifier"]["system"] == "urn:oid:1.2.3.4"


@pytest.mark.parametrize(("red_flag", "priority"), [(True, "stat"), (False, None)])
def test_task_priority(red_flag: bool, priority: str | None) -> None:
    """stat with a red flag; otherwise none, so a stat order is never downgraded."""
    label = Label.CRITICAL if red_flag else Label.PENDING
    task = build_rank_change_fhir(change(red_flag=red_flag, label=label), AT)
    assert task.get("priority") == priority


def inputs(task: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for entry in task["input"]:
        (key,) = (k for k in entry if k.startswith("value"))
        out[entry["type"]["text"]] = (key, entry[key])
    return out


def test_task_inputs_carry_ranks_flag_and_label() -> None:
    assert inputs(build_rank_change_fhir(change(), AT)) == {
        "old worklist rank": ("valueInteger", 15),
        "new worklist rank": ("valueInteger", 1),
        "red flag": ("valueBoolean", True),
        "AI label": ("valueString", "AI: critical finding"),
    }


def test_task_inputs_omit_missing_ranks_and_empty_label() -> None:
    added = inputs(build_rank_change_fhir(change(None, 4, False, Label.PENDING), AT))
    assert added == {
        "new worklist rank": ("valueInteger", 4),
        "red flag": ("valueBoolean", False),
        "AI label": ("valueString", "AI pending"),
    }
    left = inputs(build_rank_change_fhir(change(7, None, False, Label.NONE), AT))
    assert left == {"old worklist rank": ("valueInteger", 7), "red flag": ("valueBoolean", False)}


def test_task_without_accession_has_no_based_on() -> None:
    task = build_rank_change_fhir(change(accession=""), AT)
    assert "basedOn" not in task
    assert task["focus"]["identifier"]["value"] == f"urn:oid:{STUDY_UID}"


def test_task_refuses_naive_time_and_bad_uid() -> None:
    with pytest.raises(MessageInvalid, match="timezone-aware"):
        build_rank_change_fhir(change(), AT.replace(tzinfo=None))
    with pytest.raises(MessageInvalid, match="Study Instance UID"):
        build_rank_change_fhir(change(study_uid=""), AT)


def test_no_patient_data_in_the_task() -> None:
    task = build_rank_change_fhir(change(), AT)
    text = json.dumps(task)
    assert not {"for", "subject", "patient", "contained"} & set(task)
    assert "Patient" not in text
    assert '"MR"' not in text
    for value in (PATIENT_ID, PATIENT_NAME, "DOE", "JANE"):
        assert value not in text


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    *parents, last = path.split(".")

    def corrupt(task: dict[str, Any]) -> None:
        node: Any = task
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        node[int(last) if last.isdigit() else last] = value

    return corrupt


def _rank_as_string(task: dict[str, Any]) -> None:
    task["input"][0]["valueString"] = str(task["input"][0].pop("valueInteger"))


def _drop_red_flag(task: dict[str, Any]) -> None:
    task["input"] = [i for i in task["input"] if i["type"]["text"] != "red flag"]


BROKEN_TASKS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "priority high": (_set("priority", "high"), "Task.priority 'high' is not stat"),
    "priority routine (a downgrade)": (_set("priority", "routine"), "is not stat (or absent)"),
    "priority routine with red flag": (_set("priority", "routine"), "disagrees with the red flag"),
    "status": (_set("status", "scheduled"), "Task.status 'scheduled' not in value set"),
    "intent": (_set("intent", "request"), "Task.intent 'request' not in value set"),
    "no status": (lambda t: t.pop("status"), "status"),
    "patient": (
        _set("for", {"type": "Patient", "identifier": {"value": PATIENT_ID}}),
        "Task.for",
    ),
    "focus system": (_set("focus.identifier.system", "urn:ietf:rfc:3986"), "Task.focus"),
    "basedOn type": (_set("basedOn.0.identifier.type.coding.0.code", "MR"), "Task.basedOn[0]"),
    "input type": (_set("input.0.type.text", "old rank"), "not a known input type"),
    "input type missing": (_set("input.0.type", {}), "not a known input type"),
    "input value kind": (_rank_as_string, "has no valueInteger"),
    "rank zero": (_set("input.1.valueInteger", 0), "1-based rank"),
    "no red flag": (_drop_red_flag, "no 'red flag'"),
    "empty label": (_set("input.3.valueString", ""), "FHIR Task invalid: input.3.valueString"),
    "bad date": (_set("authoredOn", "30/11/2026"), "FHIR Task invalid: authoredOn"),
    "resourceType": (_set("resourceType", "ServiceRequest"), "resourceType"),
    "unknown element": (_set("rank", 3), "FHIR Task invalid"),
}


@pytest.mark.parametrize("name", list(BROKEN_TASKS))
def test_validate_rejects_broken_task(name: str) -> None:
    corrupt, reason = BROKEN_TASKS[name]
    task = build_rank_change_fhir(change(), AT)
    broken = copy.deepcopy(task)
    corrupt(broken)
    assert broken != task
    with pytest.raises(ValueError, match=re.escape(reason)) as info:
        validate_rank_change_fhir(broken)
    assert isinstance(info.value, MessageInvalid)
    message = str(info.value)
    assert "\n" not in message
    assert "\r" not in message
    assert PATIENT_ID not in message


# --- end to end from the worklist -------------------------------------------------------------


def test_signals_of_a_red_flag_reorder() -> None:
    """A worklist whose third study turns critical: each change makes a valid ORM and Task."""
    t0 = AT - timedelta(minutes=30)
    worklist = Worklist(clock=lambda: AT)
    uids = [f"1.2.826.0.1.3680043.8.498.{n}" for n in (101, 102, 103)]
    for i, uid in enumerate(uids):
        worklist.add(WorklistEntry(uid, f"ACC{i}", t0 + timedelta(minutes=i)))
    before = worklist.published_order("triage", AT)
    worklist.update_ai(uids[2], AIStatus.DONE, critical_positive=True, summary="ICH")
    changes = rank_changes(before, worklist.published_order("triage", AT))
    flagged = next(c for c in changes if c.study_uid == uids[2])
    assert (flagged.old_rank, flagged.new_rank, flagged.red_flag) == (3, 1, True)
    for n, c in enumerate(changes):
        text = build_rank_change_hl7(c, AT, message_control_id=f"WL{n}")
        task = build_rank_change_fhir(c, AT)
        expected = ("S", "stat") if c.red_flag else ("", None)
        assert component(field(one(text, "ORC"), 7), 6) == expected[0]
        assert task.get("priority") == expected[1]
        assert field(one(text, "OBX"), 5) == c.study_uid
        assert field(one(text, "OBR"), 18) == c.accession
