"""Import a MONAI model-zoo bundle, as published, as a statlane package.

A bundle's ``configs/inference.json`` is a program for MONAI's ConfigParser. The import reads
it as data (:mod:`models.bundle_config`, :mod:`models.bundle_steps`): references and macros
are followed as lookups, the preprocessing becomes allow-listed manifest steps, the
``SlidingWindowInferer`` the runtime's chunking, the postprocessing the manifest's
activation/discretisation, ``channel_def`` the findings with reviewed codes. Only
``network_def`` is evaluated, with MONAI's own parser and on the operator's command, to load
``models/model.pt`` and export TorchScript and ONNX with checked parity
(:mod:`models.bundle_network`); ``--no-eval`` takes the shipped ``models/model.ts`` instead.

The package is written to a staging folder and renamed into place only when it is whole and
valid: a failed import leaves nothing in the repository.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from models.bundle_config import (
    BundleImportError,
    Tensors,
    chunking_from,
    domain_from,
    expand_macros,
    find_expressions,
    geometry_of,
    inferer_notes,
    slug,
    tensors_from,
)
from models.bundle_network import (
    ArgumentEvaluator,
    build_network,
    export_and_check,
    load_state,
    load_torchscript,
    network_expressions,
    reference_outputs,
    verify_large_files,
)
from models.bundle_steps import (
    MappedStep,
    PostprocessingMap,
    PreprocessingMap,
    UnmappedStep,
    map_postprocessing,
    map_preprocessing,
)
from models.manifest import (
    BackendKind,
    Chunking,
    ExportCheck,
    ImportRecord,
    Manifest,
    ManifestError,
    ModelCard,
    OutputSpec,
    Postprocessing,
    RuntimeHints,
    Task,
    Weights,
    WeightsFile,
    dump_manifest,
    sha256_of,
)
from models.registry import Registry

# Steps after which the volume has the model's input size.
_SIZE_FIXING = frozenset({"Resize", "ResizeWithPadOrCrop"})
_SEED = 20261207

__all__ = ["BundleImportError", "ImportReport", "MappedStep", "UnmappedStep", "import_bundle"]


@dataclass
class ImportReport:
    """What :func:`import_bundle` did.

    Attributes:
        folder: The package version folder written.
        ident: ``name@version`` of the new package.
        mapped: Converted preprocessing steps and postprocessing settings, in order.
        skipped: Transforms statlane does itself (loading, channel-first, saving, ...).
        unmapped: Transforms left out, with reasons: review them before enabling the model.
        expressions: ``(where, text)`` of every ``$``/``@``/``%`` value found in the configs.
        evaluated: ``(where, text)`` of the expressions MONAI's ConfigParser evaluated to build
            ``network_def`` (empty with ``--no-eval``).
        checks: Checksums verified and export parity, one line each.
        placeholders: Labels without a reviewed code (private ``99STATLANE`` codes).
        notes: Defaults chosen where the bundle said nothing.
    """

    folder: Path
    ident: str
    mapped: list[MappedStep] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    unmapped: list[UnmappedStep] = field(default_factory=list)
    expressions: list[tuple[str, str]] = field(default_factory=list)
    evaluated: list[tuple[str, str]] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    placeholders: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """Human-readable report, one item per line."""
        evaluated = {where for where, _ in self.evaluated}
        out = [f"imported {self.ident} -> {self.folder}"]
        out += [f"  mapped   [{m.index}] {m.target} -> {m.step}" for m in self.mapped]
        out += [f"  skipped  {target} (done by statlane itself)" for target in self.skipped]
        out += [f"  UNMAPPED [{u.index}] {u.target}: {u.reason}" for u in self.unmapped]
        out += [f"  EVALUATED at {where}: {text}" for where, text in self.evaluated]
        out += [
            f"  expression at {where} NOT evaluated: {text}"
            for where, text in self.expressions
            if where not in evaluated
        ]
        out += [f"  check: {line}" for line in self.checks]
        if self.placeholders:
            out.append(
                f"  PLACEHOLDER codes (99STATLANE) for {len(self.placeholders)} labels: "
                + ", ".join(self.placeholders)
            )
        out += [f"  note: {note}" for note in self.notes]
        return out


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise BundleImportError(f"{path}: missing")
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


def _text(meta: dict[str, Any], key: str, default: str = "") -> str:
    value = meta.get(key, default)
    if isinstance(value, list):
        return "; ".join(str(v) for v in value)
    return value if isinstance(value, str) else json.dumps(value)


def _card(meta: dict[str, Any], bundle: Path, placeholders: int) -> ModelCard:
    metrics = meta.get("eval_metrics")
    numbers = {
        str(k): float(v)
        for k, v in (metrics.items() if isinstance(metrics, dict) else [])
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    references = meta.get("references")
    codes = (
        f"{placeholders} labels carry placeholder codes (99STATLANE) until reviewed"
        if placeholders
        else "label codes from the reviewed SNOMED CT table"
    )
    return ModelCard(
        intended_use=_text(meta, "intended_use") or _text(meta, "description") or "not stated",
        training_data=_text(meta, "data_source", "not stated by the bundle"),
        metrics=numbers,
        limitations=f"imported from MONAI bundle {_text(meta, 'name') or bundle.name} version "
        f"{_text(meta, 'version', '?')}; {codes}",
        not_for_clinical_use=True,
        authors=_text(meta, "authors"),
        source_version=_text(meta, "version"),
        references=[str(r) for r in references] if isinstance(references, list) else [],
    )


@dataclass
class _Network:
    """The network to export and where its weights came from."""

    module: Any
    weights_from: str
    evaluated: bool
    shipped_torchscript: Path | None


def _network(
    bundle: Path,
    config: dict[str, Any],
    evaluate: bool,
    report: ImportReport,
    say: Callable[[str], None],
) -> _Network | None:
    """The network from ``model.pt`` + ``network_def`` (evaluated) or ``model.ts``; None
    when the bundle ships only ``model.onnx`` (copied as it is)."""
    models = bundle / "models"
    pt, ts = models / "model.pt", models / "model.ts"
    verify_large_files(bundle, report.checks)
    if evaluate and pt.is_file():
        report.evaluated = network_expressions(config)
        say("building network_def with MONAI's ConfigParser (the import's one evaluation):")
        for where, text in report.evaluated:
            say(f"  evaluating {where}: {text}")
        network = build_network(config, bundle)
        load_state(network, pt)
        say(f"loaded {pt.relative_to(bundle)} into network_def")
        return _Network(network, "models/model.pt", True, None)
    if ts.is_file():
        say(f"loading {ts.relative_to(bundle)} (TorchScript; nothing evaluated)")
        return _Network(load_torchscript(ts), "models/model.ts", False, ts)
    if (models / "model.onnx").is_file():
        return None
    listing = next(iter(sorted(bundle.glob("large_files.*"))), None)
    listed = f"; {listing.name} lists where to download them" if listing else ""
    if evaluate:
        raise BundleImportError(f"{models}: no model.pt, model.ts or model.onnx{listed}")
    raise BundleImportError(f"{models}: --no-eval needs model.ts (or model.onnx){listed}")


def _dense_outputs(
    tensors: Tensors, shapes: list[tuple[int, ...]], chunked: bool
) -> list[OutputSpec]:
    """Output specs with the shapes the network really gives on the example input."""
    if len(shapes) != len(tensors.outputs):
        raise BundleImportError(
            f"the network gives {len(shapes)} outputs, network_data_format names "
            f"{len(tensors.outputs)}"
        )
    outputs = []
    for spec, shape in zip(tensors.outputs, shapes, strict=True):
        actual = [-1, *[int(n) for n in shape[1:]]]
        if chunked and actual[2:] != tensors.input.shape[2:]:
            raise BundleImportError(
                f"output {spec.name!r} has shape {shape} on a {tensors.input.shape[2:]} patch; "
                "sliding windows need a per-voxel output of the patch's size"
            )
        outputs.append(spec.model_copy(update={"shape": actual}))
    for finding in tensors.findings:
        out = next(o for o in outputs if o.name == finding.output)
        if finding.channel >= out.shape[1]:
            raise BundleImportError(
                f"label {finding.name!r} is channel {finding.channel}, but output "
                f"{out.name!r} has {out.shape[1]} channels"
            )
    return outputs


def import_bundle(
    bundle: Path,
    out_root: Path,
    *,
    name: str | None = None,
    version: int | None = None,
    input_shape: list[int] | None = None,
    max_batch: int | None = None,
    evaluate: bool = True,
    allow_unmapped: bool = False,
    dry_run: bool = False,
    say: Callable[[str], None] | None = None,
) -> ImportReport:
    """Turn the MONAI bundle in ``bundle`` into package ``out_root/<name>/<version>``.

    Args:
        bundle: Bundle folder as published: ``configs/metadata.json``,
            ``configs/inference.json|yaml``, ``models/model.pt`` and/or ``models/model.ts``
            (or ``models/model.onnx``), ``large_files.yml``.
        out_root: Model repository to write into.
        name: Model name; default from the metadata ``name`` (or the folder name).
        version: Version number; default one above the highest already there.
        input_shape: Spatial input size in voxels, needed when the bundle's is symbolic
            (``"16*n"``) and neither the inferer's ``roi_size`` nor an ONNX graph fixes it.
        max_batch: Largest batch the model may be given (default: the inferer's
            ``sw_batch_size``, else 1).
        evaluate: Build ``network_def`` with MONAI's ConfigParser to load ``model.pt``;
            False (``--no-eval``) evaluates nothing and needs ``model.ts``.
        allow_unmapped: Import although transforms that change the input or the result have
            no statlane equivalent (they are listed in the report).
        dry_run: Map the configs and report, but build no network and write nothing.
        say: Progress lines (every expression evaluated is printed before it runs).

    Raises:
        BundleImportError: One clear reason: a missing file, a checksum mismatch, an
            unsupported transform, a ``network_def`` that fails to instantiate, weights that
            do not fit, an export that fails parity, or a shape that cannot work.
    """
    say = say or (lambda line: None)
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise BundleImportError(f"{bundle}: not a folder")
    meta = _read_config(bundle / "configs" / "metadata.json")
    config = expand_macros(_read_config(_inference_config(bundle)), bundle)
    name = slug(name or str(meta.get("name") or bundle.name))
    version = version or _next_version(out_root, name)
    final = out_root / name / str(version)
    if final.exists():
        raise BundleImportError(f"{final}: already exists; pass another --version")
    report = ImportReport(folder=final, ident=f"{name}@{version}")
    report.expressions = find_expressions(config)
    tensors = tensors_from(meta, config, bundle, input_shape, report.notes)
    evaluator = ArgumentEvaluator(config, bundle, say) if evaluate else None
    pre = map_preprocessing(config, tensors.input_key, evaluator)
    post = map_postprocessing(config, report.notes)
    _record_mapping(report, pre, post, config, tensors)
    _refuse_unusable_mapping(bundle, pre, report.unmapped, allow_unmapped)
    chunking = _usable_chunking(config, tensors, report.notes)
    if dry_run:
        report.notes.append("dry run: no network built, nothing written")
        return report
    network = _network(bundle, config, evaluate, report, say)
    if evaluator is not None:
        report.evaluated = evaluator.evaluated + report.evaluated
    name_folder = out_root / name
    created = not name_folder.exists()
    staging = name_folder / f".import-{version}.tmp"
    try:
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        outputs, weights, backends, exports = _write_weights(
            bundle, staging, tensors, network, chunking is not None, report, say
        )
        manifest = Manifest(
            name=name,
            version=version,
            task=tensors.task,
            description=str(meta.get("description", "")),
            modality=tensors.modality,
            body_part=[],
            input=tensors.input.model_copy(update=geometry_of(pre.steps)),
            outputs=outputs,
            preprocessing=pre.steps,
            postprocessing=Postprocessing(**post.fields),
            findings=tensors.findings,
            weights=weights,
            runtime=RuntimeHints(
                max_batch=max_batch or (chunking or {}).get("sw_batch_size", 1),
                backends=backends,
                chunking=Chunking(**chunking) if chunking else None,
            ),
            card=_card(meta, bundle, len(report.placeholders)),
            domain=domain_from(meta, pre.steps, report.notes),
            manufacturer=_text(meta, "authors") or f"authors of MONAI bundle {bundle.name}",
            imported=ImportRecord(
                source=str(meta.get("name") or bundle.name),
                source_version=_text(meta, "version"),
                weights_from=network.weights_from if network else "models/model.onnx",
                network_evaluated=bool(network and network.evaluated),
                exports=exports,
            ),
        )
        dump_manifest(manifest, staging / "manifest.yaml")
        staging.rename(final)
    except BaseException as error:  # any exit, even an interrupt, removes the half-built package
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            shutil.rmtree(name_folder, ignore_errors=True)
        if isinstance(error, ValidationError | ManifestError | OSError):
            raise BundleImportError(f"{bundle}: cannot build the package ({error})") from error
        raise
    _check_imported(Registry(out_root), report.ident, bundle, final, name_folder, created)
    if not chunking and not {s["transform"] for s in pre.steps} & _SIZE_FIXING:
        report.notes.append(
            f"no step fixes the spatial size to the model input {tensors.spatial} and no "
            "SlidingWindowInferer roi_size: add Resize or ResizeWithPadOrCrop before enabling"
        )
    return report


def _record_mapping(
    report: ImportReport,
    pre: PreprocessingMap,
    post: PostprocessingMap,
    config: dict[str, Any],
    tensors: Tensors,
) -> None:
    """Copy what the mapping did into ``report``: steps mapped, skipped, left out, notes."""
    report.mapped = pre.mapped + post.mapped
    report.skipped = pre.skipped + post.skipped
    report.unmapped = pre.unmapped + post.unmapped
    report.notes += inferer_notes(config)
    report.placeholders = [f.name for f in tensors.findings if f.concept.scheme == "99STATLANE"]


def _refuse_unusable_mapping(
    bundle: Path, pre: PreprocessingMap, unmapped: list[UnmappedStep], allow_unmapped: bool
) -> None:
    """Refuse a bundle with no mapped preprocessing step, or unsupported transforms not allowed.

    Raises:
        BundleImportError: Nothing maps, or a transform that changes what the model sees or
            gives has no equivalent and ``allow_unmapped`` is False.
    """
    if not pre.steps:
        reasons = "; ".join(f"{u.target}: {u.reason}" for u in pre.unmapped) or "no transforms"
        raise BundleImportError(
            f"{bundle}: no preprocessing step maps to the allow-list ({reasons}); "
            "a package needs at least one"
        )
    blocking = [u for u in unmapped if u.unsupported]
    if blocking and not allow_unmapped:
        listed = "; ".join(f"[{u.index}] {u.target}: {u.reason}" for u in blocking)
        raise BundleImportError(
            f"{bundle}: unsupported transform(s) would change what the model sees or gives: "
            f"{listed}; add an equivalent step by hand, or pass --allow-unmapped to import "
            "without them"
        )


def _usable_chunking(
    config: dict[str, Any], tensors: Tensors, notes: list[str]
) -> dict[str, Any] | None:
    """The inferer's sliding-window settings, or None when an output is not per-voxel."""
    chunking = chunking_from(config, tensors.spatial)
    sparse = [o.name for o in tensors.outputs if len(o.shape) != len(tensors.input.shape)]
    if chunking and sparse:  # windows of a classifier cannot be stitched back together
        notes.append(
            f"SlidingWindowInferer not used: output {sparse[0]!r} is not per-voxel, so "
            "the model runs on whole inputs"
        )
        return None
    return chunking


