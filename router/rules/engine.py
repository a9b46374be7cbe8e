"""Evaluate routing rules against one study: which tasks to run, on which series, and why.

Study-level conditions (descriptions, codes, calling AE, order) are checked once; series-level
conditions (modality, body part, series description, slice thickness, orientation, contrast,
source) are checked per series, and a rule matches when the study-level ones hold and at least
one series meets every series-level one. Every condition leaves a line saying what was found and
what was expected, so a routing decision can be audited and a mis-route explained.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from router.result import Mode
from router.rules.facts import Code, Orientation, SeriesFacts, StudyFacts
from router.rules.schema import (
    CodeMatch,
    Match,
    Preference,
    Range,
    Rule,
    RuleSet,
    SourceMatch,
    TaskPriority,
    TaskSpec,
)
from router.vocabulary import OrderContext, OrderPriority, PriorityClass

_ORDER_CLASS = {OrderPriority.STAT: PriorityClass.STAT, OrderPriority.ASAP: PriorityClass.URGENT}
"""Order priority → the class it escalates a ``from_order`` task to (S → stat, A → urgent)."""


@dataclass(frozen=True)
class ConditionResult:
    """One condition of one rule: its key, whether it held, and what was found vs expected."""

    condition: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class RuleExplanation:
    """Why a rule did or did not match (conditions in schema order) and what became of its tasks."""

    rule: str
    matched: bool
    conditions: tuple[ConditionResult, ...]
    notes: tuple[str, ...] = ()

    @property
    def failed(self) -> list[ConditionResult]:
        """The conditions that did not hold."""
        return [c for c in self.conditions if not c.passed]


@dataclass(frozen=True)
class PlannedTask:
    """One inference task a rule asks for.

    Attributes:
        rule: Name of the rule that produced it.
        model: Model reference (``name@version`` when a resolver was given, else as written).
        priority: Inference priority class.
        priority_reason: How the class was reached (fixed, or escalated by the order).
        deadline_s: Deadline relative to study completion, seconds.
        mode: What the result may touch.
        destinations: Destination names for the results.
        series_instance_uid: The series the model reads.
        series_reason: Why that series was chosen.
        also_requested_by: Other rules that asked for the same model on the same series.
    """

    rule: str
    model: str
    priority: PriorityClass
    priority_reason: str
    deadline_s: float
    mode: Mode
    destinations: tuple[str, ...]
    series_instance_uid: str
    series_reason: str
    also_requested_by: tuple[str, ...] = ()


@dataclass(frozen=True)
class Decision:
    """The routing decision for one study: tasks to run and an explanation per rule."""

    study_instance_uid: str
    tasks: list[PlannedTask] = field(default_factory=list)
    explanations: list[RuleExplanation] = field(default_factory=list)

    @property
    def reasons(self) -> list[str]:
        """One line per rule: matched, or its first failing condition (why nothing ran)."""
        lines = []
        for ex in self.explanations:
            if ex.matched:
                lines.append(f"{ex.rule}: matched" + "".join(f"; {n}" for n in ex.notes))
            else:
                lines.append(f"{ex.rule}: {ex.failed[0].detail}")
        return lines


def evaluate(
    ruleset: RuleSet,
    study: StudyFacts,
    order: OrderContext | None = None,
    calling_ae: str | None = None,
    resolve_model: Callable[[str], str] | None = None,
) -> Decision:
    """Evaluate every rule in order; all matching rules produce tasks.

    ``order`` and ``calling_ae`` override the ones in ``study`` when given. ``resolve_model``
    maps a reference to ``name@version`` (e.g. through the registry) before duplicates are
    merged: one task per model and series, keeping the most urgent priority (the earlier rule
    on a tie).
    """
    order = order if order is not None else study.order
    ae = (calling_ae if calling_ae is not None else study.calling_ae).strip().upper()
    priority, priority_from = _effective_priority(study, order)
    tasks: list[PlannedTask] = []
    explanations: list[RuleExplanation] = []
    for rule in ruleset.rules:
        conditions, candidates = _match(rule.match, study, order, ae, priority, priority_from)
        matched = all(c.passed for c in conditions)
        notes: list[str] = []
        if matched:
            for index, spec in enumerate(rule.produce):
                planned = _plan(ruleset, rule, spec, candidates, priority, resolve_model)
                if isinstance(planned, str):
                    notes.append(f"produce[{index}] {spec.model}: {planned}")
                else:
                    tasks.append(planned)
        explanations.append(RuleExplanation(rule.name, matched, tuple(conditions), tuple(notes)))
    return Decision(study.study_instance_uid, _merge(tasks), explanations)


def _effective_priority(study: StudyFacts, order: OrderContext | None) -> tuple[OrderPriority, str]:
    """The order's priority, else the one the modality copied into the images."""
    if order is not None and order.priority is not OrderPriority.UNKNOWN:
        return order.priority, "order"
    if study.requested_priority is not OrderPriority.UNKNOWN:
        return study.requested_priority, "RequestedProcedurePriority"
    return OrderPriority.UNKNOWN, "no order"


