"""Routing rules: synthetic studies get the right model and priority, with reasons that hold up.

Studies come from ``models.synthetic`` at small matrices; variations (a second series, another
modality, a priority in the header) are made by editing header copies in memory.
"""

from __future__ import annotations

import argparse
import copy
import functools
import io
import re
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from models.registry import Registry
from models.synthetic import SyntheticStudy, generate_study
from router.result import Mode
from router.rules import (
    Decision,
    Orientation,
    RulesError,
    StudyFacts,
    check_models,
    default_rules,
    evaluate,
    facts_from_datasets,
    facts_from_folder,
    load_rules,
)
from router.rules.facts import orientation_of, read_headers
from router.vocabulary import OrderContext, OrderPriority, PriorityClass
from serving.commands import rules as rules_command

REGISTRY = Registry.default()
ORDER_PRIORITY = {"STAT": OrderPriority.STAT, "ROUTINE": OrderPriority.ROUTINE}
TASK = "produce: [{model: ich-ct-head, priority: stat}]"


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SyntheticStudy]:
    """One study per kind (and a STAT and a ROUTINE CT head), written once for the module."""
    out = tmp_path_factory.mktemp("studies")
    requests = {
        "ct-head/STAT": ("ct-head", 64, "STAT"),
        "ct-head/ROUTINE": ("ct-head", 64, "ROUTINE"),
        "ct-chest/ROUTINE": ("ct-chest", 64, "ROUTINE"),
        "cr-chest/ROUTINE": ("cr-chest", 128, "ROUTINE"),
        "dx-chest/ROUTINE": ("dx-chest", 128, "ROUTINE"),
    }
    return {
        key: generate_study(kind, out, seed=7, matrix=matrix, priority=priority)
        for key, (kind, matrix, priority) in requests.items()
    }


@functools.cache
def _facts(study_dir: Path) -> StudyFacts:
    """Headers are read once per study (a CT chest has 100 files)."""
    return facts_from_folder(study_dir)


def _decide(study: SyntheticStudy, order: OrderContext | None = None, **kw: str) -> Decision:
    facts = _facts(study.study_dir)
    return evaluate(
        default_rules(), facts, order, resolve_model=lambda r: REGISTRY.get(r).ident, **kw
    )


def _explained(decision: Decision, rule: str) -> tuple[bool, list[str]]:
    found = next(e for e in decision.explanations if e.rule == rule)
    return found.matched, [c.detail for c in found.failed]


def _order(study: SyntheticStudy, priority: OrderPriority) -> OrderContext:
    return OrderContext(accession_number=study.accession_number, priority=priority)


# (study, expected model, priority class, deadline s, matched rules, one unmatched rule and the
#  failing detail its explanation must give)
ROUTING = [
    ("ct-head/STAT", "ich-ct-head@2", PriorityClass.STAT, 60.0,
     {"ct-head-noncontrast", "ct-head-by-description"},
     ("ct-chest", "BodyPartExamined 'HEAD' not in ['CHEST']")),
    ("ct-head/ROUTINE", "ich-ct-head@2", PriorityClass.STAT, 60.0,
     {"ct-head-noncontrast", "ct-head-by-description"},
     ("chest-radiograph", "Modality 'CT' not in ['CR', 'DX']")),
    ("ct-chest/ROUTINE", "ct-chest-nodule@1", PriorityClass.ROUTINE, 3600.0, {"ct-chest"},
     ("ct-head-by-description",
      "StudyDescription 'CT CHEST WO CONTRAST' does not match /\\b(head|brain)\\b/")),
    ("cr-chest/ROUTINE", "cxr-pneumothorax@1", PriorityClass.URGENT, 300.0, {"chest-radiograph"},
     ("ct-head-noncontrast", "Modality 'CR' not in ['CT']")),
    ("dx-chest/ROUTINE", "cxr-pneumothorax@1", PriorityClass.URGENT, 300.0, {"chest-radiograph"},
     ("ct-chest", "Modality 'DX' not in ['CT']")),
]  # fmt: skip


@pytest.mark.parametrize(("key", "model", "priority", "deadline", "matched", "unmatched"), ROUTING)
def test_default_rules_route_each_synthetic_kind(
    studies: dict[str, SyntheticStudy],
    key: str,
    model: str,
    priority: PriorityClass,
    deadline: float,
    matched: set[str],
    unmatched: tuple[str, str],
) -> None:
    study = studies[key]
    decision = _decide(study, _order(study, ORDER_PRIORITY[study.priority]))
    assert [(t.model, t.priority, t.deadline_s) for t in decision.tasks] == [
        (model, priority, deadline)
    ]
    task = decision.tasks[0]
    assert task.series_instance_uid == study.series_uid
    assert task.mode is Mode.ASSISTANT
    assert task.destinations == ("local-folder",)
    assert {e.rule for e in decision.explanations if e.matched} == matched
    rule, detail = unmatched
    matched_flag, failed = _explained(decision, rule)
    assert not matched_flag
    assert detail in failed


