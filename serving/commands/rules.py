"""``statlane rules``: check a rules file, and show what the rules would do with a study.

``statlane rules test PATH`` reads DICOM headers only (no pixel data), evaluates the rules (the
embedded defaults unless ``--rules`` is given) and prints per study the matched rules, the first
failing conditions of the others, and the tasks produced with the model version the registry
resolves today. ``statlane rules check FILE`` loads a rules file and checks its models. Every
failure is one line on stderr, ``statlane rules <verb>: <where>: <what is wrong>``, exit
status 1. Study Instance UIDs identify studies; no patient identity is printed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from models.registry import Registry
from router.rules import (
    Decision,
    FactsError,
    RulesError,
    StudyFacts,
    check_models,
    default_rules,
    evaluate,
    load_rules,
    studies_from_folder,
)
from router.vocabulary import OrderContext, OrderPriority

_PRIORITY_CODES = {
    "S": OrderPriority.STAT,
    "A": OrderPriority.ASAP,
    "R": OrderPriority.ROUTINE,
}


def _order_priority(value: str) -> OrderPriority:
    """HL7 letter (S, A, R) or the word (stat, asap, routine), any case."""
    text = value.strip()
    if text.upper() in _PRIORITY_CODES:
        return _PRIORITY_CODES[text.upper()]
    try:
        return OrderPriority(text.lower())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected S, A or R, got {value!r}") from None


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``rules`` with its ``test`` and ``check`` verbs."""
    parser = subparsers.add_parser(
        "rules",
        help="routing rules: check a rules file, show which tasks a study would get and why",
        description="Routing rules (study -> tasks): check a file, dry-run it on DICOM studies.",
    )
    parser.set_defaults(func=run, verb=None)
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")

    test = verbs.add_parser("test", help="dry-run the rules on a DICOM file or folder")
    test.add_argument("path", type=Path, metavar="FILE_OR_DIR", help="DICOM file or folder tree")
    test.add_argument("--rules", type=Path, default=None, help="rules YAML (default: embedded)")
    test.add_argument("--calling-ae", default="", help="AE title the study came from")
    test.add_argument(
        "--order-priority",
        type=_order_priority,
        default=None,
        metavar="S|A|R",
        help="order priority (HL7 S stat, A asap, R routine)",
    )
    test.add_argument("--indication", default="", help="order indication (reason for study)")

    check = verbs.add_parser("check", help="load a rules file and check the models it names")
    check.add_argument("file", type=Path, help="rules YAML")


def run(args: argparse.Namespace) -> int:
    """Dispatch to the verb; returns the exit status (0 ok, 1 error, 2 no verb)."""
    if args.verb == "test":
        return test_rules(
            args.path,
            rules_file=args.rules,
            calling_ae=args.calling_ae,
            order_priority=args.order_priority,
            indication=args.indication,
        )
    if args.verb == "check":
        return check_rules(args.file)
    print("statlane rules: give a verb: test or check", file=sys.stderr)
    return 2


def check_rules(file: Path, registry: Registry | None = None, out: TextIO | None = None) -> int:
    """Load ``file`` and check its models against the registry; 0 when usable, else 1."""
    out = out or sys.stdout
    registry = registry or Registry.default()
    try:
        ruleset = load_rules(file)
    except RulesError as error:
        print(f"statlane rules check: {error}", file=sys.stderr)
        return 1
    problems = check_models(ruleset, registry)
    for problem in problems:
        print(f"statlane rules check: {file}: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"{file}: {len(ruleset.rules)} rules, models resolve in {registry.root}", file=out)
    return 0


def test_rules(
    path: Path,
    *,
    rules_file: Path | None = None,
    calling_ae: str = "",
    order_priority: OrderPriority | None = None,
    indication: str = "",
    registry: Registry | None = None,
    out: TextIO | None = None,
) -> int:
    """Evaluate the rules on every study at ``path`` and print the decisions; 0 ok, 1 error."""
    out = out or sys.stdout
    registry = registry or Registry.default()
    try:
        ruleset = load_rules(rules_file) if rules_file is not None else default_rules()
        studies = studies_from_folder(path, calling_ae)
    except (RulesError, FactsError) as error:
        print(f"statlane rules test: {error}", file=sys.stderr)
        return 1
    problems = check_models(ruleset, registry)
    for problem in problems:
        print(f"statlane rules test: {rules_file or 'default rules'}: {problem}", file=sys.stderr)
    if problems:
        return 1
    for study in studies:
        order = _order_for(study, order_priority, indication)
        decision = evaluate(
            ruleset, study, order=order, resolve_model=lambda ref: registry.get(ref).ident
        )
        out.write(format_decision(study, decision))
    return 0


def _order_for(
    study: StudyFacts, priority: OrderPriority | None, indication: str
) -> OrderContext | None:
    if priority is None and not indication:
        return None
    return OrderContext(
        accession_number=study.accession_number,
        priority=priority or OrderPriority.UNKNOWN,
        indication=indication,
    )


def _images(count: int) -> str:
    return f"{count} image" if count == 1 else f"{count} images"


def format_decision(study: StudyFacts, decision: Decision) -> str:
    """Human-readable report of one decision: series, rules (with reasons) and tasks."""
    lines = [f"study {study.study_instance_uid}"]
    if study.calling_ae:
        lines.append(f"  calling AE {study.calling_ae}")
    for series in study.series:
        where = f", {series.orientation.value}" if series.orientation else ""
        thick = f", {series.slice_thickness_mm:g} mm" if series.slice_thickness_mm else ""
        lines.append(
            f"  series {series.label} {series.modality} {series.body_part or '-'}{where}{thick}, "
            f"{_images(series.image_count)}: {series.series_description or '-'}"
        )
    for explanation in decision.explanations:
        if explanation.matched:
            why = "; ".join(c.detail for c in explanation.conditions) or "no conditions"
            lines.append(f"  matched    {explanation.rule}: {why}")
            lines += [f"             note: {note}" for note in explanation.notes]
        else:
            why = "; ".join(c.detail for c in explanation.failed)
            lines.append(f"  unmatched  {explanation.rule}: {why}")
    for task in decision.tasks:
        also = f" (also {', '.join(task.also_requested_by)})" if task.also_requested_by else ""
        lines.append(
            f"  task       {task.model} {task.priority.value} deadline {task.deadline_s:g} s "
            f"mode {task.mode.value} -> {', '.join(task.destinations)} "
            f"[rule {task.rule}{also}; priority: {task.priority_reason}]"
        )
        lines.append(f"             {task.series_reason}")
    if not decision.tasks:
        lines.append("  no tasks: no rule produced a task for this study")
    return "\n".join(lines) + "\n"
