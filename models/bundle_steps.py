"""A MONAI bundle's transforms, converted to manifest steps as plain data (nothing evaluated).

Preprocessing transforms whose ``_target_`` is on the allow-list of
:mod:`preprocessing.pipeline_spec` become manifest steps (dictionary plumbing dropped, ``@``
references followed). Loader transforms statlane does itself are skipped; transforms that only
touch other keys (the label of a training config) or only move data around are reported and
left out; anything else that changes the image is *unsupported*: the import refuses it unless
the operator accepts the gap (``--allow-unmapped``), because a model fed a different input gives
silently wrong results.

Postprocessing maps onto :class:`models.manifest.Postprocessing`: ``Activations`` (softmax or
sigmoid), ``AsDiscrete`` (argmax, threshold), ``KeepLargestConnectedComponent`` and ``Invertd``
(statlane always places results back on the source series).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from models.bundle_config import resolve, transforms_of
from preprocessing.errors import PipelineSpecError
from preprocessing.pipeline_spec import ALLOWED_TRANSFORMS, parse_step

_EXPRESSION = ("$", "@", "%")
# Done by statlane's own loader (decode, channel-first, float32 tensor): expected, not reported.
_LOADER_STEPS = frozenset(
    {
        "LoadImage",
        "EnsureChannelFirst",
        "EnsureType",
        "ToTensor",
        "ToNumpy",
        "AddChannel",
        "CastToType",
        "ToDevice",
    }
)
# Move or copy data between keys, or write files: they never change the image the model sees.
_DATA_ONLY = frozenset(
    {
        "CopyItems",
        "DeleteItems",
        "SelectItems",
        "Identity",
        "SaveImage",
        "ConcatItems",
        "FromMetaTensor",
        "ToMetaTensor",
        "SplitDim",
    }
)
# Dictionary plumbing, or ours to set (output is always float32 and eager).
_KEY_ARGS = frozenset(
    {
        "keys",
        "allow_missing_keys",
        "meta_keys",
        "meta_key_postfix",
        "lazy",
        "dtype",
        "track_meta",
        "image_only",
        "source_key",
        "start_coord_key",
        "end_coord_key",
    }
)
_PER_KEY_ARGS = frozenset({"mode", "padding_mode", "align_corners", "anti_aliasing"})


@dataclass(frozen=True)
class MappedStep:
    """A bundle transform converted to a manifest step (or postprocessing setting)."""

    index: int
    target: str
    step: dict[str, Any]


@dataclass(frozen=True)
class UnmappedStep:
    """A bundle transform that was left out, and why.

    ``unsupported`` marks a transform that would change the model's input (or its result)
    and has no statlane equivalent: the import refuses it unless the operator accepts it.
    """

    index: int
    target: str
    reason: str
    unsupported: bool = False


class _Unmapped(Exception):
    """Internal: this transform cannot be converted; the message is the reason."""

    def __init__(self, reason: str, *, unsupported: bool = True) -> None:
        super().__init__(reason)
        self.unsupported = unsupported


def short_name(target: str) -> tuple[str, bool]:
    """``monai.transforms.Spacingd`` -> (``Spacing``, True); names without a dictionary suffix
    of a known transform come back as they are, with False."""
    short = target.rsplit(".", 1)[-1]
    known = {*ALLOWED_TRANSFORMS, *_LOADER_STEPS, *_DATA_ONLY, *_POST_KINDS}
    for suffix in ("d", "D", "Dict"):
        base = short.removesuffix(suffix)
        if short.endswith(suffix) and base in known:
            return base, True
    return short, False


def _key_list(config: dict[str, Any], raw: dict[str, Any]) -> list[str]:
    keys = resolve(config, raw.get("keys", []))
    items = [keys] if isinstance(keys, str) else keys
    if not isinstance(items, list):
        raise _Unmapped(f"keys {keys!r} are not plain names; not evaluated")
    names = [resolve(config, k) for k in items]
    if not all(isinstance(k, str) and not k.startswith(_EXPRESSION) for k in names):
        raise _Unmapped(f"keys {keys!r} are not plain names; not evaluated")
    return [str(k) for k in names]


def _target(raw: object) -> tuple[str, str, bool]:
    """(full target, short name, dictionary form) of a plain transform mapping."""
    if not isinstance(raw, dict) or not isinstance(raw.get("_target_"), str):
        raise _Unmapped("not a plain mapping with a _target_")
    if raw["_target_"].startswith(_EXPRESSION) or isinstance(raw.get("_disabled_"), str):
        raise _Unmapped("_target_/_disabled_ is an expression; not evaluated")
    target = raw["_target_"]
    if "." in target and not target.startswith("monai."):
        # the bundle's own class (scripts.transforms.Orientationd, ...): same name, other code
        raise _Unmapped("a transform of the bundle's own code, not MONAI's; not evaluated")
    name, dictionary = short_name(target)
    return target, name, dictionary


Evaluate = Callable[[str, str], object]
"""``(where, expression) -> value``: evaluates one argument expression at import (the
operator's choice), or raises :class:`NotEvaluated`."""


class NotEvaluated(Exception):
    """An expression the import may not (or could not) evaluate; the message says why."""


def _argument(value: object, key: str, where: str, evaluate: Evaluate | None) -> object:
    """A transform argument as plain data: expressions evaluated only through ``evaluate``."""
    if not (isinstance(value, str) and value.startswith(_EXPRESSION)):
        return value
    if evaluate is None or not value.startswith("$"):
        raise _Unmapped(f"{key}={value!r} is an expression; not evaluated")
    try:
        return evaluate(where, value)
    except NotEvaluated as why:
        raise _Unmapped(f"{key}={value!r}: {why}") from None


def _map_step(
    config: dict[str, Any],
    raw: object,
    input_key: str,
    where: str = "",
    evaluate: Evaluate | None = None,
) -> dict[str, Any] | None:
    """One bundle transform -> one manifest step, ``None`` for loader steps."""
    _, name, dictionary = _target(raw)
    assert isinstance(raw, dict)
    dictionary = dictionary or "keys" in raw  # an unknown dictionary transform names its keys
    if raw.get("_disabled_") is True or name in _LOADER_STEPS:
        return None
    key_list = _key_list(config, raw) if dictionary else [input_key]
    if dictionary and input_key not in key_list:
        raise _Unmapped(f"applies to {key_list}, not the input {input_key!r}", unsupported=False)
    if name in _DATA_ONLY:
        raise _Unmapped("moves or saves data only; the image is unchanged", unsupported=False)
    if name not in ALLOWED_TRANSFORMS:
        raise _Unmapped("not in the allow-list of statlane's preprocessing")
    source = resolve(config, raw.get("source_key", input_key))
    if source != input_key:
        raise _Unmapped(f"source_key {source!r} is not the input {input_key!r}")
    args: dict[str, Any] = {}
    for key, value in raw.items():
        if (key.startswith("_") and key.endswith("_")) or key in _KEY_ARGS:
            continue
        value = _argument(resolve(config, value), key, f"{where}#{key}", evaluate)
        per_key = dictionary and key in _PER_KEY_ARGS
        if per_key and isinstance(value, list) and len(value) == len(key_list):
            value = value[key_list.index(input_key)]
        args[key] = value
    step = {"transform": name, **args}
    try:
        parse_step(0, step)
    except PipelineSpecError as error:
        raise _Unmapped(error.detail.removeprefix(f"pipeline step 0 ({name}): ")) from None
    return step


@dataclass
class PreprocessingMap:
    """The bundle's preprocessing, converted.

    Attributes:
        steps: Manifest preprocessing steps, in order.
        mapped: Which bundle transform became which step.
        skipped: Loader transforms statlane does itself (decode, channel-first, ...).
        unmapped: Transforms left out, with reasons.
    """

    steps: list[dict[str, Any]] = field(default_factory=list)
    mapped: list[MappedStep] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    unmapped: list[UnmappedStep] = field(default_factory=list)


def map_preprocessing(
    config: dict[str, Any], input_key: str, evaluate: Evaluate | None = None
) -> PreprocessingMap:
    """Convert the bundle's preprocessing transforms that apply to ``input_key``.

    ``evaluate`` (import with evaluation) turns an argument expression such as
    ``"$[1.5] * 3"`` into data; without it such a transform stays unmapped.
    """
    result = PreprocessingMap()
    transforms = transforms_of(config, "preprocessing")
    if transforms is None:
        found = config.get("preprocessing")
        reason = f"no plain transforms list ({found!r})"
        result.unmapped.append(UnmappedStep(-1, "preprocessing", reason, unsupported=True))
        return result
    for index, raw in enumerate(transforms):
        raw = resolve(config, raw)
        target = str(raw.get("_target_", "?")) if isinstance(raw, dict) else repr(raw)
        try:
            where = f"preprocessing#transforms#{index}"
            step = _map_step(config, raw, input_key, where, evaluate)
        except _Unmapped as why:
            result.unmapped.append(UnmappedStep(index, target, str(why), why.unsupported))
            continue
        if step is None:
            result.skipped.append(target)
        else:
            result.mapped.append(MappedStep(index, target, step))
            result.steps.append(step)
    return result


_POST_KINDS = frozenset({"Activations", "AsDiscrete", "KeepLargestConnectedComponent", "Invert"})


@dataclass
class PostprocessingMap:
    """The bundle's postprocessing as :class:`~models.manifest.Postprocessing` fields.

    Attributes:
        fields: ``activation``, ``discrete``, ``voxel_threshold``, ``largest_component``.
        mapped: Which transform set which field.
        skipped: Transforms statlane does another way (saving files, delivery).
        unmapped: Transforms left out, with reasons.
    """

    fields: dict[str, Any] = field(default_factory=lambda: {"activation": "none"})
    mapped: list[MappedStep] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    unmapped: list[UnmappedStep] = field(default_factory=list)


def _post_step(config: dict[str, Any], raw: dict[str, Any], name: str) -> dict[str, Any]:
    """Manifest postprocessing fields set by one transform."""

    def arg(key: str, default: object = None) -> object:
        value = resolve(config, raw.get(key, default))
        if isinstance(value, str) and value.startswith(_EXPRESSION):
            raise _Unmapped(f"{key}={value!r} is an expression; not evaluated")
        return value

    if name == "Activations":
        kinds = [k for k in ("softmax", "sigmoid") if arg(k) is True]
        if len(kinds) != 1 or arg("other") is not None:
            raise _Unmapped("needs exactly one of softmax/sigmoid and no 'other' function")
        return {"activation": kinds[0]}
    if name == "AsDiscrete":
        threshold = arg("threshold")
        if arg("argmax") is True and threshold is None:
            return {"discrete": "argmax"}
        if (
            isinstance(threshold, int | float)
            and not isinstance(threshold, bool)
            and arg("argmax") is not True
            and 0.0 < float(threshold) < 1.0
        ):
            return {"discrete": "threshold", "voxel_threshold": float(threshold)}
        raise _Unmapped("only argmax, or a threshold in (0, 1), is supported")
    if name == "KeepLargestConnectedComponent":
        if arg("is_onehot") is True or arg("independent", True) is not True:
            raise _Unmapped("only independent components per label are supported")
        return {"largest_component": True}
    return {}  # Invert: results always go back to the source geometry


def map_postprocessing(config: dict[str, Any], notes: list[str]) -> PostprocessingMap:
    """Convert the bundle's postprocessing transforms (a missing section maps to nothing)."""
    result = PostprocessingMap()
    for index, raw in enumerate(transforms_of(config, "postprocessing") or []):
        raw = resolve(config, raw)
        target = str(raw.get("_target_", "?")) if isinstance(raw, dict) else repr(raw)
        target = f"postprocessing {target}"
        try:
            _, name, _ = _target(raw)
            assert isinstance(raw, dict)
            if raw.get("_disabled_") is True or name in _LOADER_STEPS or name in _DATA_ONLY:
                result.skipped.append(target)
                continue
            if name not in _POST_KINDS:
                raise _Unmapped("no statlane equivalent; the result is used without it")
            update = _post_step(config, raw, name)
        except _Unmapped as why:
            result.unmapped.append(UnmappedStep(index, target, str(why), why.unsupported))
            continue
        result.fields.update(update)
        description = update or {"results on": "the source series (labels resampled nearest)"}
        result.mapped.append(MappedStep(index, target, description))
    if not any("activation" in m.step for m in result.mapped):
        notes.append("no plain Activations step in postprocessing: activation 'none'")
    return result
