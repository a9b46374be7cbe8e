"""``statlane.yaml``: defaults, unknown keys and bad values reported with file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.config import ConfigError, ServiceConfig, load_config
from serving.scheduler.records import PriorityClass


def test_embedded_defaults() -> None:
    config = load_config(None)
    assert config.dicom.port == 11112
    assert config.http.port == 8080
    assert config.db_url == "sqlite:///var/statlane.db"
    assert config.runtime.backend == "onnxruntime"
    assert config.runtime.policy == "edf"
    assert config.deadlines_s[PriorityClass.STAT] == 60.0
    assert config.destinations["local-folder"]["type"] == "folder"


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
    with pytest.raises(ConfigError, match=r":1: destinations: Value error, destination 'pacs'"):
        load_config(path)


def test_the_shipped_example_is_valid() -> None:
    from serving.commands.config import destination_problems

    example = Path(__file__).parents[1] / "serving" / "statlane.example.yaml"
    config = load_config(example)
    assert destination_problems(config.destinations) == []
    assert set(config.worklist.signals) <= set(config.destinations)