# -- conditions ------------------------------------------------------------------------------

SeriesCheck = Callable[[SeriesFacts], ConditionResult]


def _match(
    match: Match,
    study: StudyFacts,
    order: OrderContext | None,
    ae: str,
    priority: OrderPriority,
    priority_from: str,
) -> tuple[list[ConditionResult], list[SeriesFacts]]:
    """Condition results in schema order, and the series meeting every series-level one."""
    results: list[ConditionResult] = []
    series_checks: list[SeriesCheck] = []
    for name in Match.model_fields:
        expected = getattr(match, name)
        if expected is None:
            continue
        if name in _SERIES_CONDITIONS:
            check = _series_check(name, expected)
            series_checks.append(check)
            results.append(_over_series(check, study.series))
        elif name == "study_description":
            results.append(_regex(name, "StudyDescription", study.study_description, expected))
        elif name == "procedure_codes":
            results.append(_codes(study, order, expected))
        elif name == "calling_ae":
            results.append(_one_of(name, "calling AE", ae, expected))
        elif name == "order_priority":
            value = f"{priority.value} ({priority_from})"
            ok = priority in expected
            results.append(_listed(name, "order priority", value, ok, [p.value for p in expected]))
        elif name == "indication":
            text = order.indication if order is not None else ""
            label = "order indication" if order is not None else "order indication (no order)"
            results.append(_regex(name, label, text, expected))
    candidates = [s for s in study.series if all(check(s).passed for check in series_checks)]
    if not study.series:
        results.append(ConditionResult("series", False, "study has no series"))
    elif series_checks and all(r.passed for r in results) and not candidates:
        results.append(
            ConditionResult("series", False, "no single series meets every series condition")
        )
    return results, candidates


def _over_series(check: SeriesCheck, series: Sequence[SeriesFacts]) -> ConditionResult:
    """A series-level condition holds for the study when it holds for at least one series."""
    results = [(s, check(s)) for s in series]
    if not results:
        return ConditionResult("series", False, "study has no series")
    name = results[0][1].condition
    if len(results) == 1:
        return results[0][1]
    passing = [(s, r) for s, r in results if r.passed]
    if passing:
        s, r = passing[0]
        return ConditionResult(name, True, f"{r.detail} (series {s.label})")
    details = [f"{r.detail} (series {s.label})" for s, r in results[:3]]
    more = f"; and {len(results) - 3} more series" if len(results) > 3 else ""
    return ConditionResult(name, False, "; ".join(details) + more)


def _show(value: object) -> str:
    return "absent" if value in (None, "") else repr(value)


def _listed(name: str, label: str, value: object, ok: bool, expected: list[str]) -> ConditionResult:
    verb = "in" if ok else "not in"
    return ConditionResult(name, ok, f"{label} {_show(value)} {verb} {expected}")


def _one_of(name: str, label: str, value: str, expected: list[str]) -> ConditionResult:
    return _listed(name, label, value, value in expected, expected)


def _regex(name: str, label: str, value: str, pattern: re.Pattern[str]) -> ConditionResult:
    ok = bool(value) and pattern.search(value) is not None
    verb = "matches" if ok else "does not match"
    return ConditionResult(name, ok, f"{label} {_show(value)} {verb} /{pattern.pattern}/")


