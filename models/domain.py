"""Input-domain guard: is this series what the model was made for, and is its output believable?

A model answers whatever it is given: a chest CT detector fed a single 128x128 slice, or a
chest radiograph classifier fed a tibia, still returns a probability, often a saturated one.
Before inference the runtime checks the loaded series against the manifest's declared domain
(:class:`~models.manifest.Domain`, plus the top-level ``modality`` and ``body_part`` lists);
a series outside it gets no inference at all: the task ends "AI not applicable: <reason>".
After inference, :func:`check_outputs` flags an output too extreme to be believed (a map
saturated over most of the grid, a lesion covering an implausible fraction of the volume, a
saturated probability on an atypical input) as unreliable: never a critical finding.

Everything here is a pure function of the volume (geometry, a sample of its values, the
non-identifying header values it carries) and the manifest; reasons never name the patient.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from models.manifest import Domain, IntensityDomain, Manifest, OutputSanity, ValueRange
from models.postprocess import Finding, activate
from preprocessing.errors import (
    IncompleteSeriesError,
    LoaderFault,
    MissingDecoderError,
    PipelineSpecError,
    PreprocessingError,
)
from preprocessing.volume import Volume

_SAMPLE_LIMIT = 1_000_000  # voxels read for intensity statistics

# Body Part Examined values that name the same region (DICOM defined terms and common site
# usage). A manifest's ``body_part`` entry accepts its synonyms.
BODY_PART_SYNONYMS: Mapping[str, frozenset[str]] = {
    "HEAD": frozenset({"HEAD", "BRAIN", "SKULL"}),
    "BRAIN": frozenset({"HEAD", "BRAIN", "SKULL"}),
    "CHEST": frozenset({"CHEST", "THORAX", "LUNG"}),
    "THORAX": frozenset({"CHEST", "THORAX", "LUNG"}),
}


class DomainCheck(StrEnum):
    """Which check a series failed (a metrics label: a small fixed set)."""

    MODALITY = "modality"
    BODY_PART = "body_part"
    PIXEL_SPACING = "pixel_spacing"
    SLICE_THICKNESS = "slice_thickness"
    SLICE_SPACING = "slice_spacing"
    FIELD_OF_VIEW = "field_of_view"
    MATRIX = "matrix"
    SLICES = "slices"
    Z_COVERAGE = "z_coverage"
    INTENSITY = "intensity"
    SERIES = "series"  # the series cannot be made into one volume at all


@dataclass(frozen=True)
class DomainFinding:
    """One failed (or, for a warning, doubtful) check.

    Attributes:
        check: Which check.
        reason: One line, no patient identity, e.g. ``"1 slice, model needs >= 40"``.
    """

    check: DomainCheck
    reason: str


@dataclass(frozen=True)
class DomainVerdict:
    """The outcome of :func:`check_domain`.

    Attributes:
        model: ``name@version`` checked against.
        failures: Checks the series failed; any failure means no inference.
        warnings: Doubts that do not stop inference (e.g. Body Part Examined absent); they
            make a saturated output unreliable (:func:`check_outputs`).
    """

    model: str
    failures: tuple[DomainFinding, ...] = ()
    warnings: tuple[DomainFinding, ...] = ()

    @property
    def applicable(self) -> bool:
        """The series is in the model's domain: inference may run."""
        return not self.failures

    @property
    def reason(self) -> str:
        """The failures as one line (empty when applicable)."""
        return "; ".join(f.reason for f in self.failures)

    @property
    def checks(self) -> tuple[str, ...]:
        """Names of the failed checks."""
        return tuple(f.check.value for f in self.failures)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for the audit trail and the task's result document)."""
        return {
            "model": self.model,
            "applicable": self.applicable,
            "reason": self.reason,
            "failed_checks": list(self.checks),
            "warnings": [{"check": w.check.value, "reason": w.reason} for w in self.warnings],
        }


class OutOfDomainError(Exception):
    """The series is outside the model's declared domain; no inference ran.

    Raised by the runtime's preprocessing; the engine answers the job as not applicable.
    """

    def __init__(self, verdict: DomainVerdict) -> None:
        super().__init__(f"AI not applicable: {verdict.reason}")
        self.verdict = verdict