def test_both_ct_head_rules_give_one_task(studies: dict[str, SyntheticStudy]) -> None:
    decision = _decide(studies["ct-head/ROUTINE"])
    (task,) = decision.tasks
    assert task.rule == "ct-head-noncontrast"
    assert task.also_requested_by == ("ct-head-by-description",)
    assert task.priority_reason == "fixed by rule"


@pytest.mark.parametrize(
    ("key", "order_priority", "expected"),
    [
        ("ct-chest/ROUTINE", OrderPriority.STAT, PriorityClass.STAT),
        ("ct-chest/ROUTINE", OrderPriority.ASAP, PriorityClass.URGENT),
        ("ct-chest/ROUTINE", OrderPriority.ROUTINE, PriorityClass.ROUTINE),
        ("cr-chest/ROUTINE", OrderPriority.STAT, PriorityClass.STAT),
        ("cr-chest/ROUTINE", OrderPriority.ROUTINE, PriorityClass.URGENT),  # never demoted
    ],
)
def test_order_priority_escalates_never_demotes(
    studies: dict[str, SyntheticStudy],
    key: str,
    order_priority: OrderPriority,
    expected: PriorityClass,
) -> None:
    study = studies[key]
    (task,) = _decide(study, _order(study, order_priority)).tasks
    assert task.priority is expected
    assert task.deadline_s == default_rules().defaults.deadlines_s.for_class(expected)
    if expected is PriorityClass.STAT:
        assert "order priority stat escalates" in task.priority_reason


def test_priority_in_the_header_escalates_without_an_order(
    studies: dict[str, SyntheticStudy],
) -> None:
    headers = read_headers(studies["ct-chest/ROUTINE"].study_dir)
    for ds in headers:
        ds.RequestedProcedurePriority = "STAT"
    facts = facts_from_datasets(headers)
    assert facts.requested_priority is OrderPriority.STAT
    (task,) = evaluate(default_rules(), facts).tasks
    assert task.priority is PriorityClass.STAT
    # An order that says otherwise wins over what the modality copied into the images.
    order = OrderContext(accession_number="A1", priority=OrderPriority.ROUTINE)
    (task,) = evaluate(default_rules(), facts, order).tasks
    assert task.priority is PriorityClass.ROUTINE


def _second_series(
    headers: list[Dataset], number: int, thickness: float, orientation: list[float]
) -> list[Dataset]:
    copies = [copy.deepcopy(ds) for ds in headers]
    uid = f"2.25.{number}000{len(headers)}"
    for ds in copies:
        ds.SeriesInstanceUID = uid
        ds.SeriesNumber = number
        ds.SliceThickness = str(thickness)
        ds.ImageOrientationPatient = orientation
    return copies


def test_thinnest_axial_series_is_chosen(studies: dict[str, SyntheticStudy]) -> None:
    study = studies["ct-head/STAT"]
    headers = read_headers(study.study_dir)  # series #2, axial 5 mm
    thin = _second_series(headers, 3, 2.5, [1, 0, 0, 0, 1, 0])
    coronal = _second_series(headers, 4, 1.0, [1, 0, 0, 0, 0, -1])
    facts = facts_from_datasets(headers + coronal + thin)
    assert [(s.series_number, s.orientation) for s in facts.series] == [
        (2, Orientation.AXIAL),
        (3, Orientation.AXIAL),
        (4, Orientation.CORONAL),
    ]
    (task,) = evaluate(default_rules(), facts).tasks
    assert task.series_instance_uid == thin[0].SeriesInstanceUID
    assert "#3" in task.series_reason
    assert "thinnest" in task.series_reason
    # Without an orientation condition the preference order decides: axial before thinnest.
    ruleset = load_rules(
        "version: 1\nrules:\n  - name: any-ct\n    match: {modality: [CT]}\n"
        "    produce: [{model: ich-ct-head, priority: stat,"
        " series: {prefer: [axial, thinnest]}}]\n"
    )
    (task,) = evaluate(ruleset, facts).tasks
    assert task.series_instance_uid == thin[0].SeriesInstanceUID
    # Thinnest first picks the 1 mm coronal reformat.
    ruleset = load_rules(
        "version: 1\nrules:\n  - name: any-ct\n    match: {modality: [CT]}\n"
        "    produce: [{model: ich-ct-head, priority: stat, series: {prefer: [thinnest]}}]\n"
    )
    (task,) = evaluate(ruleset, facts).tasks
    assert task.series_instance_uid == coronal[0].SeriesInstanceUID


