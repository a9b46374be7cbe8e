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
