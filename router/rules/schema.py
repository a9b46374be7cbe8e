"""The routing rules file: declarative data (pydantic, ``extra="forbid"``), never code.

A rules file is YAML::

    version: 1
    defaults: {deadlines_s: {stat: 60, urgent: 300, routine: 3600}, mode: assistant,
               destinations: [local-folder]}
    rules:
      - name: ct-head
        match: {modality: [CT], body_part: [HEAD], orientation: axial}
        produce:
          - model: ich-ct-head            # or ich-ct-head@2
            priority: stat                # or from_order with default_priority
            series: {prefer: [axial, thinnest, most_images, first], min_images: 16}

Every problem — YAML syntax, an unknown key, a bad regular expression, an unknown model — is a
:class:`RulesError` that names where it is (``rules[2].match.bodypart``, and the line).
Regular expressions are compiled at load time, case-insensitive, and applied with ``re.search``.
"""

from __future__ import annotations

import re
import types
import typing
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from models.manifest import ManifestError
from models.registry import Registry, RegistryError
from router.result import Mode
from router.rules.facts import Orientation
from router.vocabulary import OrderPriority, PriorityClass

DEFAULT_RULES = "default.yaml"
_MODEL_REF = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}(@[1-9][0-9]*)?$")


class RulesError(ValueError):
    """A rules file that cannot be used.

    Attributes:
        location: Key path inside the file, e.g. ``rules[2].match.bodypart`` (with the line
            when known), or ``<file>`` for problems with the file as a whole.
        message: What is wrong there.
        source: The file, when the rules came from one.
    """

    def __init__(self, location: str, message: str, source: str | None = None) -> None:
        self.location = location
        self.message = message
        self.source = source
        prefix = f"{source}: " if source else ""
        super().__init__(f"{prefix}{location}: {message}")


def _compile(value: Any) -> Any:
    """Compile a pattern case-insensitively; a bad one fails validation at its key."""
    if not isinstance(value, str):
        return value  # pydantic reports the wrong type
    try:
        return re.compile(value, re.IGNORECASE)
    except re.error as error:
        raise ValueError(f"bad regular expression {value!r}: {error}") from None


def _upper(values: Any) -> Any:
    if isinstance(values, list):
        return [v.strip().upper() if isinstance(v, str) else v for v in values]
    return values


def _lower(value: Any) -> Any:
    if isinstance(value, list):
        return [_lower(v) for v in value]
    return value.strip().lower() if isinstance(value, str) else value


Regex = Annotated[re.Pattern[str], BeforeValidator(_compile)]
UpperList = Annotated[list[str], Field(min_length=1), BeforeValidator(_upper)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CodeMatch(_Strict):
    """A procedure code to look for: coding scheme (``LN``, ``SCT``, a local one) and value."""

    scheme: str = Field(min_length=1)
    value: str = Field(min_length=1)

    @field_validator("scheme", "value")
    @classmethod
    def _normalise(cls, text: str) -> str:
        return text.strip().upper()


class Range(_Strict):
    """Inclusive bounds, either optional (millimetres for slice thickness)."""

    min: float | None = Field(default=None, ge=0.0)
    max: float | None = Field(default=None, ge=0.0)

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} > max {self.max}")
        return self


class SourceMatch(_Strict):
    """Where the study was acquired, by header text (regular expressions)."""

    department: Regex | None = Field(default=None, description="InstitutionalDepartmentName")
    station: Regex | None = Field(default=None, description="StationName")
    institution: Regex | None = Field(default=None, description="InstitutionName")


class Match(_Strict):
    """Conditions of one rule, all AND-ed; an absent condition always passes."""

    modality: UpperList | None = None
    body_part: UpperList | None = None
    study_description: Regex | None = None
    series_description: Regex | None = None
    procedure_codes: list[CodeMatch] | None = Field(default=None, min_length=1)
    slice_thickness_mm: Range | None = None
    orientation: Orientation | None = None
    contrast: bool | None = Field(default=None, description="ContrastBolusAgent present")
    calling_ae: UpperList | None = None
    order_priority: Annotated[
        list[OrderPriority] | None, Field(min_length=1), BeforeValidator(_lower)
    ] = None
    indication: Regex | None = None
    source: SourceMatch | None = None