def test_min_images_leaves_a_note_instead_of_a_task(studies: dict[str, SyntheticStudy]) -> None:
    facts = facts_from_folder(studies["ct-head/STAT"].study_dir)
    ruleset = load_rules(
        "version: 1\nrules:\n  - name: head\n    match: {modality: [CT]}\n"
        "    produce: [{model: ich-ct-head, priority: stat, series: {min_images: 100}}]\n"
    )
    decision = evaluate(ruleset, facts)
    assert decision.tasks == []
    (explanation,) = decision.explanations
    assert explanation.matched
    assert explanation.notes == (
        "produce[0] ich-ct-head: no series with >= 100 images among 1 matching",
    )


def test_no_match_gives_empty_tasks_with_reasons(studies: dict[str, SyntheticStudy]) -> None:
    headers = read_headers(studies["ct-head/STAT"].study_dir)
    for ds in headers:
        ds.Modality = "MR"
        ds.BodyPartExamined = "KNEE"
        ds.StudyDescription = "MR KNEE"
    decision = evaluate(default_rules(), facts_from_datasets(headers))
    assert decision.tasks == []
    assert decision.reasons == [
        "ct-head-noncontrast: Modality 'MR' not in ['CT']",
        "ct-head-by-description: Modality 'MR' not in ['CT']",
        "ct-chest: Modality 'MR' not in ['CT']",
        "chest-radiograph: Modality 'MR' not in ['CR', 'DX']",
    ]
    assert _explained(decision, "ct-head-noncontrast")[1] == [
        "Modality 'MR' not in ['CT']",
        "BodyPartExamined 'KNEE' not in ['HEAD', 'BRAIN']",
    ]


EMERGENCY_RULES = """
version: 1
defaults: {deadlines_s: {stat: 45}, mode: triage, destinations: [worklist]}
rules:
  - name: ed-chest-film
    match:
      modality: [CR, DX]
      calling_ae: [ed_ct, ED_DX]
      source: {station: 'ED\\d+$'}
      procedure_codes: [{scheme: ln, value: 36554-4}]
    produce: [{model: cxr-pneumothorax, priority: stat, mode: shadow}]
  - name: chest-film-for-dyspnoea
    match: {modality: [DX], indication: 'dyspn(o)?ea', order_priority: [ASAP, stat]}
    produce: [{model: cxr-pneumothorax, priority: urgent, destinations: [pacs]}]
"""


def test_calling_ae_source_codes_and_order(studies: dict[str, SyntheticStudy]) -> None:
    ruleset = load_rules(EMERGENCY_RULES)
    facts = facts_from_folder(studies["dx-chest/ROUTINE"].study_dir, calling_ae="ed_dx")
    order = OrderContext(
        accession_number="A1", priority=OrderPriority.ASAP, indication="Acute dyspnea, SOB"
    )
    decision = evaluate(ruleset, facts, order)
    assert [e.matched for e in decision.explanations] == [True, True]
    (task,) = decision.tasks  # same model, same series: one task, the most urgent
    assert (task.rule, task.priority, task.deadline_s) == ("ed-chest-film", PriorityClass.STAT, 45)
    assert (task.mode, task.destinations) == (Mode.SHADOW, ("worklist",))
    assert task.also_requested_by == ("chest-film-for-dyspnoea",)
    # From the main department, with no order: both rules fail, each says why.
    decision = evaluate(ruleset, facts, None, calling_ae="MAIN_DX")
    assert decision.tasks == []
    assert _explained(decision, "ed-chest-film")[1] == [
        "calling AE 'MAIN_DX' not in ['ED_CT', 'ED_DX']"
    ]
    assert _explained(decision, "chest-film-for-dyspnoea")[1] == [
        "order priority 'unknown (no order)' not in ['asap', 'stat']",
        "order indication (no order) absent does not match /dyspn(o)?ea/",
    ]
    # The CR room is not an ED station.
    cr = facts_from_folder(studies["cr-chest/ROUTINE"].study_dir, calling_ae="ED_DX")
    assert _explained(evaluate(ruleset, cr), "ed-chest-film")[1] == [
        "StationName 'CRROOM3' does not match /ED\\d+$/"
    ]


