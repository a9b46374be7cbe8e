"""The ``statlane`` CLI: sub-commands wired, bad input gives one clear line and a status."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.cli import main


def test_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for command in ("synth", "inspect", "demo"):
        assert command in out


def test_no_command_is_a_usage_error() -> None:
    assert main([]) == 2


def test_inspect_missing_folder_is_one_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["inspect", str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"statlane inspect: not a folder: {tmp_path / 'absent'}"]


def test_synth_then_inspect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "studies"
    status = main(
        ["synth", "--out", str(out), "--kind", "ct-head", "--count", "2", "--matrix", "64"]
    )
    assert status == 0
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 2
    assert all(" CT " in line and "64x64x32" in line for line in lines)


def test_inspect_reports_a_rejected_series(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "studies"
    args = ["synth", "--out", str(out), "--kind", "ct-head", "--matrix", "64"]
    assert main([*args, "--fault", "missing-slice"]) == 0
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 1
    out_text = capsys.readouterr().out
    assert "REJECTED  MissingSliceError" in out_text
    assert "gap of" in out_text


def test_inspect_applies_a_yaml_pipeline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "studies"
    assert main(["synth", "--out", str(out), "--kind", "ct-head", "--matrix", "64"]) == 0
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(
        "- {transform: Orientation, axcodes: RAS}\n"
        "- {transform: Window, center: 40, width: 80}\n"
        "- {transform: Resize, spatial_size: [32, 32, 16]}\n"
    )
    capsys.readouterr()
    assert main(["inspect", str(out), "--pipeline", str(pipeline)]) == 0
    assert "tensor 1x32x32x16" in capsys.readouterr().out


def test_inspect_refuses_a_bad_pipeline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text("- {transform: Lambda, func: '$print(1)'}\n")
    assert main(["inspect", str(tmp_path), "--pipeline", str(pipeline)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "Lambda" in err[0]


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The quick-start demo: studies over C-STORE and orders over MLLP, results, worklist."""
    assert main(["demo", "--out", str(tmp_path), "--interval", "0.2"]) == 0
    out = capsys.readouterr().out
    table = out[out.index("arrival vs worklist") :].splitlines()
    # the bleed from the emergency department, ordered routine, arrived 15th and is flagged,
    # ahead of every study without a critical finding
    [bleed] = [line for line in table if "ED, routine order" in line]
    assert bleed.split()[0] == "15"
    assert "RED" in bleed
    rows = table[2 : table.index("")]
    assert len(rows) == 16
    first_unflagged = next(i for i, line in enumerate(rows) if "RED" not in line)
    assert rows.index(bleed) < first_unflagged
    assert "stat" in out
    assert "deadline misses" in out
    assert (tmp_path / "flagged-key-slice.png").stat().st_size > 10_000
    assert len(list((tmp_path / "results").glob("*.dcm"))) >= 16


def test_serve_ports_file_appears_whole_or_not_at_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A test or script polling for the ports file must never read it empty (seen in CI)."""
    import json
    import os

    from serving.commands import serve

    target = tmp_path / "ports.json"
    seen_at_rename: list[bool] = []
    real_replace = os.replace

    def replace(source: str | os.PathLike[str], destination: str | os.PathLike[str]) -> None:
        seen_at_rename.append(target.exists())
        assert json.loads(Path(source).read_text()) == {"dicom": 1, "http": 2, "hl7": 3}
        real_replace(source, destination)

    monkeypatch.setattr(serve.os, "replace", replace)
    serve.write_ports_file(target, {"dicom": 1, "http": 2, "hl7": 3})
    assert seen_at_rename == [False]
    assert json.loads(target.read_text()) == {"dicom": 1, "http": 2, "hl7": 3}
    assert [path.name for path in tmp_path.iterdir()] == ["ports.json"]