class Preference(StrEnum):
    """How to pick one series among the candidates; applied in the order listed."""

    AXIAL = "axial"
    THINNEST = "thinnest"
    MOST_IMAGES = "most_images"
    FIRST = "first"


class SeriesSelection(_Strict):
    """Which series of a matching study the model reads."""

    prefer: list[Preference] = Field(
        default_factory=lambda: [
            Preference.AXIAL,
            Preference.THINNEST,
            Preference.MOST_IMAGES,
            Preference.FIRST,
        ]
    )
    min_images: int = Field(default=1, ge=1)
    modality: UpperList | None = None


class TaskPriority(StrEnum):
    """A fixed priority class, or ``from_order`` (escalated by the order's priority)."""

    STAT = "stat"
    URGENT = "urgent"
    ROUTINE = "routine"
    FROM_ORDER = "from_order"


class TaskSpec(_Strict):
    """One task a matching rule produces.

    ``priority: from_order`` gives the more urgent of ``default_priority`` and the order's
    class (S → stat, A → urgent): an order escalates a task, it never demotes one.
    """

    model: str
    priority: Annotated[TaskPriority, BeforeValidator(_lower)]
    default_priority: Annotated[PriorityClass | None, BeforeValidator(_lower)] = None
    deadline_s: float | None = Field(default=None, gt=0.0, description="seconds after arrival")
    mode: Mode | None = None
    destinations: list[str] | None = Field(default=None, min_length=1)
    series: SeriesSelection = Field(default_factory=SeriesSelection)

    @field_validator("model")
    @classmethod
    def _ref(cls, ref: str) -> str:
        if not _MODEL_REF.match(ref):
            raise ValueError(f"{ref!r} is not a model reference (name or name@version)")
        return ref

    @model_validator(mode="after")
    def _default_with_from_order(self) -> TaskSpec:
        if self.priority is TaskPriority.FROM_ORDER and self.default_priority is None:
            raise ValueError("priority from_order needs default_priority (stat/urgent/routine)")
        if self.priority is not TaskPriority.FROM_ORDER and self.default_priority is not None:
            raise ValueError("default_priority only applies with priority: from_order")
        return self


class Rule(_Strict):
    """A named rule: when ``match`` holds, ``produce`` its tasks."""

    name: str = Field(min_length=1)
    match: Match = Field(default_factory=Match)
    produce: list[TaskSpec] = Field(min_length=1)


class Deadlines(_Strict):
    """Deadline per priority class, seconds after the study is complete."""

    stat: float = Field(default=60.0, gt=0.0)
    urgent: float = Field(default=300.0, gt=0.0)
    routine: float = Field(default=3600.0, gt=0.0)

    def for_class(self, priority: PriorityClass) -> float:
        """Deadline of ``priority``, seconds."""
        return float(getattr(self, priority.value))


class Defaults(_Strict):
    """What a task gets when it does not say."""

    deadlines_s: Deadlines = Field(default_factory=Deadlines)
    mode: Mode = Mode.ASSISTANT
    destinations: list[str] = Field(default_factory=lambda: ["local-folder"], min_length=1)


class RuleSet(_Strict):
    """A whole rules file; rules are evaluated in order."""

    version: typing.Literal[1]
    defaults: Defaults = Field(default_factory=Defaults)
    rules: list[Rule]


def load_rules(source: Path | str) -> RuleSet:
    """Load and validate rules: a ``Path`` is read as a file, a ``str`` is the YAML text.

    Raises:
        RulesError: Unreadable file, bad YAML, duplicate or unknown key, bad value or regular
            expression, duplicate rule name; the error names the key path and line.
    """
    origin = str(source) if isinstance(source, Path) else None
    if isinstance(source, Path):
        try:
            text = source.read_text(encoding="utf-8")
        except OSError as error:
            raise RulesError("<file>", f"cannot read ({error.strerror})", origin) from None
    else:
        text = source
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "<yaml>"
        problem = getattr(error, "problem", None) or str(error)
        raise RulesError(where, f"not valid YAML ({problem})", origin) from None
    lines = _LineIndex(root)
    if lines.duplicate is not None:
        key_path, key_line = lines.duplicate
        raise RulesError(f"{key_path} (line {key_line})", "duplicate key", origin)
    if not isinstance(data, dict):
        raise RulesError("<file>", "must be a mapping with version and rules", origin)
    try:
        ruleset = RuleSet.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        path = _key_path(first["loc"])
        line = lines.line_of(first["loc"])
        where = f"{path} (line {line})" if line else path
        raise RulesError(where, _message(first), origin) from None
    seen: dict[str, int] = {}
    for index, rule in enumerate(ruleset.rules):
        if rule.name in seen:
            line = lines.line_of(("rules", index, "name"))
            earlier = seen[rule.name]
            raise RulesError(
                f"rules[{index}].name (line {line})",
                f"duplicate rule name {rule.name!r} (also rules[{earlier}])",
                origin,
            )
        seen[rule.name] = index
    return ruleset


