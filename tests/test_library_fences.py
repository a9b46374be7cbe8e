"""Library internals are fenced: a new major version fails here, loudly, before it misbehaves.

Three modules use private names of a library. Each declares the range it was tested with
(``TESTED_*``); ``pyproject.toml`` pins the library to exactly that range, and the installed
version must be inside it. Widening a pin without re-testing (and raising the constant) fails
here. Each fenced module also has a public fallback, selected by its version check; the
fallbacks are compared with the fast paths here and in ``test_gateway_fast_path.py``.
"""

from __future__ import annotations

import logging
import tomllib
from importlib.metadata import version
from pathlib import Path

import highdicom
import pydicom
import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from router.objects import common
from serving.gateway import instance_header, reactor
from serving.gateway.instance_header import read_header

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"

#: distribution -> (fenced module, the range it declares)
FENCES = {
    "pynetdicom": ("serving/gateway/reactor.py", reactor.TESTED_PYNETDICOM),
    "pydicom": ("serving/gateway/instance_header.py", instance_header.TESTED_PYDICOM),
    "highdicom": ("router/objects/common.py", common.TESTED_HIGHDICOM),
}


def pinned(distribution: str) -> SpecifierSet:
    """The specifier ``pyproject.toml`` gives ``distribution`` in the runtime dependencies."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    for line in project["dependencies"]:
        requirement = Requirement(line)
        if requirement.name.lower() == distribution:
            return requirement.specifier
    raise AssertionError(f"{distribution} is not a dependency in {PYPROJECT}")


@pytest.mark.parametrize("distribution", sorted(FENCES))
def test_the_installed_version_is_one_the_fenced_module_was_tested_with(
    distribution: str,
) -> None:
    module, tested = FENCES[distribution]
    installed = version(distribution)
    assert SpecifierSet(tested).contains(installed, prereleases=True), (
        f"{distribution} {installed} is outside {tested}, the range {module} was tested with: "
        f"it uses {distribution}'s private names. Run its tests against {installed}, fix what "
        f"breaks, then widen TESTED_* there and the pin in pyproject.toml together."
    )


@pytest.mark.parametrize("distribution", sorted(FENCES))
def test_the_pin_is_the_range_the_fenced_module_declares(distribution: str) -> None:
    module, tested = FENCES[distribution]
    assert pinned(distribution) == SpecifierSet(tested), (
        f"pyproject.toml pins {distribution} to '{pinned(distribution)}' but {module} was "
        f"tested with '{tested}': change both together, after re-running its tests."
    )


def test_the_version_checks_follow_their_ranges() -> None:
    assert reactor.pynetdicom_is_tested()
    assert not reactor.pynetdicom_is_tested("3.1.0")
    assert instance_header.pydicom_is_tested()
    assert not instance_header.pydicom_is_tested("4.0.0")
    assert instance_header.pydicom_is_tested("3.1.2")
    assert common.highdicom_is_tested()
    assert not common.highdicom_is_tested("0.29.0")


# -- pydicom: the header walk and dcmread ------------------------------------------------------

FILES = [
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "JPEG2000.dcm",
    "SC_rgb.dcm",
]


def decoded(header: Dataset) -> dict[int, object]:
    """Every element of ``header`` and its file meta as pydicom decodes them."""
    elements: dict[int, object] = {}
    for ds in (header.file_meta, header):
        for tag in sorted(ds.keys()):
            elements[int(tag)] = (ds[tag].VR, ds[tag].value)
    return elements


@pytest.mark.parametrize("name", FILES)
def test_the_walk_and_the_public_reader_give_equal_headers(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = Path(str(get_testdata_file(name))).read_bytes()
    assert instance_header.fast_walk is not None  # a tested pydicom: the walk is on
    walked = read_header(data)
    monkeypatch.setattr(instance_header, "fast_walk", None)  # the switch
    public = read_header(data)
    assert walked[0] == public[0]
    assert decoded(walked[1]) == decoded(public[1])


def test_an_untested_pydicom_reads_every_file_with_dcmread_and_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(pydicom, "__version__", "4.0.0")
    with caplog.at_level(logging.WARNING, logger=instance_header.__name__):
        assert instance_header.select_fast_walk() is None
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert "pydicom 4.0.0" in warning


# -- highdicom: the IOD tables -----------------------------------------------------------------

ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
CT = "1.2.840.10008.5.1.4.1.1.2"


def test_multi_frame_sop_classes_carry_a_frame_number() -> None:
    assert common.frame_numbers(ENHANCED_CT, 1) == [1]
    assert common.frame_numbers(CT, 1) is None
    assert common.frame_numbers("1.2.3.4", 3) == [3]  # unknown to highdicom: the frame decides


def test_an_untested_highdicom_guesses_from_the_frame_number_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(highdicom, "__version__", "0.29.0")
    with caplog.at_level(logging.WARNING, logger=common.__name__):
        lookup = common.select_iod_lookup()
    assert lookup is None
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert "highdicom 0.29.0" in warning
    monkeypatch.setattr(common, "iod_lookup", lookup)
    assert common.frame_numbers(ENHANCED_CT, 2) == [2]
    assert common.frame_numbers(CT, 1) is None