def _codes(
    study: StudyFacts, order: OrderContext | None, expected: Sequence[CodeMatch]
) -> ConditionResult:
    found = list(study.procedure_codes)
    if order is not None and order.procedure_code:
        code = Code(order.procedure_scheme.strip().upper(), order.procedure_code.strip().upper())
        if code not in found:
            found.append(code)
    wanted = [Code(c.scheme, c.value) for c in expected]
    ok = any(code in wanted for code in found)
    shown = [str(c) for c in found] or "absent"
    verb = "include one of" if ok else "include none of"
    return ConditionResult(
        "procedure_codes", ok, f"procedure codes {shown} {verb} {[str(c) for c in wanted]}"
    )


def _series_check(name: str, expected: object) -> SeriesCheck:
    """The per-series test for match key ``name`` with its validated ``expected`` value."""
    if name == "modality" and isinstance(expected, list):
        return lambda s: _one_of(name, "Modality", s.modality, expected)
    if name == "body_part" and isinstance(expected, list):
        return lambda s: _one_of(name, "BodyPartExamined", s.body_part, expected)
    if name == "series_description" and isinstance(expected, re.Pattern):
        return lambda s: _regex(name, "SeriesDescription", s.series_description, expected)
    if name == "slice_thickness_mm" and isinstance(expected, Range):
        return _thickness(expected)
    if name == "orientation" and isinstance(expected, Orientation):
        return _orientation(expected)
    if name == "contrast" and isinstance(expected, bool):
        return _contrast(expected)
    if name == "source" and isinstance(expected, SourceMatch):
        return _source(expected)
    raise TypeError(f"match.{name}: not a series condition")  # schema and engine out of step


def _thickness(expected: Range) -> SeriesCheck:
    low = expected.min if expected.min is not None else 0.0
    high = expected.max if expected.max is not None else math.inf

    def check(s: SeriesFacts) -> ConditionResult:
        value = s.slice_thickness_mm
        ok = value is not None and low <= value <= high
        shown = "absent" if value is None else f"{value:g} mm"
        verb = "within" if ok else "outside"
        return ConditionResult(
            "slice_thickness_mm", ok, f"SliceThickness {shown} {verb} [{low:g}, {high:g}] mm"
        )

    return check


def _orientation(expected: Orientation) -> SeriesCheck:
    def check(s: SeriesFacts) -> ConditionResult:
        value = s.orientation.value if s.orientation is not None else None
        return _listed("orientation", "orientation", value, value == expected, [expected.value])

    return check


def _contrast(expected: bool) -> SeriesCheck:
    wanted = "present" if expected else "absent"

    def check(s: SeriesFacts) -> ConditionResult:
        found = "present" if s.contrast else "absent"
        ok = s.contrast == expected
        verb = "as required" if ok else f"but must be {wanted}"
        return ConditionResult("contrast", ok, f"ContrastBolusAgent {found} {verb}")

    return check


def _source(expected: SourceMatch) -> SeriesCheck:
    tests = [
        (f"source.{key}", label, attribute, pattern)
        for key, label, attribute, pattern in (
            ("department", "InstitutionalDepartmentName", "department", expected.department),
            ("station", "StationName", "station_name", expected.station),
            ("institution", "InstitutionName", "institution", expected.institution),
        )
        if pattern is not None
    ]

    def check(s: SeriesFacts) -> ConditionResult:
        parts = [_regex(key, label, getattr(s, attr), pat) for key, label, attr, pat in tests]
        failed = [p for p in parts if not p.passed]
        return ConditionResult("source", not failed, "; ".join(p.detail for p in failed or parts))

    return check


_SERIES_CONDITIONS = frozenset(
    {
        "modality",
        "body_part",
        "series_description",
        "slice_thickness_mm",
        "orientation",
        "contrast",
        "source",
    }
)


# -- tasks -----------------------------------------------------------------------------------


