"""``statlane infer``: run one model package on one study folder, on this machine's CPU.

The study is loaded with the preprocessing loader, the series whose modality the model accepts
is chosen, and the findings are printed as a table or JSON. Output names UIDs, never patient
identity. Exit status: 0 done, 1 the study could not be used, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from models.manifest import Manifest, ManifestError, Task, load_manifest
from models.postprocess import Finding, postprocess_with_labels
from models.registry import Registry, RegistryError
from models.runner import ModelRunner, RunnerError
from preprocessing import PreprocessingError, Volume, load_study, scan_folder
from router.objects import ResultObjectError, build_objects, write_objects
from router.result import Mode
from serving.service.results import build_result, mask_on_source, source_instance, study_identity


class NoMatchingSeriesError(LookupError):
    """The study has no series of a modality the model accepts."""


@dataclass(frozen=True)
class InferenceResult:
    """Findings of one model on one series, with the UIDs that identify them (no PHI).

    Attributes:
        stage_s: Seconds per stage: ``load`` (DICOM files → volume), ``preprocess``,
            ``inference`` (every sliding-window patch included), ``postprocess`` (findings),
            ``placement`` (label map back on the source geometry), ``objects`` (SEG/SR
            written; only with an output folder).
        label_map: ``(slices, rows, columns)`` labels on the source series (value ``v > 0``
            is finding ``v - 1``), for segmentation models; None otherwise.
        written: Result object files written.
    """

    model: str
    backend: str
    study_uid: str
    series_uid: str
    findings: list[Finding]
    key_instance_uids: list[str | None]
    preprocess_s: float
    inference_s: float
    stage_s: dict[str, float] = field(default_factory=dict)
    label_map: np.ndarray | None = field(default=None, compare=False, repr=False)
    written: list[Path] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        findings = []
        for finding, uid in zip(self.findings, self.key_instance_uids, strict=True):
            findings.append({**finding.to_dict(), "key_instance_uid": uid})
        return {
            "model": self.model,
            "backend": self.backend,
            "study_instance_uid": self.study_uid,
            "series_instance_uid": self.series_uid,
            "preprocess_s": round(self.preprocess_s, 4),
            "inference_s": round(self.inference_s, 4),
            "stage_s": {k: round(v, 4) for k, v in self.stage_s.items()},
            "findings": findings,
            "written": [str(p) for p in self.written],
        }


def choose_series(volumes: dict[str, Volume], modalities: list[str]) -> Volume:
    """The series of an accepted modality with the most slices.

    Raises:
        NoMatchingSeriesError: None of the study's series has an accepted modality.
    """
    matching = [v for v in volumes.values() if v.modality in modalities]
    if not matching:
        found = sorted({v.modality for v in volumes.values()}) or ["no image series"]
        raise NoMatchingSeriesError(
            f"no {'/'.join(modalities)} series in the study (found {', '.join(found)})"
        )
    return max(matching, key=lambda v: (v.shape[2], v.series_uid))


def infer_study(
    study_dir: Path, model_ref: str, backend: str = "onnxruntime", registry: Registry | None = None
) -> InferenceResult:
    """Load the study in ``study_dir``, run model ``NAME[@VERSION]`` on its matching series.

    Raises:
        PackageNotFoundError, RegistryError, NoMatchingSeriesError, PreprocessingError,
        ManifestError, RunnerError.
    """
    folder = (registry or Registry.default()).get(model_ref).folder
    return infer_with_package(study_dir, folder, backend)


def infer_with_package(
    study_dir: Path,
    folder: Path,
    backend: str = "onnxruntime",
    *,
    out_dir: Path | None = None,
    device: str = "cpu",
    runner: ModelRunner | None = None,
) -> InferenceResult:
    """Run the package version in ``folder`` on the matching series of ``study_dir``.

    Args:
        study_dir: Folder of the study's DICOM files.
        folder: The package version folder.
        backend: ``onnxruntime`` or ``torchscript``.
        out_dir: Write the result objects here (SR; SEG for a segmentation model), on the
            source series' geometry.
        device: ``cpu``, ``cuda`` or ``auto``.
        runner: An already loaded runner of this package (benchmarks load it once).
    """
    manifest = load_manifest(folder)
    runner = runner or ModelRunner(manifest, folder, backend=backend, device=device)
    clock = time.perf_counter
    stages: dict[str, float] = {}
    started = clock()
    volume = choose_series(load_study(scan_folder(study_dir)), manifest.modality)
    stages["load"] = clock() - started
    started = clock()
    prepared = runner.preprocess(volume)
    stages["preprocess"] = clock() - started
    started = clock()
    outputs = runner.run(prepared.array)
    stages["inference"] = clock() - started
    started = clock()
    findings, model_labels = postprocess_with_labels(outputs, manifest, prepared.affine_ras)
    stages["postprocess"] = clock() - started
    labels = None
    if manifest.task is not Task.CLASSIFICATION:
        started = clock()
        item = {name: value[0] for name, value in outputs.items()}
        labels = mask_on_source(
            item,
            manifest,
            prepared.affine_ras,
            volume.affine,
            volume.shape,
            labels=model_labels,
        )
        stages["placement"] = clock() - started
    written: list[Path] = []
    if out_dir is not None:
        started = clock()
        written = write_result_objects(study_dir, volume, manifest, findings, labels, out_dir)
        stages["objects"] = clock() - started
    return InferenceResult(
        model=manifest.ident,
        backend=runner.backend.value,
        study_uid=volume.study_uid,
        series_uid=volume.series_uid,
        findings=findings,
        key_instance_uids=[key_instance_uid(f, prepared.affine_ras, volume) for f in findings],
        preprocess_s=stages["preprocess"],
        inference_s=stages["inference"],
        stage_s=stages,
        label_map=labels,
        written=written,
    )


def write_result_objects(
    study_dir: Path,
    volume: Volume,
    manifest: Manifest,
    findings: list[Finding],
    labels: np.ndarray | None,
    out_dir: Path,
) -> list[Path]:
    """Build the result objects of one run on the source series and write them to ``out_dir``.

    The SR always, GSPS and secondary capture for located findings, the SEG for a label map
    with any label in it: the same objects ``statlane serve`` sends, with the same
    deterministic UIDs for the same input and model version.
    """
    headers: dict[str, tuple[pydicom.Dataset, str]] = {}
    wanted = set(volume.sop_instance_uids)
    for path in scan_folder(study_dir):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except (pydicom.errors.InvalidDicomError, OSError):
            continue
        uid = str(header.get("SOPInstanceUID", ""))
        if uid in wanted:
            headers[uid] = (header, str(path))
    ordered = [headers[uid] for uid in volume.sop_instance_uids if uid in headers]
    instances = [source_instance(h, p) for h, p in ordered]
    result = build_result(
        task_id=f"infer-{volume.series_uid}",
        study=study_identity(ordered[0][0]),
        instances=instances,
        manifest=manifest,
        findings=findings,
        completed_at=datetime.now(UTC),
        mode=Mode.ASSISTANT,
        mask=labels if labels is not None and labels.shape[0] == len(instances) else None,
    )
    return write_objects(build_objects(result), out_dir)


def key_instance_uid(finding: Finding, affine_ras: np.ndarray, volume: Volume) -> str | None:
    """SOP Instance UID of the source slice nearest the centre of the finding's key slice."""
    box = finding.key_slice_bbox_voxel
    if box is None or finding.key_slice is None or not volume.sop_instance_uids:
        return None
    centre = np.array([(box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0, finding.key_slice, 1.0])
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_ras @ centre
    k = round(float((np.linalg.inv(volume.affine) @ lps)[2]))
    k = min(max(k, 0), len(volume.sop_instance_uids) - 1)
    return volume.sop_instance_uids[k]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``statlane infer``."""
    parser = subparsers.add_parser("infer", help="run a model package on one study folder")
    parser.add_argument("study", type=Path, help="folder holding the study's DICOM files")
    parser.add_argument("--model", required=True, help="NAME or NAME@VERSION, e.g. ich-ct-head@2")
    parser.add_argument("--backend", choices=["onnxruntime", "torchscript"], default="onnxruntime")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="write the result objects here: SR, and SEG on the source series for segmentation",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``statlane infer``; one line on stderr for any failure."""
    if not Path(args.study).is_dir():
        print(f"statlane infer: not a folder: {args.study}", file=sys.stderr)
        return 2
    try:
        folder = Registry.default().get(args.model).folder
    except (RegistryError, ManifestError) as error:
        print(f"statlane infer: {error}", file=sys.stderr)
        return 2
    try:
        result = infer_with_package(
            Path(args.study), folder, backend=args.backend, out_dir=args.out, device=args.device
        )
    except (
        PreprocessingError,
        NoMatchingSeriesError,
        RunnerError,
        ManifestError,
        ResultObjectError,
    ) as error:
        print(f"statlane infer: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(format_table(result))
    return 0


def format_table(result: InferenceResult) -> str:
    """A human-readable summary: one line per finding."""
    lines = [
        f"model {result.model} ({result.backend})  study {result.study_uid}",
        f"series {result.series_uid}  "
        + "  ".join(f"{stage} {seconds:.2f} s" for stage, seconds in result.stage_s.items()),
        f"{'finding':<26}{'present':<9}{'prob':>6}{'volume mL':>11}{'key slice':>11}  box LPS mm",
    ]
    for finding in result.findings:
        volume = "" if finding.volume_ml is None else f"{finding.volume_ml:.2f}"
        key = "" if finding.key_slice is None else str(finding.key_slice)
        box = (
            ""
            if finding.bbox_mm_lps is None
            else "[" + ", ".join(f"{v:.0f}" for v in finding.bbox_mm_lps) + "]"
        )
        flag = "YES" if finding.present else "no"
        if finding.present and finding.critical:
            flag += " !"
        lines.append(
            f"{finding.name:<26}{flag:<9}{finding.probability:>6.3f}{volume:>11}{key:>11}  {box}"
        )
    lines += [f"wrote {path}" for path in result.written]
    return "\n".join(lines)