def _check_imported(
    registry: Registry, ident: str, bundle: Path, final: Path, name_folder: Path, created: bool
) -> None:
    """Validate the written package; remove it (and a new name folder) when it is invalid.

    Raises:
        BundleImportError: The registry finds a problem in the package.
    """
    problems = [r.problem for r in registry.validate(ident) if r.problem]
    if problems:
        shutil.rmtree(final)
        if created:
            shutil.rmtree(name_folder, ignore_errors=True)
        raise BundleImportError(f"{bundle}: imported package is invalid: {problems[0]}")


def _write_weights(
    bundle: Path,
    staging: Path,
    tensors: Tensors,
    network: _Network | None,
    chunked: bool,
    report: ImportReport,
    say: Callable[[str], None],
) -> tuple[list[OutputSpec], Weights, list[BackendKind], list[ExportCheck]]:
    """Export (or copy) the weights into ``staging``; outputs, weights, backends, parity."""
    if network is None:  # a shipped ONNX graph, as it is: its names and dims are the truth
        shutil.copyfile(bundle / "models" / "model.onnx", staging / "model.onnx")
        report.notes.append("only model.onnx shipped: copied as it is, no parity check")
        file = WeightsFile(path="model.onnx", sha256=sha256_of(staging / "model.onnx"))
        return tensors.outputs, Weights(onnx=file), [BackendKind.ONNXRUNTIME], []
    import torch

    generator = torch.Generator().manual_seed(_SEED)
    example = torch.rand((2, *tensors.input.shape[1:]), generator=generator)
    shapes = [tuple(o.shape) for o in reference_outputs(network.module, example)]
    outputs = _dense_outputs(tensors, shapes, chunked)
    say(f"exporting TorchScript and ONNX; checking both on a random input {tuple(example.shape)}")
    exports = export_and_check(
        network.module,
        example,
        staging,
        input_name=tensors.input.name,
        output_names=[o.name for o in outputs],
        shipped_torchscript=network.shipped_torchscript,
    )
    for check in exports:
        report.checks.append(
            f"{check.format} parity: max |difference| {check.max_abs_diff:.3g} "
            f"(tolerance {check.tolerance:.3g}) on {check.input_shape}"
        )
    weights = Weights(
        onnx=WeightsFile(path="model.onnx", sha256=sha256_of(staging / "model.onnx")),
        torchscript=WeightsFile(path="model.ts", sha256=sha256_of(staging / "model.ts")),
    )
    if tensors.task is not Task.SEGMENTATION and chunked:
        report.notes.append("chunking a non-segmentation model: check its outputs are per voxel")
    return outputs, weights, [BackendKind.ONNXRUNTIME, BackendKind.TORCHSCRIPT], exports