def _plan(
    ruleset: RuleSet,
    rule: Rule,
    spec: TaskSpec,
    candidates: list[SeriesFacts],
    order_priority: OrderPriority,
    resolve_model: Callable[[str], str] | None,
) -> PlannedTask | str:
    """The task ``spec`` asks for, or why there is none (no series fits its selection)."""
    selection = spec.series
    eligible = [
        s
        for s in candidates
        if (selection.modality is None or s.modality in selection.modality)
        and s.image_count >= selection.min_images
    ]
    if not eligible:
        wanted = f">= {selection.min_images} images"
        if selection.modality is not None:
            wanted += f" and modality in {selection.modality}"
        return f"no series with {wanted} among {len(candidates)} matching"
    chosen, why = select_series(eligible, selection.prefer)
    priority, priority_reason = _priority(spec, order_priority)
    defaults = ruleset.defaults
    return PlannedTask(
        rule=rule.name,
        model=resolve_model(spec.model) if resolve_model is not None else spec.model,
        priority=priority,
        priority_reason=priority_reason,
        deadline_s=spec.deadline_s or defaults.deadlines_s.for_class(priority),
        mode=spec.mode or defaults.mode,
        destinations=tuple(spec.destinations or defaults.destinations),
        series_instance_uid=chosen.series_instance_uid,
        series_reason=why,
    )


def _priority(spec: TaskSpec, order_priority: OrderPriority) -> tuple[PriorityClass, str]:
    if spec.priority is not TaskPriority.FROM_ORDER:
        return PriorityClass(spec.priority.value), "fixed by rule"
    default = spec.default_priority or PriorityClass.ROUTINE
    escalated = _ORDER_CLASS.get(order_priority)
    if escalated is not None and escalated.rank < default.rank:
        return escalated, f"order priority {order_priority.value} escalates {default.value}"
    return default, f"default {default.value} (order priority {order_priority.value})"


def _sort_key(series: SeriesFacts, prefer: Sequence[Preference]) -> tuple[float, ...]:
    values = {
        Preference.AXIAL: 0.0 if series.orientation is Orientation.AXIAL else 1.0,
        Preference.THINNEST: series.slice_thickness_mm or math.inf,
        Preference.MOST_IMAGES: -float(series.image_count),
        Preference.FIRST: float(series.series_number)
        if series.series_number is not None
        else math.inf,
    }
    return tuple(values[p] for p in prefer)


def _describe(series: SeriesFacts) -> str:
    parts = [series.modality or "?"]
    if series.orientation is not None:
        parts.append(series.orientation.value)
    if series.slice_thickness_mm is not None:
        parts.append(f"{series.slice_thickness_mm:g} mm")
    parts.append(f"{series.image_count} image" + ("" if series.image_count == 1 else "s"))
    return ", ".join(parts)


def select_series(
    candidates: Sequence[SeriesFacts], prefer: Sequence[Preference]
) -> tuple[SeriesFacts, str]:
    """Pick one series by the preferences in order (ties: lowest series number, then UID).

    Returns the series and a sentence naming the preference that decided.
    """
    ranked = sorted(
        candidates,
        key=lambda s: (
            *_sort_key(s, prefer),
            *_sort_key(s, [Preference.FIRST]),
            s.series_instance_uid,
        ),
    )
    best = ranked[0]
    if len(ranked) == 1:
        return best, f"series {best.label} ({_describe(best)}): the only candidate"
    runner_up = ranked[1]
    for preference in prefer:
        if _sort_key(best, [preference]) != _sort_key(runner_up, [preference]):
            decided = f"preferred {preference.value}"
            break
    else:
        decided = "tie broken by series number"
    return best, (
        f"series {best.label} ({_describe(best)}) over {runner_up.label} "
        f"({_describe(runner_up)}) of {len(ranked)} candidates: {decided}"
    )


def _merge(tasks: list[PlannedTask]) -> list[PlannedTask]:
    """One task per (model, series): the most urgent wins, the earlier rule on a tie."""
    kept: dict[tuple[str, str], PlannedTask] = {}
    for task in tasks:
        key = (task.model, task.series_instance_uid)
        current = kept.get(key)
        if current is None:
            kept[key] = task
        elif task.priority.rank < current.priority.rank:
            kept[key] = replace(task, also_requested_by=(*current.also_requested_by, current.rule))
        else:
            kept[key] = replace(current, also_requested_by=(*current.also_requested_by, task.rule))
    return list(kept.values())
