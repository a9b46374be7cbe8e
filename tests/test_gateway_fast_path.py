"""The ``dicom.fast_path`` switch: the gateway's own reactors or pynetdicom's standard server.

Both servers must answer every C-STORE and C-ECHO with the same status and spool the same
bytes; an untested pynetdicom, the switch or the environment selects the standard server.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

import pydicom
import pynetdicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from models.synthetic import SyntheticStudy, generate_study
from serving.gateway.dimse import FAST_PATH_ENV, AssociationSummary, DicomGateway
from serving.gateway.reactor import TESTED_PYNETDICOM, pynetdicom_is_tested
from serving.gateway.spool import InstanceSource, Spool, StoredInstance

#: One association's answers: (status, error comment) per C-STORE, then the C-ECHO status.
Answers = tuple[list[tuple[int, str]], int]


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> SyntheticStudy:
    """A small uncompressed CT head (32 slices of 32x32)."""
    root = tmp_path_factory.mktemp("study")
    return generate_study("ct-head", root, seed=11, matrix=32, slices=32)


class ExplodingSpool(Spool):
    """A spool whose disk fails in an unexpected way (the gateway answers 0xC211)."""

    def store(self, instance: object, source: InstanceSource, **_: object) -> StoredInstance:
        raise RuntimeError("controller firmware says no")


def exchange(spool: Spool, files: list[Path], *, fast_path: bool) -> tuple[Answers, bool]:
    """Send ``files`` and a C-ECHO on one association; the answers and whether the gateway
    ran on the fast path. Returns once the gateway reported the association."""
    released = threading.Event()

    def on_released(_: AssociationSummary) -> None:
        released.set()

    with DicomGateway(
        spool, port=0, host="127.0.0.1", on_released=on_released, fast_path=fast_path
    ) as gateway:
        ae = AE(ae_title="PYSCU")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", gateway.port, ae_title="STATLANE")
        assert assoc.is_established
        try:
            stores = [assoc.send_c_store(path) for path in files]
            echo = assoc.send_c_echo()
        finally:
            assoc.release()
        assert released.wait(20), "the gateway did not report the association"
        ran_fast = gateway.fast_path
    answers = [(int(a.Status), str(a.get("ErrorComment", ""))) for a in stores]
    return (answers, int(echo.Status)), ran_fast


def spooled_bytes(spool: Spool) -> list[bytes]:
    return sorted(path.read_bytes() for path in spool.instances_dir.rglob("*.dcm"))


def damaged_files(study: SyntheticStudy, folder: Path) -> list[Path]:
    """Two good instances around a truncated one and one with too little pixel data."""
    good = study.files[:3]
    truncated = folder / "truncated.dcm"
    truncated.write_bytes(good[1].read_bytes()[:-3000])
    short = pydicom.dcmread(good[2])
    short.PixelData = short.PixelData[: len(short.PixelData) // 2]
    short_path = folder / "short-pixel-data.dcm"
    short.save_as(short_path)
    return [good[0], truncated, short_path, good[1]]


SPOOLS: dict[str, Callable[[Path], Spool]] = {
    "ok": lambda root: Spool(root, min_free_bytes=0),
    "full": lambda root: Spool(root, min_free_bytes=1 << 20, free_bytes=lambda _: 1 << 19),
    "failing": lambda root: ExplodingSpool(root, min_free_bytes=0),
}


@pytest.mark.parametrize("spool_kind", sorted(SPOOLS))
def test_both_paths_answer_the_same_statuses_and_spool_the_same_bytes(
    tmp_path: Path, study: SyntheticStudy, spool_kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(FAST_PATH_ENV, raising=False)  # compare both paths, whatever the run
    files = damaged_files(study, tmp_path)
    results = {}
    for fast_path in (True, False):
        spool = SPOOLS[spool_kind](tmp_path / f"spool-{fast_path}")
        answers, ran_fast = exchange(spool, files, fast_path=fast_path)
        results[fast_path] = (answers, spooled_bytes(spool))
        assert ran_fast is fast_path  # the fast path did engage when asked for
    assert results[True] == results[False]
    (stores, echo), stored = results[False]
    assert echo == 0x0000
    expected = {
        "ok": [0x0000, 0xC000, 0xC000, 0x0000],
        "full": [0xA700] * 4,
        "failing": [0xC211] * 4,
    }[spool_kind]
    assert [status for status, _ in stores] == expected
    assert len(stored) == expected.count(0x0000)


def test_the_fast_path_runs_by_default_on_a_tested_pynetdicom(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(FAST_PATH_ENV, raising=False)
    assert pynetdicom_is_tested(), f"pynetdicom {pynetdicom.__version__} vs {TESTED_PYNETDICOM}"
    with DicomGateway(Spool(tmp_path, min_free_bytes=0), port=0, host="127.0.0.1") as gateway:
        assert gateway.fast_path


@pytest.mark.parametrize("value", ["0", "false", "OFF", "no"])
def test_the_environment_switches_the_fast_path_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(FAST_PATH_ENV, value)
    with DicomGateway(Spool(tmp_path, min_free_bytes=0), port=0, host="127.0.0.1") as gateway:
        assert gateway.is_running
        assert not gateway.fast_path


def test_an_untested_pynetdicom_gets_the_standard_server_and_one_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv(FAST_PATH_ENV, raising=False)
    monkeypatch.setattr(pynetdicom, "__version__", "3.1.0")
    with (
        caplog.at_level(logging.WARNING, logger="serving.gateway.dimse"),
        DicomGateway(Spool(tmp_path, min_free_bytes=0), port=0, host="127.0.0.1") as gateway,
    ):
        assert gateway.is_running
        assert not gateway.fast_path
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "pynetdicom 3.1.0" in warnings[0]


@pytest.mark.parametrize(
    ("version", "tested"),
    [
        ("3.0.0", True),
        ("3.0.4", True),
        ("3.0.5.dev1", True),
        ("3.1.0", False),
        ("4.0", False),
        ("2.1.1", False),
        ("not-a-version", False),
    ],
)
def test_the_version_check_follows_the_tested_range(version: str, tested: bool) -> None:
    assert pynetdicom_is_tested(version) is tested