@pytest.mark.parametrize(
    ("text", "location", "message"),
    [
        (f"version: 1\nrules:\n  - name: a\n    match: {{bodypart: [HEAD]}}\n    {TASK}\n",
         "rules[0].match.bodypart (line 4)", "extra field (allowed: body_part,"),
        (f"version: 1\nrules:\n  - name: a\n    match: {{study_description: 'h(('}}\n    {TASK}\n",
         "rules[0].match.study_description (line 4)", "bad regular expression 'h(('"),
        (f"version: 1\nrules:\n  - name: a\n    match: {{modality: [CT]}}\n"
         f"    match: {{modality: [CR]}}\n    {TASK}\n",
         "rules[0].match (line 5)", "duplicate key"),
        (f"version: 1\nrules:\n  - name: a\n    {TASK}\n  - name: a\n    {TASK}\n",
         "rules[1].name (line 5)", "duplicate rule name 'a' (also rules[0])"),
        ("version: 1\nrules:\n  - name: a\n    produce: [{model: x1, priority: from_order}]\n",
         "rules[0].produce[0] (line 4)", "priority from_order needs default_priority"),
        ("version: 1\nrules:\n  - name: a\n    produce: [{model: Ich CT, priority: stat}]\n",
         "rules[0].produce[0].model (line 4)", "'Ich CT' is not a model reference"),
        ("version: 1\nrules: [\n", "line 3", "not valid YAML"),
        ("version: 2\nrules: []\n", "version (line 1)", "Input should be 1"),
    ],
)  # fmt: skip
def test_bad_rules_are_refused_with_their_location(text: str, location: str, message: str) -> None:
    with pytest.raises(RulesError) as raised:
        load_rules(text)
    assert raised.value.location == location
    assert raised.value.message.startswith(message)


def test_error_from_a_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text("version: 1\nrules:\n  - name: a\n    produce: [{model: x1, priority: stat}]\n"
                    "    mach: {}\n")  # fmt: skip
    with pytest.raises(RulesError, match=re.escape(f"{path}: rules[0].mach (line 5): extra field")):
        load_rules(path)


def test_check_models_reports_unknown_versions_and_modalities() -> None:
    ruleset = load_rules("""
version: 1
rules:
  - {name: a, match: {modality: [CT]}, produce: [{model: ich-ct-head@9, priority: stat}]}
  - {name: b, match: {modality: [CT, MR]}, produce: [{model: ich-ct-head, priority: stat}]}
  - {name: c, produce: [{model: no-such-model, priority: stat}]}
  - {name: d, produce: [{model: cxr-pneumothorax, priority: urgent}]}
""")
    problems = check_models(ruleset, REGISTRY)
    assert [p.split(":")[0] for p in problems] == [
        "rules[0].produce[0].model",
        "rules[1].produce[0].model",
        "rules[2].produce[0].model",
        "rules[3].produce[0].model",
    ]
    assert "ich-ct-head@9" in problems[0]
    assert "no such version" in problems[0]
    assert "may send ['MR']" in problems[1]
    assert "no-such-model" in problems[2]
    assert "restricts the modality" in problems[3]
    assert check_models(default_rules(), REGISTRY) == []


@pytest.mark.parametrize(
    ("cosines", "plane"),
    [
        ([1, 0, 0, 0, 1, 0], Orientation.AXIAL),
        ([1, 0, 0, 0, 0.866, -0.5], Orientation.AXIAL),  # 30 degree gantry tilt
        ([1, 0, 0, 0, 0, -1], Orientation.CORONAL),
        ([0, 1, 0, 0, 0, -1], Orientation.SAGITTAL),
        ([1, 0, 0, 0, 0.7071, -0.7071], Orientation.OBLIQUE),
    ],
)
def test_orientation_from_image_orientation_patient(
    cosines: list[float], plane: Orientation
) -> None:
    assert orientation_of(cosines) is plane


def test_facts_are_headers_without_patient_identity(studies: dict[str, SyntheticStudy]) -> None:
    study = studies["ct-head/STAT"]
    facts = facts_from_folder(study.study_dir, calling_ae=" ed_ct ")
    header = pydicom.dcmread(study.files[0], stop_before_pixels=True)
    assert facts.calling_ae == "ED_CT"
    assert [str(c) for c in facts.procedure_codes] == ["LN:30799-1"]
    (series,) = facts.series
    assert (series.modality, series.body_part, series.image_count) == ("CT", "HEAD", 32)
    assert series.slice_thickness_mm == 5.0
    assert series.contrast is False
    assert str(header.PatientName) not in repr(facts)
    assert header.PatientID not in repr(facts)


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    rules_command.add_parser(parser.add_subparsers())
    args = parser.parse_args(["rules", *argv])
    status: int = args.func(args)
    return status


