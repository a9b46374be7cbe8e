"""``statlane inspect``: what preprocessing makes of the DICOM studies in a folder.

Each folder that directly holds files is treated as one study. Every series becomes a volume
(or a typed error naming the series and what is wrong); with ``--pipeline`` the volume is also
turned into the model-ready tensor, and the time each step took is shown.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from preprocessing import PreprocessingError, Volume, load_study, scan_folder
from preprocessing.pipeline import Pipeline
from preprocessing.volume import axcodes


@dataclass(frozen=True)
class SeriesReport:
    """One line of the inspection table: a series, its volume or its error."""

    study: str
    series_uid: str
    modality: str
    shape: tuple[int, ...]
    spacing_mm: tuple[float, ...]
    orientation: str
    sheared: bool
    hu_min: float
    hu_max: float
    load_s: float
    tensor_shape: tuple[int, ...] | None = None
    pipeline_s: float | None = None
    error: str | None = None


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``statlane inspect``."""
    parser = subparsers.add_parser(
        "inspect", help="load the DICOM studies under a folder and report their volumes"
    )
    parser.add_argument("folder", type=Path, help="folder of studies (one sub-folder per study)")
    parser.add_argument("--pipeline", type=Path, help="YAML preprocessing pipeline to apply")
    parser.set_defaults(func=run)


def study_folders(root: Path) -> list[Path]:
    """Folders under ``root`` (itself included) that directly contain at least one file."""
    if not root.is_dir():
        raise NotADirectoryError(f"not a folder: {root}")
    candidates = [root, *sorted(p for p in root.rglob("*") if p.is_dir())]
    return [folder for folder in candidates if any(f.is_file() for f in folder.iterdir())]


def inspect_study(folder: Path, pipeline: Pipeline | None = None) -> list[SeriesReport]:
    """Load one study folder and describe each series (or the error that stopped it)."""
    started = time.perf_counter()
    try:
        volumes = load_study(scan_folder(folder))
    except PreprocessingError as error:
        return [_error_report(folder.name, error)]
    load_s = (time.perf_counter() - started) / max(len(volumes), 1)
    reports = []
    for series_uid, volume in volumes.items():
        reports.append(_volume_report(folder.name, series_uid, volume, load_s, pipeline))
    return reports


def _volume_report(
    study: str, series_uid: str, volume: Volume, load_s: float, pipeline: Pipeline | None
) -> SeriesReport:
    tensor_shape = None
    pipeline_s = None
    if pipeline is not None:
        started = time.perf_counter()
        tensor = pipeline(volume)
        pipeline_s = time.perf_counter() - started
        tensor_shape = tuple(int(n) for n in tensor.shape)
    return SeriesReport(
        study=study,
        series_uid=series_uid,
        modality=volume.modality,
        shape=volume.shape,
        spacing_mm=tuple(round(s, 3) for s in volume.spacing),
        orientation=axcodes(volume.affine_ras),
        sheared=volume.is_sheared,
        hu_min=float(np.min(volume.array)),
        hu_max=float(np.max(volume.array)),
        load_s=load_s,
        tensor_shape=tensor_shape,
        pipeline_s=pipeline_s,
    )


def _error_report(study: str, error: PreprocessingError) -> SeriesReport:
    return SeriesReport(
        study=study,
        series_uid=error.series_uid or "?",
        modality="?",
        shape=(),
        spacing_mm=(),
        orientation="?",
        sheared=False,
        hu_min=float("nan"),
        hu_max=float("nan"),
        load_s=0.0,
        error=f"{type(error).__name__}: {error.detail}",
    )


def format_report(report: SeriesReport) -> str:
    """One human-readable line per series."""
    if report.error:
        return f"{report.study:<14} REJECTED  {report.error}"
    spacing = "x".join(f"{s:g}" for s in report.spacing_mm)
    shape = "x".join(str(n) for n in report.shape)
    line = (
        f"{report.study:<14} {report.modality:<3} {shape:<12} {spacing:<18} mm "
        f"{report.orientation}{' sheared' if report.sheared else '':<8} "
        f"{'HU' if report.modality == 'CT' else 'px'} "
        f"[{report.hu_min:7.0f}, {report.hu_max:6.0f}]  load {report.load_s * 1000:6.0f} ms"
    )
    if report.tensor_shape is not None and report.pipeline_s is not None:
        tensor = "x".join(str(n) for n in report.tensor_shape)
        line += f"  -> tensor {tensor} in {report.pipeline_s * 1000:.0f} ms"
    return line


def run(args: argparse.Namespace) -> int:
    """Inspect every study under ``args.folder``; exit 1 if any series was rejected."""
    try:
        folders = study_folders(args.folder)
        pipeline = Pipeline.from_file(args.pipeline) if args.pipeline else None
    except (OSError, PreprocessingError) as error:
        print(f"statlane inspect: {error}", file=sys.stderr)
        return 2
    rejected = 0
    for folder in folders:
        for report in inspect_study(folder, pipeline):
            rejected += report.error is not None
            print(format_report(report))
    return 1 if rejected else 0
