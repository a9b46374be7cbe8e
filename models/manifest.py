"""The model package manifest: declarative data, validated eagerly, never executed.

A package is one folder per model version (``<name>/<version>/manifest.yaml`` beside its weight
files). Unknown fields are refused everywhere (``extra="forbid"``); the preprocessing list is
checked against the allow-list of :mod:`preprocessing.pipeline_spec`; weight files carry a
sha256 that is verified before any backend loads them (:func:`verify_weights`).
"""

from __future__ import annotations

import hashlib
import re
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from preprocessing.errors import PipelineSpecError
from preprocessing.pipeline import Pipeline

MANIFEST_FILE = "manifest.yaml"
_NAME = re.compile(r"^[a-z][a-z0-9-]{1,62}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ManifestError(ValueError):
    """A manifest or package is invalid; the message says which file and which field."""


class WeightsMismatchError(ManifestError):
    """A weight file's sha256 differs from the manifest: the package was altered; refused."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Task(StrEnum):
    """What the model does."""

    CLASSIFICATION = "classification"
    SEGMENTATION = "segmentation"
    DETECTION = "detection"


class BackendKind(StrEnum):
    """Runtimes a package can run on."""

    ONNXRUNTIME = "onnxruntime"
    TORCHSCRIPT = "torchscript"
    TRITON = "triton"


class VersionState(StrEnum):
    """Deployment state of one model version."""

    ACTIVE = "active"
    SHADOW = "shadow"
    RETIRED = "retired"


class TensorSpec(_Strict):
    """The model's input tensor.

    ``shape`` is channel-first with a leading dynamic batch axis ``-1``, e.g.
    ``[-1, 1, 96, 96, 32]`` (batch, channel, i, j, k) for a 3D model.
    """

    name: str
    dtype: Literal["float32", "float16"] = "float32"
    shape: list[int]
    spacing_mm: list[float] | None = Field(default=None, description="voxel size the model expects")
    orientation: str | None = Field(default=None, description="axis codes, e.g. RAS")

    @field_validator("shape")
    @classmethod
    def _dynamic_batch(cls, shape: list[int]) -> list[int]:
        if len(shape) < 3 or shape[0] != -1:
            raise ValueError("shape needs a leading dynamic batch axis -1 and >= 2 more axes")
        if any(n < 1 for n in shape[1:]):
            raise ValueError("only the batch axis may be dynamic (-1); other axes are > 0")
        return shape


class OutputSpec(_Strict):
    """One output tensor and what its values mean."""

    name: str
    dtype: Literal["float32", "float16"] = "float32"
    shape: list[int] = Field(description="leading -1 batch axis, like the input")
    meaning: str

    @field_validator("shape")
    @classmethod
    def _dynamic_batch(cls, shape: list[int]) -> list[int]:
        if len(shape) < 2 or shape[0] != -1 or any(n < 1 for n in shape[1:]):
            raise ValueError("shape needs a leading dynamic batch axis -1, other axes > 0")
        return shape


class CodedConcept(_Strict):
    """A coded finding (SNOMED CT ``SCT``, DICOM ``DCM``, ...), as used in SR and HL7."""

    value: str
    scheme: Literal["SCT", "DCM", "LN", "RADLEX", "99STATLANE"]
    meaning: str


class FindingSpec(_Strict):
    """A finding the model reports and how it is derived from the outputs.

    ``category`` is the kind of thing the finding is, for SEG segments (DICOM CID 7150):
    ``None`` means a morphologically abnormal structure (a lesion); an organ label of a
    segmentation model carries ``SCT 91723000`` "Anatomical Structure". ``laterality`` is the
    side of a paired organ whose code names none (``SCT 7771000`` Left, ``24028007`` Right):
    left and right kidney share one concept and differ by it.
    """

    name: str
    concept: CodedConcept
    category: CodedConcept | None = None
    laterality: CodedConcept | None = None
    output: str = Field(description="name of the output it is derived from")
    channel: int = Field(default=1, ge=0, description="output channel of the finding")
    derive: list[Literal["presence", "probability", "bounding_box", "volume_ml", "area_mm2"]]
    critical: bool = Field(default=False, description="a positive moves the study to the top")


class Postprocessing(_Strict):
    """From raw outputs to findings.

    Attributes:
        activation: Applied to the finding's output channel(s).
        discrete: How a map becomes labels (MONAI ``AsDiscrete``): ``threshold`` puts a voxel
            in every finding whose probability exceeds ``voxel_threshold``; ``argmax`` gives
            each voxel the one channel with the highest score (multi-label segmentation), so
            labels never overlap.
        largest_component: Keep only the largest connected component of each label (MONAI
            ``KeepLargestConnectedComponent``).
        voxel_threshold: Probability above which a voxel/pixel belongs to the finding
            (segmentation, detection heat maps) with ``discrete: threshold``.
        presence_threshold: Study-level probability above which the finding is present.
        connected_components: Split the thresholded mask into components.
        min_volume_ml: Components smaller than this are dropped (3D), millilitres.
        min_area_mm2: Components smaller than this are dropped (2D), square millimetres.
    """

    activation: Literal["sigmoid", "softmax", "none"]
    discrete: Literal["threshold", "argmax"] = "threshold"
    largest_component: bool = False
    voxel_threshold: float = Field(default=0.5, gt=0.0, lt=1.0)
    presence_threshold: float = Field(default=0.5, gt=0.0, lt=1.0)
    connected_components: bool = False
    min_volume_ml: float = Field(default=0.0, ge=0.0)
    min_area_mm2: float = Field(default=0.0, ge=0.0)


class WeightsFile(_Strict):
    """A weight file in the version folder and its sha256 (hex)."""

    path: str
    sha256: str

    @field_validator("path")
    @classmethod
    def _inside_package(cls, path: str) -> str:
        parts = PurePosixPath(path).parts
        if not parts or PurePosixPath(path).is_absolute() or ".." in parts:
            raise ValueError("weights path must be relative and stay inside the package")
        return path

    @field_validator("sha256")
    @classmethod
    def _hex(cls, digest: str) -> str:
        if not _SHA256.match(digest):
            raise ValueError("sha256 must be 64 lower-case hex digits")
        return digest


class Weights(_Strict):
    """Serialized forms of the network; at least one."""

    onnx: WeightsFile | None = None
    torchscript: WeightsFile | None = None

    @model_validator(mode="after")
    def _at_least_one(self) -> Weights:
        if self.onnx is None and self.torchscript is None:
            raise ValueError("at least one of onnx, torchscript is required")
        return self


class Chunking(_Strict):
    """Sliding-window inference: the runtime splits the model input into patches (chunks).

    ``input.shape`` stays the whole prepared volume; the runtime runs patches of ``roi_size``
    voxels (MONAI ``sliding_window_inference`` windows, see :mod:`models.chunking`),
    so the graph needs dynamic spatial axes (or fixed ones equal to both). Every output must be
    dense (same spatial size as the input). With chunking, latency profiles are per patch
    batch: ``batch_size`` b is b patches of ``(C, *roi_size)``.

    Attributes:
        roi_size: Patch size per spatial axis, voxels.
        overlap: Overlap of neighbouring windows, fraction of ``roi_size``.
        mode: Blending of overlapping windows (``gaussian``: MONAI's recommendation).
        sigma_scale: Gaussian sigma as a fraction of ``roi_size``.
        sw_batch_size: Patches per backend call where no scheduler batches them (``statlane
            infer``, ``models evaluate``); the engine batches up to ``runtime.max_batch``.
    """

    roi_size: list[int]
    overlap: float = Field(default=0.25, ge=0.0, lt=1.0)
    mode: Literal["gaussian", "constant"] = "gaussian"
    sigma_scale: float = Field(default=0.125, gt=0.0)
    sw_batch_size: int = Field(default=1, ge=1, le=256)

    @field_validator("roi_size")
    @classmethod
    def _positive(cls, roi_size: list[int]) -> list[int]:
        if not roi_size or any(n < 1 for n in roi_size):
            raise ValueError("roi_size needs a positive size (voxels) per spatial axis")
        return roi_size


class RuntimeHints(_Strict):
    """What the scheduler and backends need to know."""

    max_batch: int = Field(ge=1, le=256)
    chunking: Chunking | None = None
    backends: list[BackendKind]


class LatencyPoint(_Strict):
    """Latency of one batch size, seconds."""

    batch_size: int = Field(ge=1)
    median_s: float = Field(gt=0.0)
    p95_s: float = Field(gt=0.0)
    runs: int = Field(ge=1)


class LatencyProfile(_Strict):
    """Measured by ``statlane models profile``: latency per batch size on one backend/device."""

    backend: BackendKind
    device: str
    machine: str
    measured_at: str
    warmup: int = Field(ge=0)
    points: list[LatencyPoint]


class ModelCard(_Strict):
    """What a hospital reads before enabling the model.

    ``authors``, ``source_version`` and ``references`` say who made the model and which
    release of it this is (for an imported MONAI bundle: its metadata's ``authors``,
    ``version`` and ``references``).
    """

    intended_use: str
    training_data: str
    metrics: dict[str, float] = Field(default_factory=dict)
    evaluation_data: str = ""
    limitations: str = ""
    not_for_clinical_use: bool = True
    authors: str = ""
    source_version: str = ""
    references: list[str] = Field(default_factory=list)


class ExportCheck(_Strict):
    """One exported form checked against the original network on the same random input.

    Attributes:
        format: ``onnx`` or ``torchscript``.
        max_abs_diff: Largest absolute difference of any output element.
        tolerance: The largest difference the import accepted.
        input_shape: The random input's shape, ``(N, C, *spatial)``.
    """

    format: Literal["onnx", "torchscript"]
    max_abs_diff: float = Field(ge=0.0)
    tolerance: float = Field(gt=0.0)
    input_shape: list[int]


class ImportRecord(_Strict):
    """Where an imported package came from and how its weights were produced.

    Attributes:
        kind: What was imported (``monai-bundle``).
        source: The bundle's name as published.
        source_version: The bundle's version.
        weights_from: The bundle file the exported weights come from (``models/model.pt``...).
        network_evaluated: ``network_def`` was built with MONAI's ConfigParser (operator's
            choice at import; the service never evaluates anything).
        exports: Parity of each exported form with the original network.
    """

    kind: Literal["monai-bundle"] = "monai-bundle"
    source: str
    source_version: str = ""
    weights_from: str
    network_evaluated: bool
    exports: list[ExportCheck] = Field(default_factory=list)


class ValueRange(_Strict):
    """A closed interval ``[min, max]``; either bound may be left out (open on that side).

    The unit is the one the field holding the range names (mm, voxels, HU, slices...).
    """

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> ValueRange:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is greater than max {self.max}")
        return self

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies inside the range (bounds included, with a relative tolerance
        of 1e-6 so a slice step computed from positions, 5.0000001 mm, meets a 5 mm bound)."""
        if self.min is not None and value < self.min - 1e-6 * max(1.0, abs(self.min)):
            return False
        return self.max is None or value <= self.max + 1e-6 * max(1.0, abs(self.max))

    def describe(self) -> str:
        """The range as text, e.g. ``0.4..1.5``, ``>= 100``, ``<= 5``."""
        if self.min is not None and self.max is not None:
            return f"{self.min:g}..{self.max:g}"
        if self.min is not None:
            return f">= {self.min:g}"
        if self.max is not None:
            return f"<= {self.max:g}"
        return "any"


class PercentileBound(_Strict):
    """The ``percentile``-th percentile of the voxel values must lie in ``range``.

    Attributes:
        percentile: Which percentile, 0-100.
        range: Where it must lie, in the intensity unit (HU for CT).
    """

    percentile: float = Field(ge=0.0, le=100.0)
    range: ValueRange


class IntensityDomain(_Strict):
    """What the voxel values of an in-domain series look like (after the modality rescale).

    For CT the values are Hounsfield units: air is near -1000 HU, water 0 HU, bone up to
    ~3000 HU. A series stored as raw detector values (0..4095, air near 0) passes ``values``
    but fails a low percentile bound such as ``2nd percentile in -1100..-700`` (there is air
    in any chest or head CT field of view). All statistics are computed on a strided sample of
    at most ~1e6 voxels.

    Attributes:
        unit: What the values are (``HU`` for CT, ``stored`` for radiographs), for messages.
        ignore_below: Voxels below this value are left out of every statistic (the padding
            outside a CT's reconstruction circle, stored as -2048 or -3024 HU).
        values: Range a voxel value should lie in.
        min_fraction_in_values: At least this fraction (0-1) of the counted voxels lies in
            ``values``.
        percentiles: Bounds on robust percentiles of the counted voxels.
    """

    unit: Literal["HU", "stored"] = "HU"
    ignore_below: float | None = None
    values: ValueRange | None = None
    min_fraction_in_values: float = Field(default=0.95, ge=0.0, le=1.0)
    percentiles: list[PercentileBound] = Field(default_factory=list)


class OutputSanity(_Strict):
    """When an output is too extreme to be believed (see :mod:`models.domain`).

    Attributes:
        saturated_probability: A study-level probability at or above this (or at or below
            ``1 - saturated_probability``) is saturated, 0-1.
        max_positive_fraction: A finding's map may cover at most this fraction (0-1) of the
            model grid's voxels; more is implausible for a lesion (a nodule, a bleed).
        saturated_map_fraction: A map whose voxels are saturated (above
            ``saturated_probability``) over more than this fraction (0-1) of the grid is
            unreliable whatever its finding.
    """

    saturated_probability: float = Field(default=0.9999, gt=0.5, lt=1.0)
    max_positive_fraction: float | None = Field(default=None, gt=0.0, le=1.0)
    saturated_map_fraction: float = Field(default=0.5, gt=0.0, le=1.0)


class Domain(_Strict):
    """What the model was made for: inputs outside it get no inference ("AI not applicable").

    Modality and body part are the manifest's top-level ``modality`` and ``body_part`` lists;
    this block adds the acquisition ranges. Every range is optional and open where a bound is
    left out. Checked by :func:`models.domain.check_domain` before inference.

    Attributes:
        require_body_part: A series without Body Part Examined is out of domain (else it is
            only a warning: many sites leave the tag empty and the routing rules chose it).
        pixel_spacing_mm: In-plane pixel spacing (row and column), mm.
        slice_thickness_mm: Slice Thickness (or, without the tag, the slice step), mm (3D).
        slice_spacing_mm: Distance between neighbouring slice centres, mm (3D).
        field_of_view_mm: In-plane extent (rows x row spacing, columns x column spacing), mm.
        matrix: Rows and Columns, pixels.
        slices: Number of slices (frames) of the series, 1 for a radiograph.
        z_coverage_mm: Extent covered along the slice axis (slices x slice step), mm (3D).
        intensity: What the voxel values look like (HU for CT).
        output: When a result is too extreme to be believed (see :class:`OutputSanity`).
    """

    require_body_part: bool = False
    pixel_spacing_mm: ValueRange | None = None
    slice_thickness_mm: ValueRange | None = None
    slice_spacing_mm: ValueRange | None = None
    field_of_view_mm: ValueRange | None = None
    matrix: ValueRange | None = None
    slices: ValueRange | None = None
    z_coverage_mm: ValueRange | None = None
    intensity: IntensityDomain | None = None
    output: OutputSanity = Field(default_factory=OutputSanity)


class Manifest(_Strict):
    """One version of one model package."""

    schema_version: Literal[1] = 1
    name: str
    version: int = Field(ge=1, description="integer, as in a Triton model repository")
    task: Task
    description: str = ""
    modality: list[str]
    body_part: list[str]
    input: TensorSpec
    outputs: list[OutputSpec]
    preprocessing: list[dict[str, Any]]
    postprocessing: Postprocessing
    findings: list[FindingSpec]
    weights: Weights
    runtime: RuntimeHints
    latency: list[LatencyProfile] = Field(default_factory=list)
    card: ModelCard
    manufacturer: str = "statlane"
    imported: ImportRecord | None = None
    domain: Domain | None = Field(
        default=None, description="what the model was made for; None: not declared"
    )

    @field_validator("name")
    @classmethod
    def _slug(cls, name: str) -> str:
        if not _NAME.match(name):
            raise ValueError("name must be lower-case letters, digits and '-' (2-63 chars)")
        return name

    @field_validator("preprocessing")
    @classmethod
    def _allowed_transforms(cls, steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
        try:
            Pipeline.from_spec(steps)
        except PipelineSpecError as error:
            raise ValueError(error.detail) from error
        return steps

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        names = [o.name for o in self.outputs]
        if len(set(names)) != len(names) or not names:
            raise ValueError("outputs need unique names, at least one")
        for finding in self.findings:
            if finding.output not in names:
                raise ValueError(f"finding {finding.name!r} refers to unknown output")
        chunking = self.runtime.chunking
        if chunking is not None:
            spatial = self.input.shape[2:]
            if len(chunking.roi_size) != len(spatial):
                raise ValueError(
                    f"runtime.chunking.roi_size {chunking.roi_size} needs one size per spatial "
                    f"axis of the input {self.input.shape}"
                )
            for output in self.outputs:
                if output.shape[2:] != spatial:
                    raise ValueError(
                        f"runtime.chunking: output {output.name!r} {output.shape} is not dense "
                        f"over the input's spatial axes {spatial}; sliding windows need it"
                    )
        return self

    def pipeline(self) -> Pipeline:
        """The preprocessing pipeline this model expects."""
        return Pipeline.from_spec(self.preprocessing)

    @property
    def ident(self) -> str:
        """``name@version``, how tasks, audit records and results name the model."""
        return f"{self.name}@{self.version}"


def load_manifest(path: Path) -> Manifest:
    """Read and validate ``manifest.yaml`` (or the version folder holding it).

    Raises:
        ManifestError: Missing file, bad YAML, unknown field or bad value; names file and field.
    """
    if path.is_dir():
        path = path / MANIFEST_FILE
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise ManifestError(f"{path}: cannot read manifest ({error})") from error
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: manifest must be a mapping")
    try:
        return Manifest.model_validate(data)
    except ValidationError as error:
        raise ManifestError(f"{path}: {_first_problem(error)}") from error


def _first_problem(error: ValidationError) -> str:
    problems = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(root)"
        problems.append(f"{where}: {item['msg']}")
    return "; ".join(problems)


def dump_manifest(manifest: Manifest, path: Path) -> None:
    """Write ``manifest`` as YAML (atomically: write, then rename)."""
    if path.is_dir():
        path = path / MANIFEST_FILE
    data = manifest.model_dump(mode="json", exclude_none=True)
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    tmp.replace(path)


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_weights(manifest: Manifest, folder: Path) -> None:
    """Check every weight file named by ``manifest`` exists in ``folder`` with its sha256.

    Raises:
        WeightsMismatchError: A file is missing or its content changed.
    """
    for kind, entry in (
        ("onnx", manifest.weights.onnx),
        ("torchscript", manifest.weights.torchscript),
    ):
        if entry is None:
            continue
        file = folder / entry.path
        if not file.is_file():
            raise WeightsMismatchError(f"{manifest.ident}: {kind} weights {entry.path} missing")
        actual = sha256_of(file)
        if actual != entry.sha256:
            raise WeightsMismatchError(
                f"{manifest.ident}: {kind} weights {entry.path} sha256 {actual[:12]}... does not "
                f"match the manifest ({entry.sha256[:12]}...); the package was altered, refused"
            )
