"""``statlane.yaml``: defaults, unknown keys and bad values reported with file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.vocabulary import PriorityClass
from serving.config import ConfigError, ServiceConfig, load_config
from serving.delivery.config import DicomDestinationConfig


def test_embedded_defaults() -> None:
    config = load_config(None)
    assert config.dicom.port == 11112
    assert config.http.port == 8080
    assert config.db_url == "sqlite:///var/statlane.db"
    assert config.runtime.backend == "onnxruntime"
    assert config.runtime.policy == "edf"
    assert config.deadlines_s[PriorityClass.STAT] == 60.0
    assert config.destinations["local-folder"].type == "folder"


def test_a_valid_file(tmp_path: Path) -> None:
    path = tmp_path / "statlane.yaml"
    path.write_text(
        "dicom:\n  port: 104\n  allowed_callers:\n    CT01: [10.0.0.5]\n    PACS: null\n"
        "database_url: postgresql://statlane@db/statlane\n"
        "deadlines_s: {stat: 30}\n"
    )
    config = load_config(path)
    assert isinstance(config, ServiceConfig)
    assert config.dicom.allowed_callers == {"CT01": ["10.0.0.5"], "PACS": None}
    assert config.db_url.startswith("postgresql://")
    assert config.deadlines_s == {PriorityClass.STAT: 30.0}


def test_unknown_key_names_file_line_and_path(tmp_path: Path) -> None:
    path = tmp_path / "statlane.yaml"
    path.write_text("dicom:\n  port: 104\n  aetitle: X\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value) == f"{path}:3: dicom.aetitle: unknown key"


def test_bad_value_and_bad_yaml(tmp_path: Path) -> None:
    path = tmp_path / "statlane.yaml"
    path.write_text("runtime:\n  policy: lifo\n")
    with pytest.raises(ConfigError, match=r":2: runtime.policy: Input should be"):
        load_config(path)
    path.write_text("dicom: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(path)
    path.write_text("destinations:\n  pacs: {host: x}\n")
    with pytest.raises(
        ConfigError, match=r":2: destinations.pacs: no 'type'; expected one of dicom"
    ):
        load_config(path)


DESTINATIONS = """\
destinations:
  local-folder: {type: folder, path: var/results}
  pacs:
    type: dicom
    ae_title: PACS
    host: 10.10.1.5
    port: 104
"""


def problems(tmp_path: Path, text: str) -> list[str]:
    """The located problems ``load_config`` reports for ``text``, file name left out."""
    path = tmp_path / "statlane.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    return [line.removeprefix(str(path)) for line in str(error.value).splitlines()]


def test_destinations_are_typed_by_their_type(tmp_path: Path) -> None:
    path = tmp_path / "statlane.yaml"
    path.write_text(DESTINATIONS)
    pacs = load_config(path).destinations["pacs"]
    assert isinstance(pacs, DicomDestinationConfig)
    assert (pacs.ae_title, pacs.port, pacs.calling_ae, pacs.timeout_s) == (
        "PACS",
        104,
        "STATLANE",
        30,
    )


def test_a_wrong_destination_key_names_its_line(tmp_path: Path) -> None:
    text = DESTINATIONS + "    aetitle: PACS\n"
    assert problems(tmp_path, text) == [":8: destinations.pacs.aetitle: unknown key"]


def test_a_wrong_destination_type_names_its_line(tmp_path: Path) -> None:
    text = DESTINATIONS.replace("type: dicom", "type: dimse")
    assert problems(tmp_path, text) == [
        ":4: destinations.pacs.type: unknown destination type 'dimse'; "
        "expected one of dicom, stow, fhir, webhook, mllp, folder"
    ]


def test_a_missing_destination_field_names_the_destination(tmp_path: Path) -> None:
    text = DESTINATIONS.replace("    host: 10.10.1.5\n", "")
    assert problems(tmp_path, text) == [":3: destinations.pacs.host: Field required"]


def test_a_bad_destination_value_names_its_line(tmp_path: Path) -> None:
    text = DESTINATIONS.replace("port: 104", "port: 70000") + "  ris: {type: mllp, host: ris}\n"
    assert problems(tmp_path, text) == [
        ":7: destinations.pacs.port: Input should be less than 65536",
        ":8: destinations.ris.port: Field required",
    ]


def test_config_check_reports_destination_errors_with_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from serving.cli import main

    path = tmp_path / "statlane.yaml"
    path.write_text(DESTINATIONS.replace("type: dicom", "type: dimse"))
    assert main(["config", "check", str(path)]) == 1
    assert f"{path}:4: destinations.pacs.type: unknown destination type 'dimse'" in (
        capsys.readouterr().err
    )
    path.write_text(DESTINATIONS)
    assert main(["config", "check", str(path)]) == 0
    assert "ok (2 destinations" in capsys.readouterr().out


def test_the_shipped_example_is_valid() -> None:
    from serving.commands.config import destination_problems

    example = Path(__file__).parents[1] / "serving" / "statlane.example.yaml"
    config = load_config(example)
    assert destination_problems(config.destinations) == []
    assert set(config.worklist.signals) <= set(config.destinations)