@dataclass(frozen=True)
class VolumeFacts:
    """What the domain check reads from a volume (no patient identity).

    Attributes:
        modality: DICOM Modality, upper-case.
        body_part: Body Part Examined, upper-case, empty when absent.
        columns: Voxels along i (Columns).
        rows: Voxels along j (Rows).
        slices: Voxels along k (slices or frames).
        column_spacing_mm: Spacing along i, mm.
        row_spacing_mm: Spacing along j, mm.
        slice_step_mm: Distance between neighbouring slice centres, mm (None for one slice).
        slice_thickness_mm: Slice Thickness, else the slice step; None when neither is known.
    """

    modality: str
    body_part: str
    columns: int
    rows: int
    slices: int
    column_spacing_mm: float
    row_spacing_mm: float
    slice_step_mm: float | None
    slice_thickness_mm: float | None

    @classmethod
    def of(cls, volume: Volume) -> VolumeFacts:
        """The facts of a loaded volume."""
        columns, rows, slices = volume.shape
        di, dj, dk = volume.spacing
        step = dk if slices > 1 else None
        thickness = _number(volume.metadata.get("SliceThickness"))
        if thickness is None:
            thickness = step
        return cls(
            modality=volume.modality.strip().upper(),
            body_part=str(volume.metadata.get("BodyPartExamined") or "").strip().upper(),
            columns=columns,
            rows=rows,
            slices=slices,
            column_spacing_mm=di,
            row_spacing_mm=dj,
            slice_step_mm=step,
            slice_thickness_mm=thickness,
        )

    @property
    def z_coverage_mm(self) -> float | None:
        """Extent along the slice axis, mm: slices x step (one slice: its thickness)."""
        if self.slice_step_mm is not None:
            return self.slices * self.slice_step_mm
        return self.slice_thickness_mm


