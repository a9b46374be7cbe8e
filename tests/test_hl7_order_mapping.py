"""Site-configurable order mapping: where accession, priority and procedure code are read."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from router.vocabulary import AssigningAuthority, OrderContext, OrderPriority
from serving.cli import main
from serving.config import load_config
from serving.gateway.hl7_orders import (
    IHE_ORDER_MAPPING,
    FieldPath,
    FieldPathError,
    OrderMapping,
    OrderReceiver,
    parse_field_path,
    parse_order,
)

NOW = datetime(2024, 3, 11, 8, 30, 5, tzinfo=UTC)
BY_FILLER = OrderMapping.from_texts(["OBR-3", "ORC-3"], ["OBR-5"], ["OBR-44"])


def orm(*, orc3: str = "ACC-F1^RIS", obr3: str = "ACC-F1^RIS", obr18: str = "") -> str:
    """An ORM^O01 whose accession a site keeps in the filler order number (OBR-3 / ORC-3)."""
    obr = ["OBR", "1", "PL1^RIS", obr3, "30799-1^CT Head^LN", "S", *[""] * 12, obr18]
    obr += [""] * (44 - len(obr) + 1)
    obr[44] = "CTHEAD^CT head plain^L"
    return "\r".join(
        [
            "MSH|^~\\&|RIS|HOSP|STATLANE|RAD|20240311083000||ORM^O01|MSG0001|P|2.4",
            "PID|1||SYN123^^^HOSP&1.2.3&ISO^MR||DOE^JANE",
            f"ORC|NW|PL1^RIS|{orc3}|||||||",
            "|".join(obr),
        ]
    )


def test_default_is_ihe_and_unchanged() -> None:
    text = orm(obr18="ACC0001")
    order = parse_order(text)
    assert order == parse_order(text, OrderMapping())
    assert order.accession_number == "ACC0001"  # OBR-18, not the filler number
    assert order.priority is OrderPriority.STAT  # OBR-5
    assert (order.procedure_code, order.procedure_meaning, order.procedure_scheme) == (
        "30799-1",
        "CT Head",
        "LN",
    )
    assert [str(p) for p in IHE_ORDER_MAPPING.accession] == ["IPC-1", "OBR-18"]
    assert [str(p) for p in IHE_ORDER_MAPPING.priority] == ["TQ1-9", "ORC-7.6", "OBR-27.6", "OBR-5"]


def test_accession_from_obr3_then_orc3_as_configured() -> None:
    order = parse_order(orm(), BY_FILLER)
    assert order.accession_number == "ACC-F1"
    assert order.filler_order_number == "ACC-F1"
    assert order.filler_order_authority == AssigningAuthority("RIS")
    assert order.placer_order_authority == AssigningAuthority("RIS")
    assert order.patient_id_authority == AssigningAuthority("HOSP", "1.2.3", "ISO")
    assert (order.procedure_code, order.procedure_meaning, order.procedure_scheme) == (
        "CTHEAD",
        "CT head plain",
        "L",
    )
    assert parse_order(orm(obr3=""), BY_FILLER).accession_number == "ACC-F1"  # ORC-3


def test_a_named_component_is_read() -> None:
    mapping = OrderMapping.from_texts(["OBR-3.2"], ["OBR-5"], ["OBR-4"])
    assert parse_order(orm(), mapping).accession_number == "RIS"


def test_nak_names_the_configured_fields() -> None:
    received: list[OrderContext] = []
    receiver = OrderReceiver(
        received.append, clock=lambda: NOW, control_ids=lambda: "ACK1", mapping=BY_FILLER
    )
    ack = receiver.handle(orm(orc3="", obr3="", obr18="ACC0001"))
    assert received == []
    msa, err = ack.split("\r")[1:3]
    assert msa == "MSA|AE|MSG0001|ORM\\S\\O01 without accession (OBR-3 or ORC-3)"
    assert err.startswith("ERR|OBR^1^3^101&")  # v2.4 ERR-1: the first configured field


def test_ihe_nak_is_as_before() -> None:
    receiver = OrderReceiver(lambda _order: None, clock=lambda: NOW, control_ids=lambda: "A")
    ack = receiver.handle(orm())
    assert ack.split("\r")[1] == "MSA|AE|MSG0001|ORM\\S\\O01 without accession (OBR-18)"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("OBR-18", FieldPath("OBR", 18)),
        ("ORC-7.6", FieldPath("ORC", 7, 6)),
        ("TQ1-9", FieldPath("TQ1", 9)),
        ("ZDS-1", FieldPath("ZDS", 1)),
    ],
)
def test_field_paths(text: str, expected: FieldPath) -> None:
    assert parse_field_path(text) == expected
    assert str(expected) == text


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("OBR-99", "OBR has 50 fields"),
        ("XYZ-1", "XYZ is not an HL7 v2.5.1 segment"),
        ("OBR-18.2", "OBR-18 has 1 component"),
        ("obr-18", "not a field path"),
        ("OBR18", "not a field path"),
        ("ZPI-2", "ZDS-1"),
    ],
)
def test_bad_field_paths(text: str, reason: str) -> None:
    with pytest.raises(FieldPathError, match=reason):
        parse_field_path(text)


def test_config_reads_the_mapping(tmp_path: Path) -> None:
    path = tmp_path / "statlane.yaml"
    path.write_text("hl7:\n  order_mapping:\n    accession: [OBR-3, ORC-3]\n")
    config = load_config(path)
    mapping = config.hl7.order_mapping.mapping()
    assert mapping.accession == (FieldPath("OBR", 3), FieldPath("ORC", 3))
    assert mapping.priority == IHE_ORDER_MAPPING.priority
    assert load_config(None).hl7.order_mapping.mapping() == IHE_ORDER_MAPPING


def test_config_check_rejects_bad_paths_with_location(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "statlane.yaml"
    path.write_text(
        "hl7:\n"
        "  order_mapping:\n"
        "    accession:\n"
        "      - OBR-3\n"
        "      - OBR-99\n"
        "    priority: [XYZ-1]\n"
    )
    assert main(["config", "check", str(path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith(f"{path}:5: hl7.order_mapping.accession.1: ")
    assert "OBR-99: OBR has 50 fields in HL7 v2.5.1" in err[0]
    assert err[1].startswith(f"{path}:6: hl7.order_mapping.priority.0: ")
    assert "XYZ is not an HL7 v2.5.1 segment" in err[1]


def test_config_check_rejects_an_empty_system(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "statlane.yaml"
    path.write_text("identifiers:\n  site: main\n  mrn_system: ''\n")
    assert main(["config", "check", str(path)]) == 1
    assert f"{path}:3: identifiers.mrn_system: " in capsys.readouterr().err