def test_cli_test_prints_rules_reasons_and_tasks(
    studies: dict[str, SyntheticStudy], capsys: pytest.CaptureFixture[str]
) -> None:
    folder = studies["ct-head/STAT"].study_dir.parent  # every study of the module
    assert _cli("test", str(folder), "--order-priority", "S", "--calling-ae", "ED_CT") == 0
    out = capsys.readouterr().out
    assert out.count("\nstudy ") + out.startswith("study ") == len(studies)
    for rule in ("ct-head-noncontrast", "ct-head-by-description", "ct-chest", "chest-radiograph"):
        assert f"matched    {rule}:" in out
        assert f"unmatched  {rule}:" in out
    assert "unmatched  ct-chest: BodyPartExamined 'HEAD' not in ['CHEST']" in out
    assert "task       ich-ct-head@2 stat deadline 60 s mode assistant -> local-folder" in out
    assert "task       ct-chest-nodule@1 stat deadline 60 s" in out  # escalated by -order S
    assert "priority: order priority stat escalates routine" in out
    study = studies["ct-head/STAT"]
    assert study.accession_number not in out
    assert str(pydicom.dcmread(study.files[0], stop_before_pixels=True).PatientName) not in out


def test_cli_check_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = Path(rules_command.__file__).parents[2] / "router" / "rules" / "default.yaml"
    assert _cli("check", str(good)) == 0
    assert "4 rules" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        f"version: 1\nrules:\n  - name: a\n    match: {{study_description: '['}}\n    {TASK}\n"
    )
    assert _cli("check", str(bad)) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"statlane rules check: {bad}: rules[0].match.study_description (line 4)")
    assert len(err.splitlines()) == 1
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("version: 1\nrules:\n  - name: a\n    match: {modality: [CT]}\n"
                       "    produce: [{model: nope, priority: stat}]\n")  # fmt: skip
    assert _cli("check", str(unknown)) == 1
    assert "rules[0].produce[0].model: nope: no such model" in capsys.readouterr().err
    assert _cli("test", str(tmp_path)) == 1  # no DICOM here
    assert "no DICOM instances" in capsys.readouterr().err


def test_cli_reports_no_tasks(
    studies: dict[str, SyntheticStudy], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = tmp_path / "mr-only.yaml"
    rules.write_text("version: 1\nrules:\n  - name: mr-brain\n    match: {modality: [MR]}\n"
                     "    produce: [{model: ich-ct-head, priority: stat}]\n")  # fmt: skip
    out = io.StringIO()
    status = rules_command.test_rules(
        studies["cr-chest/ROUTINE"].files[0], rules_file=rules, registry=REGISTRY, out=out
    )
    assert status == 1  # the rules may send MR to a CT model: refused before any study
    rules.write_text(rules.read_text().replace("[MR]", "[CT]"))
    assert (
        rules_command.test_rules(
            studies["cr-chest/ROUTINE"].files[0], rules_file=rules, registry=REGISTRY, out=out
        )
        == 0
    )
    assert "unmatched  mr-brain: Modality 'CR' not in ['CT']" in out.getvalue()
    assert "no tasks:" in out.getvalue()
    capsys.readouterr()


def test_rules_package_never_evaluates_code() -> None:
    package = Path(rules_command.__file__).parents[2] / "router" / "rules"
    sources = [*package.glob("*.py"), Path(rules_command.__file__)]
    for source in sources:
        text = source.read_text()
        assert not re.search(r"(?<![.\w])(eval|exec|compile)\s*\(|__import__|yaml\.load\(", text), (
            source
        )


def test_a_later_more_urgent_rule_wins_the_merge(studies: dict[str, SyntheticStudy]) -> None:
    ruleset = load_rules("""
version: 1
rules:
  - {name: routine-first, match: {modality: [CT]},
     produce: [{model: ich-ct-head, priority: routine, deadline_s: 900}]}
  - {name: stat-later, match: {modality: [CT]}, produce: [{model: ich-ct-head, priority: stat}]}
  - {name: other-version, match: {modality: [CT]},
     produce: [{model: ich-ct-head@1, priority: stat}]}
""")
    decision = evaluate(
        ruleset,
        _facts(studies["ct-head/STAT"].study_dir),
        resolve_model=lambda r: REGISTRY.get(r).ident,
    )
    assert [
        (t.rule, t.model, t.priority, t.deadline_s, t.also_requested_by) for t in decision.tasks
    ] == [
        ("stat-later", "ich-ct-head@2", PriorityClass.STAT, 60.0, ("routine-first",)),
        ("other-version", "ich-ct-head@1", PriorityClass.STAT, 60.0, ()),
    ]