def _number(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def body_part_accepted(body_part: str, declared: Sequence[str]) -> bool:
    """Whether Body Part Examined ``body_part`` is one of ``declared`` (or a synonym of one)."""
    accepted: set[str] = set()
    for part in declared:
        upper = part.strip().upper()
        accepted |= BODY_PART_SYNONYMS.get(upper, frozenset({upper}))
    return body_part.strip().upper() in accepted


def input_is_unusable(error: BaseException) -> bool:
    """True when ``error`` says the series itself cannot be one volume (its data, not us).

    Mixed orientations or geometry, duplicate or missing slices, non-image instances,
    unreadable files, projection images without geometry: no model can read such a series, so
    it is "AI not applicable" with the loader's reason. A missing decoder plugin, a streaming
    assembly asked too early, a bad pipeline, an unexpected error of the loader itself
    (:class:`~preprocessing.errors.LoaderFault`) and any typed error caused by an ``OSError``
    (a spool file gone, too many open files) or a ``MemoryError`` are statlane's own faults:
    those stay failures, retried and shown as "AI unavailable".
    """
    own_faults = (MissingDecoderError, IncompleteSeriesError, PipelineSpecError, LoaderFault)
    if not isinstance(error, PreprocessingError) or isinstance(error, own_faults):
        return False
    cause = error.__cause__
    while cause is not None:  # an I/O error or exhausted memory under the typed error: ours
        if isinstance(cause, OSError | MemoryError):
            return False
        cause = cause.__cause__
    return True


def unusable_series(manifest: Manifest, error: BaseException) -> DomainVerdict:
    """The verdict for a series the loader refused (see :func:`input_is_unusable`)."""
    reason = f"series cannot be made into a volume: {error}"
    return DomainVerdict(manifest.ident, (DomainFinding(DomainCheck.SERIES, reason),))


def check_domain(volume: Volume, manifest: Manifest) -> DomainVerdict:
    """Check a loaded series against the model's declared domain.

    The modality is always checked against ``manifest.modality``; everything else only when
    the manifest declares a ``domain`` block (a package without one is not checked further).

    Args:
        volume: The loaded source series (values in HU for CT).
        manifest: The model's manifest.

    Returns:
        The verdict: ``applicable`` False with the failed checks and their reasons, or True.
    """
    facts = VolumeFacts.of(volume)
    failures: list[DomainFinding] = []
    warnings: list[DomainFinding] = []
    declared = {m.strip().upper() for m in manifest.modality}
    if facts.modality not in declared:
        failures.append(
            DomainFinding(
                DomainCheck.MODALITY,
                f"modality {facts.modality or '(none)'}, model is for {'/'.join(sorted(declared))}",
            )
        )
    domain = manifest.domain
    if domain is not None:
        failures += _body_part(facts, manifest.body_part, domain, warnings)
        failures += _geometry(facts, domain)
        if domain.intensity is not None:
            failures += check_intensity(volume.array, domain.intensity)
    return DomainVerdict(manifest.ident, tuple(failures), tuple(warnings))


def _body_part(
    facts: VolumeFacts, declared: Sequence[str], domain: Domain, warnings: list[DomainFinding]
) -> list[DomainFinding]:
    if not declared:
        return []
    wanted = "/".join(part.upper() for part in declared)
    if not facts.body_part:
        finding = DomainFinding(
            DomainCheck.BODY_PART, f"Body Part Examined absent, model is for {wanted}"
        )
        if domain.require_body_part:
            return [finding]
        warnings.append(finding)
        return []
    if body_part_accepted(facts.body_part, declared):
        return []
    return [
        DomainFinding(DomainCheck.BODY_PART, f"body part {facts.body_part}, model is for {wanted}")
    ]


def _outside(
    check: DomainCheck, what: str, values: Sequence[float], bounds: ValueRange | None, unit: str
) -> list[DomainFinding]:
    """A failure when any of ``values`` lies outside ``bounds``."""
    if bounds is None:
        return []
    bad = [v for v in values if not bounds.contains(v)]
    if not bad:
        return []
    shown = " x ".join(f"{v:.4g}" for v in values)
    suffix = f" {unit}" if unit else ""
    return [
        DomainFinding(check, f"{what} {shown}{suffix}, model needs {bounds.describe()}{suffix}")
    ]


def _geometry(facts: VolumeFacts, domain: Domain) -> list[DomainFinding]:
    failures: list[DomainFinding] = []
    failures += _outside(DomainCheck.SLICES, "slices", [facts.slices], domain.slices, "")
    failures += _outside(
        DomainCheck.MATRIX,
        "matrix (rows x columns)",
        [facts.rows, facts.columns],
        domain.matrix,
        "px",
    )
    failures += _outside(
        DomainCheck.PIXEL_SPACING,
        "pixel spacing",
        [facts.row_spacing_mm, facts.column_spacing_mm],
        domain.pixel_spacing_mm,
        "mm",
    )
    fov = [facts.rows * facts.row_spacing_mm, facts.columns * facts.column_spacing_mm]
    failures += _outside(
        DomainCheck.FIELD_OF_VIEW, "field of view", fov, domain.field_of_view_mm, "mm"
    )
    if facts.slice_thickness_mm is not None:
        failures += _outside(
            DomainCheck.SLICE_THICKNESS,
            "slice thickness",
            [facts.slice_thickness_mm],
            domain.slice_thickness_mm,
            "mm",
        )
    if facts.slice_step_mm is not None:
        failures += _outside(
            DomainCheck.SLICE_SPACING,
            "slice spacing",
            [facts.slice_step_mm],
            domain.slice_spacing_mm,
            "mm",
        )
    coverage = facts.z_coverage_mm
    if domain.z_coverage_mm is not None:
        if coverage is None:
            failures.append(
                DomainFinding(DomainCheck.Z_COVERAGE, "slice coverage unknown (one slice)")
            )
        else:
            failures += _outside(
                DomainCheck.Z_COVERAGE,
                "coverage along the slices",
                [coverage],
                domain.z_coverage_mm,
                "mm",
            )
    return failures


def intensity_sample(array: np.ndarray, limit: int = _SAMPLE_LIMIT) -> np.ndarray:
    """A strided sample of at most about ``limit`` voxel values (float64), without a copy of
    the whole array."""
    flat = np.asarray(array).ravel(order="K")
    step = max(1, math.ceil(flat.size / limit))
    return np.asarray(flat[::step], dtype=np.float64)


def check_intensity(array: np.ndarray, intensity: IntensityDomain) -> list[DomainFinding]:
    """Whether the voxel values look like the declared intensity domain (HU for CT).

    Args:
        array: Voxel values (any shape).
        intensity: The declared intensity domain.

    Returns:
        One failure naming the first statistic out of range, or none.
    """
    sample = intensity_sample(array)
    sample = sample[np.isfinite(sample)]
    if intensity.ignore_below is not None:
        sample = sample[sample >= intensity.ignore_below]
    unit = intensity.unit
    if sample.size == 0:
        return [DomainFinding(DomainCheck.INTENSITY, "no voxel value in the counted range")]
    values = intensity.values
    if values is not None:
        inside = (sample >= (values.min if values.min is not None else -np.inf)) & (
            sample <= (values.max if values.max is not None else np.inf)
        )
        fraction = float(inside.mean())
        if fraction < intensity.min_fraction_in_values:
            return [
                DomainFinding(
                    DomainCheck.INTENSITY,
                    f"{fraction:.0%} of voxels in {values.describe()} {unit}, model needs "
                    f">= {intensity.min_fraction_in_values:.0%} (not {unit} values?)",
                )
            ]
    for bound in intensity.percentiles:
        value = float(np.percentile(sample, bound.percentile))
        if not bound.range.contains(value):
            return [
                DomainFinding(
                    DomainCheck.INTENSITY,
                    f"percentile {bound.percentile:g} at {value:.0f} {unit}, model needs "
                    f"{bound.range.describe()} {unit} (not {unit} values?)",
                )
            ]
    return []


# ---- output sanity -------------------------------------------------------------------------------


def check_outputs(
    findings: Sequence[Finding],
    outputs: Mapping[str, np.ndarray] | None,
    manifest: Manifest,
    verdict: DomainVerdict | None = None,
) -> str | None:
    """Why a model's result must not be believed, or None when it is plausible.

    Only models with a ``domain`` block are checked (the thresholds are in
    ``domain.output``). A result is unreliable when, for any finding,

    - its map is saturated (``p >= saturated_probability``) over more than
      ``saturated_map_fraction`` of the model grid, or
    - its map is above the voxel threshold over more than ``max_positive_fraction`` of the grid
      (a lesion covering most of the volume), or
    - its study-level probability is saturated while the input drew domain warnings (an
      atypical input answered with certainty).

    Args:
        findings: The postprocessed findings, in ``manifest.findings`` order.
        outputs: Raw outputs of the item (batch axis removed), None when unavailable.
        manifest: The model's manifest.
        verdict: The input's domain verdict (its warnings), None when not checked.

    Returns:
        One line naming the finding and the measure, or None.
    """
    domain = manifest.domain
    if domain is None:
        return None
    sanity = domain.output
    for spec in manifest.findings:
        if outputs is None or spec.output not in outputs:
            continue
        raw = np.asarray(outputs[spec.output])
        if raw.ndim < 3:  # (C, *spatial) with a spatial map; classifiers have (C,)
            continue
        reason = _map_problem(spec.name, spec.channel, raw, manifest, sanity)
        if reason is not None:
            return reason
    if verdict is not None and verdict.warnings:
        for finding in findings:
            p = finding.probability
            # Only a saturated positive is suspect: a confident "absent" on an input without
            # Body Part Examined is the common normal study, not a reason to withhold it.
            if finding.present and p >= sanity.saturated_probability:
                doubts = "; ".join(w.reason for w in verdict.warnings)
                return (
                    f"{finding.name}: probability {p:.6f} is saturated on an atypical input "
                    f"({doubts})"
                )
    return None


def _map_problem(
    name: str, channel: int, raw: np.ndarray, manifest: Manifest, sanity: OutputSanity
) -> str | None:
    activation = manifest.postprocessing.activation
    probabilities = activate(raw, activation)
    if channel >= probabilities.shape[0]:
        return None
    prob = probabilities[channel]
    saturated = float((prob >= sanity.saturated_probability).mean())
    if saturated > sanity.saturated_map_fraction:
        return (
            f"{name}: probability saturated (>= {sanity.saturated_probability:g}) over "
            f"{saturated:.0%} of the volume"
        )
    if sanity.max_positive_fraction is not None:
        positive = float((prob > manifest.postprocessing.voxel_threshold).mean())
        if positive > sanity.max_positive_fraction:
            return (
                f"{name}: finding covers {positive:.0%} of the volume, plausible "
                f"<= {sanity.max_positive_fraction:.0%}"
            )
    return None
