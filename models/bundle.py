"""Import a MONAI bundle as a statlane package, reading its configs as plain data only.

A bundle's ``configs/inference.json`` is a program for MONAI's ConfigParser: ``$`` strings are
Python expressions, ``@`` strings references, ``%`` strings macros. None of them is evaluated
here (no ``eval``, no ConfigParser); every one found is reported. Only a pure ``@id`` reference
is followed, as a lookup in the same data. Preprocessing transforms whose ``_target_`` maps to
the allow-list of :mod:`preprocessing.pipeline_spec` are converted (dictionary-key arguments
dropped); the rest is reported with a reason.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from models.bundle_config import (
    BundleImportError,
    MappedStep,
    UnmappedStep,
    activation_of,
    chunking_from,
    find_expressions,
    geometry_of,
    map_preprocessing,
    slug,
    tensors_from,
)
from models.manifest import (
    BackendKind,
    Chunking,
    Manifest,
    ManifestError,
    ModelCard,
    Postprocessing,
    RuntimeHints,
    Weights,
    WeightsFile,
    dump_manifest,
    sha256_of,
)
from models.registry import Registry

# Steps after which the volume has the model's input size.
_SIZE_FIXING = frozenset({"Resize", "ResizeWithPadOrCrop"})

__all__ = ["BundleImportError", "ImportReport", "MappedStep", "UnmappedStep", "import_bundle"]


@dataclass
class ImportReport:
    """What :func:`import_bundle` did.

    Attributes:
        folder: The package version folder written.
        ident: ``name@version`` of the new package.
        mapped: Converted preprocessing steps, in order.
        skipped: Expected transforms our pipeline does itself (loading, channel-first, ...).
        unmapped: Transforms left out, with reasons: review them before enabling the model.
        expressions: ``(where, text)`` of every ``$``/``@``/``%`` value found; none evaluated.
        notes: Defaults chosen where the bundle said nothing.
    """

    folder: Path
    ident: str
    mapped: list[MappedStep] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    unmapped: list[UnmappedStep] = field(default_factory=list)
    expressions: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """Human-readable report, one item per line."""
        out = [f"imported {self.ident} -> {self.folder}"]
        out += [f"  mapped   [{m.index}] {m.target} -> {m.step}" for m in self.mapped]
        out += [f"  skipped  {target} (done by statlane's loader)" for target in self.skipped]
        out += [f"  UNMAPPED [{u.index}] {u.target}: {u.reason}" for u in self.unmapped]
        out += [
            f"  expression at {where} NOT evaluated: {text}" for where, text in self.expressions
        ]
        out += [f"  note: {note}" for note in self.notes]
        return out


def _read_config(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise BundleImportError(f"{path}: cannot read ({error})") from error
    if not isinstance(data, dict):
        raise BundleImportError(f"{path}: must be a mapping")
    return data


def _inference_config(bundle: Path) -> Path:
    for suffix in (".json", ".yaml", ".yml"):
        path = bundle / "configs" / f"inference{suffix}"
        if path.is_file():
            return path
    raise BundleImportError(f"{bundle}/configs: no inference.json or inference.yaml")


def _next_version(root: Path, name: str) -> int:
    numbers = [int(d.name) for d in (root / name).glob("*") if d.is_dir() and d.name.isdigit()]
    return max(numbers, default=0) + 1


def _card(meta: dict[str, Any], bundle: Path) -> ModelCard:
    def text(key: str, default: str = "") -> str:
        value = meta.get(key, default)
        return value if isinstance(value, str) else json.dumps(value)

    intended = text("intended_use") or text("description") or "imported MONAI bundle"
    return ModelCard(
        intended_use=intended,
        training_data=text("data_source", "not stated by the bundle"),
        limitations=f"imported from MONAI bundle {bundle.name} version {text('version', '?')}; "
        "finding codes are placeholders (99STATLANE) until reviewed",
        not_for_clinical_use=True,
    )


def _copy_weights(bundle: Path, folder: Path) -> tuple[Weights, list[BackendKind]]:
    sources = {
        "onnx": bundle / "models" / "model.onnx",
        "torchscript": bundle / "models" / "model.ts",
    }
    files: dict[str, WeightsFile] = {}
    for kind, source in sources.items():
        if source.is_file():
            shutil.copyfile(source, folder / source.name)
            files[kind] = WeightsFile(path=source.name, sha256=sha256_of(folder / source.name))
    if not files:
        raise BundleImportError(f"{bundle}/models: no model.onnx or model.ts")
    backends = [BackendKind.ONNXRUNTIME] if "onnx" in files else []
    backends += [BackendKind.TORCHSCRIPT] if "torchscript" in files else []
    return Weights(**files), backends


def import_bundle(
    bundle: Path,
    out_root: Path,
    *,
    name: str | None = None,
    version: int | None = None,
    input_shape: list[int] | None = None,
    max_batch: int = 1,
) -> ImportReport:
    """Turn the MONAI bundle in ``bundle`` into package ``out_root/<name>/<version>``.

    Args:
        bundle: Bundle folder (``configs/metadata.json``, ``configs/inference.json|yaml``,
            ``models/model.ts`` and/or ``models/model.onnx``).
        out_root: Model repository to write into.
        name: Model name; default from the metadata ``name`` (or the folder name).
        version: Version number; default one above the highest already there.
        input_shape: Spatial input size in voxels, needed when the bundle's is symbolic
            (``"16*n"``) and neither the ONNX graph nor the inferer's ``roi_size`` fixes it.
        max_batch: Largest batch the model may be given.

    Raises:
        BundleImportError: Missing files, symbolic shapes with no concrete size, nothing of
            the preprocessing maps to the allow-list, or the written package fails validation.
    """
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise BundleImportError(f"{bundle}: not a folder")
    meta = _read_config(bundle / "configs" / "metadata.json")
    config = _read_config(_inference_config(bundle))
    name = slug(name or str(meta.get("name") or bundle.name))
    version = version or _next_version(out_root, name)
    final = out_root / name / str(version)
    if final.exists():
        raise BundleImportError(f"{final}: already exists; pass another --version")
    report = ImportReport(folder=final, ident=f"{name}@{version}")
    report.expressions = find_expressions(config)
    tensors = tensors_from(meta, config, bundle, input_shape, report.notes)
    converted = map_preprocessing(config, tensors.input_key)
    report.mapped, report.skipped = converted.mapped, converted.skipped
    report.unmapped = converted.unmapped
    steps = converted.steps
    if not steps:
        reasons = "; ".join(f"{u.target}: {u.reason}" for u in report.unmapped) or "no transforms"
        raise BundleImportError(
            f"{bundle}: no preprocessing step maps to the allow-list ({reasons}); "
            "a package needs at least one"
        )
    out_root.mkdir(parents=True, exist_ok=True)
    staging = out_root / name / f".import-{version}.tmp"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        weights, backends = _copy_weights(bundle, staging)
        chunking = chunking_from(config, tensors.spatial)
        sparse = [o.name for o in tensors.outputs if len(o.shape) != len(tensors.input.shape)]
        if chunking and sparse:  # windows of a classifier cannot be stitched back together
            report.notes.append(
                f"SlidingWindowInferer not used: output {sparse[0]!r} is not per-voxel, so "
                "the model runs on whole inputs"
            )
            chunking = None
        manifest = Manifest(
            name=name,
            version=version,
            task=tensors.task,
            description=str(meta.get("description", "")),
            modality=tensors.modality,
            body_part=[],
            input=tensors.input.model_copy(update=geometry_of(steps)),
            outputs=tensors.outputs,
            preprocessing=steps,
            postprocessing=Postprocessing(activation=activation_of(config, report.notes)),
            findings=tensors.findings,
            weights=weights,
            runtime=RuntimeHints(
                max_batch=max_batch,
                backends=backends,
                chunking=Chunking(**chunking) if chunking else None,
            ),
            card=_card(meta, bundle),
        )
        dump_manifest(manifest, staging / "manifest.yaml")
        staging.rename(final)
    except (ValidationError, ManifestError, OSError) as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise BundleImportError(f"{bundle}: cannot build the manifest ({error})") from error
    results = Registry(out_root).validate(report.ident)
    problems = [r.problem for r in results if r.problem]
    if problems:
        shutil.rmtree(final)
        raise BundleImportError(f"{bundle}: imported package is invalid: {problems[0]}")
    if not chunking and not {s["transform"] for s in steps} & _SIZE_FIXING:
        report.notes.append(
            f"no step fixes the spatial size to the model input {tensors.spatial} and no "
            "SlidingWindowInferer roi_size: add Resize or ResizeWithPadOrCrop before enabling"
        )
    return report
