"""Batch loading: DICOM instances → one volume per series, with study-level identity checks.

:func:`load_series` reads every file once (header and pixel data), checks that all instances
belong to one series of one patient, orders and checks the slices with
:mod:`preprocessing.geometry`, and decodes each frame straight into its place in a preallocated
float32 ``(slice, row, column)`` buffer. :class:`preprocessing.streaming.SeriesAssembler` ends in
the same :func:`build_volume`, so both paths give identical voxels and affines.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from preprocessing.errors import (
    IdentityMismatchError,
    LoaderFault,
    MixedSeriesError,
    PreprocessingError,
    UnreadableInstanceError,
    UnsupportedSeriesError,
)
from preprocessing.geometry import StackPlan, plan_frames
from preprocessing.instance import Frame, frames_of, read_dataset
from preprocessing.volume import Volume

_SKIPPED_NAMES = {"ground_truth.json", "DICOMDIR"}
_IDENTITY_KEYWORDS = ("PatientID", "StudyInstanceUID", "AccessionNumber")


def scan_folder(folder: Path) -> list[Path]:
    """Regular files under ``folder`` (recursively), sorted; skips ground_truth.json, *.npy."""
    return sorted(
        path
        for path in Path(folder).rglob("*")
        if path.is_file() and path.name not in _SKIPPED_NAMES and path.suffix != ".npy"
    )


def build_volume(frames: Sequence[Frame], series_uid: str, tolerance_mm: float) -> Volume:
    """Order, check and stack the frames of one series (shared by batch and streaming).

    Raises:
        PreprocessingError subclasses for geometric defects or undecodable pixels.
    """
    if not frames:
        raise UnsupportedSeriesError("no image instances", series_uid=series_uid)
    return stack_frames(
        frames, plan_frames(frames, series_uid, tolerance_mm), series_uid, tolerance_mm
    )


def stack_frames(
    frames: Sequence[Frame], plan: StackPlan, series_uid: str, tolerance_mm: float
) -> Volume:
    """Decode ``frames`` in ``plan.order`` into one float32 volume (the copy; no checks).

    Args:
        frames: The frames ``plan`` was made from (:func:`preprocessing.geometry.plan_frames`).
        plan: Their order and affine.
        series_uid: Series Instance UID of the volume.
        tolerance_mm: Recorded in the volume's metadata, millimetres.
    """
    first = frames[plan.order[0]]
    buffer = np.empty((len(frames), first.rows, first.columns), dtype=np.float32)
    for k, index in enumerate(plan.order):
        frames[index].decode_into(buffer[k])
    metadata = dict(first.metadata)
    metadata["tolerance_mm"] = tolerance_mm
    return Volume(
        array=buffer.transpose(2, 1, 0),
        affine=plan.affine,
        series_uid=series_uid,
        study_uid=first.identity.study_uid,
        modality=first.modality,
        sop_instance_uids=tuple(frames[i].sop_uid for i in plan.order),
        metadata=metadata,
        frame_numbers=tuple(frames[i].frame_index + 1 for i in plan.order),
    )


def identity_of(ds: Dataset, where: str) -> tuple[str | None, ...]:
    """(PatientID, StudyInstanceUID, AccessionNumber) of ``ds``; absent values are ``None``."""
    try:
        values = [ds.get(keyword) for keyword in _IDENTITY_KEYWORDS]
    except Exception as exc:  # pydicom's lazy values raise any type: callers see typed errors
        raise UnreadableInstanceError(
            f"{where}: identity attributes unreadable ({type(exc).__name__})"
        ) from exc
    return tuple(str(v).strip() if v not in (None, "") else None for v in values)


def sop_uid_of(ds: Dataset, where: str) -> str:
    """SOPInstanceUID of ``ds``, or a placeholder naming ``where``."""
    value = ds.get("SOPInstanceUID")
    return str(value) if value not in (None, "") else f"<{where} without SOPInstanceUID>"


def check_identity(datasets: Sequence[tuple[str, Dataset]]) -> None:
    """All instances agree on PatientID, StudyInstanceUID and AccessionNumber.

    An absent value agrees with anything; two different present values do not. Messages name
    SOP Instance UIDs and the attribute, never the values.

    Raises:
        IdentityMismatchError: Two instances disagree.
    """
    seen: list[tuple[str | None, str] | None] = [None] * len(_IDENTITY_KEYWORDS)
    for where, ds in datasets:
        values = identity_of(ds, where)
        for slot, value in enumerate(values):
            if value is None:
                continue
            first = seen[slot]
            if first is None:
                seen[slot] = (value, sop_uid_of(ds, where))
            elif first[0] != value:
                keyword = _IDENTITY_KEYWORDS[slot]
                shown = f" ({first[0]} vs {value})" if keyword == "StudyInstanceUID" else ""
                raise IdentityMismatchError(
                    f"instances {first[1]} and {sop_uid_of(ds, where)} disagree on "
                    f"{keyword}{shown}",
                    series_uid=_series_of(ds),
                )


def _series_of(ds: Dataset) -> str | None:
    value = ds.get("SeriesInstanceUID")
    return str(value) if value not in (None, "") else None


def _read_all(sources: Iterable[Path | str | Dataset]) -> list[tuple[str, Dataset]]:
    datasets = []
    for index, source in enumerate(sources):
        where = f"source {index}"
        datasets.append((where, read_dataset(source, where)))
    return datasets


def _frames_by_instance(datasets: Sequence[tuple[str, Dataset]]) -> list[Frame]:
    """Frames of all instances, a repeated SOPInstanceUID counted once (as streaming does)."""
    frames: list[Frame] = []
    seen: set[str] = set()
    for where, ds in datasets:
        instance_frames = frames_of(ds, where)
        sop_uid = instance_frames[0].sop_uid
        if sop_uid in seen:
            continue
        seen.add(sop_uid)
        frames.extend(instance_frames)
    return frames


def load_series(
    sources: Iterable[Path | str | pydicom.Dataset], *, tolerance_mm: float = 0.05
) -> Volume:
    """Load the instances of ONE series into a volume (float32, HU for CT, affine in LPS mm).

    Args:
        sources: File paths or datasets of one series, in any order.
        tolerance_mm: Allowed deviation of slice positions from a regular grid, millimetres.

    Raises:
        MixedSeriesError: Instances of more than one series (or study).
        IdentityMismatchError: Instances disagree on patient identity.
        PreprocessingError: Any other defect, as its specific subclass.
    """
    try:
        return _load_series(sources, tolerance_mm)
    except PreprocessingError:
        raise
    except Exception as exc:  # a last line of defence: callers only ever see typed errors
        raise LoaderFault(f"unexpected {type(exc).__name__} while loading") from exc


def _load_series(sources: Iterable[Path | str | Dataset], tolerance_mm: float) -> Volume:
    datasets = _read_all(sources)
    if not datasets:
        raise UnsupportedSeriesError("no instances given")
    for where, ds in datasets:
        if _series_of(ds) is None:
            raise UnreadableInstanceError(f"instance {sop_uid_of(ds, where)}: no SeriesInstanceUID")
    series = {_series_of(ds) for _, ds in datasets}
    if len(series) > 1:
        names = sorted(str(s) for s in series)
        raise MixedSeriesError(
            f"{len(series)} series given as one: {', '.join(names[:4])}", series_uid=names[0]
        )
    series_uid = str(next(iter(series)))
    studies = {str(ds.get("StudyInstanceUID", "")) for _, ds in datasets}
    if len(studies) > 1:
        raise MixedSeriesError(
            f"one series spans studies {', '.join(sorted(studies))}", series_uid=series_uid
        )
    check_identity(datasets)
    return build_volume(_frames_by_instance(datasets), series_uid, tolerance_mm)


def load_study(sources: Iterable[Path | str | pydicom.Dataset]) -> dict[str, Volume]:
    """Load every image series of ONE study: Series Instance UID → volume.

    Identity is checked across the whole study first (PatientID, StudyInstanceUID,
    AccessionNumber). Instances without pixel data (SR, presentation states) are skipped.

    Raises:
        IdentityMismatchError: Instances disagree on identity; message names UIDs only.
        PreprocessingError: The first defective series, as its specific subclass.
    """
    try:
        return _load_study(sources)
    except PreprocessingError:
        raise
    except Exception as exc:  # a last line of defence: callers only ever see typed errors
        raise LoaderFault(f"unexpected {type(exc).__name__} while loading") from exc


def _load_study(sources: Iterable[Path | str | Dataset]) -> dict[str, Volume]:
    datasets = _read_all(sources)
    check_identity(datasets)
    grouped: dict[str, list[tuple[str, Dataset]]] = {}
    for where, ds in datasets:
        if "PixelData" not in ds:
            continue
        series_uid = _series_of(ds)
        if series_uid is None:
            raise UnreadableInstanceError(f"instance {sop_uid_of(ds, where)}: no SeriesInstanceUID")
        grouped.setdefault(series_uid, []).append((where, ds))
    return {
        series_uid: build_volume(_frames_by_instance(members), series_uid, 0.05)
        for series_uid, members in grouped.items()
    }