def default_rules() -> RuleSet:
    """The embedded rules for the bundled reference models (``router/rules/default.yaml``)."""
    text = resources.files("router.rules").joinpath(DEFAULT_RULES).read_text(encoding="utf-8")
    try:
        return load_rules(text)
    except RulesError as error:
        raise RulesError(error.location, error.message, DEFAULT_RULES) from None


def check_models(ruleset: RuleSet, registry: Registry) -> list[str]:
    """Problems with the models the rules name, one located line each (empty when all is well).

    Reports unknown models or versions, and tasks that could send a modality the model's
    manifest does not accept (or any modality, when neither the rule nor the series selection
    restricts it) — the registry is the authority on what a model reads.
    """
    problems: list[str] = []
    for i, rule in enumerate(ruleset.rules):
        for j, task in enumerate(rule.produce):
            where = f"rules[{i}].produce[{j}].model"
            try:
                manifest = registry.get(task.model).manifest
            except (RegistryError, ManifestError) as error:
                problems.append(f"{where}: {error}")
                continue
            accepted = {m.upper() for m in manifest.modality}
            sent = task.series.modality or rule.match.modality
            if sent is None:
                problems.append(
                    f"{where}: {manifest.ident} reads only {sorted(accepted)} but neither "
                    "match.modality nor series.modality restricts the modality"
                )
            elif not set(sent) <= accepted:
                problems.append(
                    f"{where}: {manifest.ident} reads only {sorted(accepted)}, the rule may "
                    f"send {sorted(set(sent) - accepted)}"
                )
    return problems


def _key_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "<file>"


def _message(error: Any) -> str:
    if error["type"] == "extra_forbidden":
        allowed = _allowed_keys(error["loc"][:-1])
        return f"extra field (allowed: {', '.join(allowed)})" if allowed else "extra field"
    if error["type"] == "missing":
        return "field required"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def _allowed_keys(loc: tuple[int | str, ...]) -> list[str]:
    """Field names of the model at ``loc`` (list indices skipped), for 'extra field' errors."""
    model: type[BaseModel] | None = RuleSet
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if model is not None else None
        if field is None:
            return []
        model = _model_in(field.annotation)
    return sorted(model.model_fields) if model is not None else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside ``X``, ``X | None``, ``list[X]`` or ``Annotated[X, ...]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (list, types.UnionType, typing.Union, Annotated):
        for argument in typing.get_args(annotation):
            found = _model_in(argument)
            if found is not None:
                return found
    return None


class _LineIndex:
    """Line numbers of keys in the composed YAML tree, and the first duplicate key if any."""

    def __init__(self, root: yaml.Node | None) -> None:
        self._lines: dict[tuple[int | str, ...], int] = {}
        self.duplicate: tuple[str, int] | None = None
        if root is not None:
            self._walk(root, ())

    def _walk(self, node: yaml.Node, loc: tuple[int | str, ...]) -> None:
        self._lines.setdefault(loc, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key, value in node.value:
                name = str(key.value)
                child = (*loc, name)
                if name in seen and self.duplicate is None:
                    self.duplicate = (_key_path(child), key.start_mark.line + 1)
                seen.add(name)
                self._lines[child] = key.start_mark.line + 1
                self._walk(value, child)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self._walk(item, (*loc, index))

    def line_of(self, loc: tuple[int | str, ...]) -> int | None:
        """Line of the deepest known key on ``loc`` (1-based), None when unknown."""
        for end in range(len(loc), -1, -1):
            line = self._lines.get(tuple(loc[:end]))
            if line is not None and end > 0:
                return line
        return None
