"""Routing rules: declarative data that turns a study into inference tasks, with reasons.

``load_rules`` / ``default_rules`` give a validated :class:`RuleSet`; ``facts_from_datasets`` /
``studies_from_folder`` read :class:`StudyFacts` from DICOM headers; ``evaluate`` returns a
:class:`Decision` (planned tasks plus an explanation per rule). Nothing here is ever executed as
code: rules are matched, not evaluated.
"""

from router.rules.engine import (
    ConditionResult,
    Decision,
    PlannedTask,
    RuleExplanation,
    evaluate,
    select_series,
)
from router.rules.facts import (
    Code,
    FactsError,
    Orientation,
    SeriesFacts,
    StudyFacts,
    StudyFactsBuilder,
    facts_from_datasets,
    facts_from_folder,
    studies_from_folder,
)
from router.rules.schema import RulesError, RuleSet, check_models, default_rules, load_rules

__all__ = [
    "Code",
    "ConditionResult",
    "Decision",
    "FactsError",
    "Orientation",
    "PlannedTask",
    "RuleExplanation",
    "RuleSet",
    "RulesError",
    "SeriesFacts",
    "StudyFacts",
    "StudyFactsBuilder",
    "check_models",
    "default_rules",
    "evaluate",
    "facts_from_datasets",
    "facts_from_folder",
    "load_rules",
    "select_series",
    "studies_from_folder",
]
