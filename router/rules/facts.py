"""Plain facts about one study, read from DICOM headers only, for the routing rules to match on.

No pixel data is read and no patient identity is kept: a :class:`StudyFacts` holds the tags the
rules can name (modality, body part, descriptions, codes, geometry summary, source) normalised
once here — codes and body parts upper-cased, numbers as floats, orientation as a plane — so the
engine compares plain values.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from preprocessing.series import scan_folder
from router.vocabulary import OrderContext, OrderPriority

_OBLIQUE_BELOW = math.cos(math.radians(40.0))
"""A slice normal further than 40 degrees from every patient axis is called oblique (a 30 degree
gantry tilt is still axial)."""

_DICOM_PRIORITY = {
    "STAT": OrderPriority.STAT,
    "HIGH": OrderPriority.ASAP,
    "ROUTINE": OrderPriority.ROUTINE,
    "MEDIUM": OrderPriority.ROUTINE,
    "LOW": OrderPriority.ROUTINE,
}
"""Requested Procedure Priority (0040,1003) enumerated values → order priority."""


class FactsError(ValueError):
    """The instances do not describe one readable study; the message names it by UID."""


class Orientation(StrEnum):
    """Acquisition plane, from the normal of ImageOrientationPatient."""

    AXIAL = "axial"
    CORONAL = "coronal"
    SAGITTAL = "sagittal"
    OBLIQUE = "oblique"


@dataclass(frozen=True)
class Code:
    """A coded concept reduced to what rules compare: scheme and value, upper-cased."""

    scheme: str
    value: str

    def __str__(self) -> str:
        return f"{self.scheme}:{self.value}"


@dataclass(frozen=True)
class SeriesFacts:
    """One series as the rules see it.

    Attributes:
        series_instance_uid: Series Instance UID.
        series_number: Series Number, None when absent.
        modality: Modality, upper-case (``CT``, ``CR``, ``DX`` ...).
        body_part: Body Part Examined, upper-case, empty when absent.
        series_description: Series Description, empty when absent.
        image_count: Number of images (frames of multi-frame instances counted).
        slice_thickness_mm: Most common Slice Thickness, millimetres; None for projections.
        orientation: Most common acquisition plane; None without ImageOrientationPatient.
        contrast: True when any instance names a Contrast/Bolus Agent.
        station_name: Station Name, empty when absent.
        department: Institutional Department Name, empty when absent.
        institution: Institution Name, empty when absent.
    """

    series_instance_uid: str
    series_number: int | None
    modality: str
    body_part: str = ""
    series_description: str = ""
    image_count: int = 0
    slice_thickness_mm: float | None = None
    orientation: Orientation | None = None
    contrast: bool = False
    station_name: str = ""
    department: str = ""
    institution: str = ""

    @property
    def label(self) -> str:
        """``#<series number>``, or the UID when the number is absent (never patient data)."""
        return (
            f"#{self.series_number}" if self.series_number is not None else self.series_instance_uid
        )


@dataclass(frozen=True)
class StudyFacts:
    """One study as the rules see it: headers only, no patient identity.

    Attributes:
        study_instance_uid: Study Instance UID.
        accession_number: Accession Number, the join key with the order (never logged).
        study_description: Study Description, empty when absent.
        procedure_codes: Procedure Code Sequence and Requested Procedure Code Sequence items.
        requested_priority: Requested Procedure Priority (0040,1003) when the modality copied it
            into the images, else ``UNKNOWN``.
        series: The study's series, ordered by series number then UID.
        calling_ae: AE title of the peer that sent the study, upper-case, empty when unknown.
        order: The order joined by accession number, None when none arrived.
    """

    study_instance_uid: str
    accession_number: str = ""
    study_description: str = ""
    procedure_codes: tuple[Code, ...] = ()
    requested_priority: OrderPriority = OrderPriority.UNKNOWN
    series: tuple[SeriesFacts, ...] = ()
    calling_ae: str = ""
    order: OrderContext | None = None


def facts_from_datasets(
    datasets: Sequence[Dataset], calling_ae: str = "", order: OrderContext | None = None
) -> StudyFacts:
    """Facts of the one study the datasets (headers are enough) belong to.

    Raises:
        FactsError: No datasets, an instance without Study/Series Instance UID, or more than
            one study.
    """
    builder = StudyFactsBuilder()
    for ds in datasets:
        builder.add(ds)
    return builder.facts(calling_ae, order)


@dataclass
class _SeriesSummary:
    """What the facts of one series need, kept while its instances arrive."""

    first: Dataset
    image_count: int = 0
    thickness: Counter[float] = field(default_factory=Counter)
    orientation: Counter[Orientation] = field(default_factory=Counter)
    contrast: bool = False

    def add(self, ds: Dataset) -> None:
        self.image_count += max(_integer(ds.get("NumberOfFrames")) or 1, 1)
        thickness = _slice_thickness(ds)
        if thickness is not None:
            self.thickness[thickness] += 1
        orientation = _orientation(ds)
        if orientation is not None:
            self.orientation[orientation] += 1
        self.contrast = self.contrast or bool(_text(ds, "ContrastBolusAgent"))

    def facts(self, uid: str) -> SeriesFacts:
        first = self.first
        return SeriesFacts(
            series_instance_uid=uid,
            series_number=_integer(first.get("SeriesNumber")),
            modality=_text(first, "Modality").upper(),
            body_part=_text(first, "BodyPartExamined").upper(),
            series_description=_text(first, "SeriesDescription"),
            image_count=self.image_count,
            slice_thickness_mm=_most_common(self.thickness),
            orientation=_most_common(self.orientation),
            contrast=self.contrast,
            station_name=_text(first, "StationName"),
            department=_text(first, "InstitutionalDepartmentName"),
            institution=_text(first, "InstitutionName"),
        )


class StudyFactsBuilder:
    """The facts of one study, built incrementally: each header is read once, when it arrives.

    :meth:`facts` costs a few microseconds per series whatever the number of instances, so the
    coordinator can ask for the facts at every decision point (stat eligibility, quiet period,
    routing) without reading the headers again. ``facts_from_datasets`` is this builder fed
    with every dataset at once: both give the same facts for the same headers in the same
    order.
    """

    def __init__(self) -> None:
        self._first: Dataset | None = None
        self._studies: dict[str, None] = {}
        self._series: dict[str, _SeriesSummary] = {}
        self._missing_series = False
        self._codes: dict[Code, None] = {}
        self._count = 0

    @property
    def count(self) -> int:
        """Headers added."""
        return self._count

    def add(self, ds: Dataset) -> None:
        """Take one more header (pixel data is never read)."""
        self._count += 1
        if self._first is None:
            self._first = ds
        self._studies[_text(ds, "StudyInstanceUID")] = None
        uid = _text(ds, "SeriesInstanceUID")
        if not uid:
            self._missing_series = True
        else:
            summary = self._series.get(uid)
            if summary is None:
                summary = self._series[uid] = _SeriesSummary(ds)
            summary.add(ds)
        for code in _procedure_codes((ds,)):
            self._codes[code] = None

    def facts(self, calling_ae: str = "", order: OrderContext | None = None) -> StudyFacts:
        """The study's facts from every header added so far.

        Raises:
            FactsError: No header, one without Study/Series Instance UID, or more than one
                study.
        """
        if self._first is None:
            raise FactsError("no DICOM instances")
        studies = sorted(self._studies)
        if "" in studies:
            raise FactsError("an instance has no Study Instance UID")
        if len(studies) > 1:
            raise FactsError(f"instances of {len(studies)} studies: {', '.join(studies)}")
        if self._missing_series:
            raise FactsError(f"study {studies[0]}: an instance has no Series Instance UID")
        series = sorted(
            (summary.facts(uid) for uid, summary in self._series.items()),
            key=lambda s: (s.series_number is None, s.series_number or 0, s.series_instance_uid),
        )
        first = self._first
        return StudyFacts(
            study_instance_uid=studies[0],
            accession_number=_text(first, "AccessionNumber"),
            study_description=_text(first, "StudyDescription"),
            procedure_codes=tuple(self._codes),
            requested_priority=_DICOM_PRIORITY.get(
                _text(first, "RequestedProcedurePriority").upper(), OrderPriority.UNKNOWN
            ),
            series=tuple(series),
            calling_ae=calling_ae.strip().upper(),
            order=order,
        )


def read_headers(path: Path) -> list[Dataset]:
    """Headers (pixel data skipped) of every DICOM file at ``path``: one file or a folder tree.

    Files that are not DICOM are skipped.

    Raises:
        FactsError: ``path`` does not exist.
    """
    path = Path(path)
    if not path.exists():
        raise FactsError(f"{path}: no such file or folder")
    files = [path] if path.is_file() else scan_folder(path)
    headers: list[Dataset] = []
    for file in files:
        try:
            headers.append(pydicom.dcmread(file, stop_before_pixels=True))
        except (InvalidDicomError, OSError, EOFError):
            continue
    return headers


def studies_from_folder(path: Path, calling_ae: str = "") -> list[StudyFacts]:
    """Facts of every study found at ``path`` (a file or a folder tree), by Study Instance UID.

    Raises:
        FactsError: ``path`` is missing or holds no DICOM instance with a Study Instance UID.
    """
    grouped: dict[str, list[Dataset]] = {}
    for ds in read_headers(path):
        uid = _text(ds, "StudyInstanceUID")
        if uid:
            grouped.setdefault(uid, []).append(ds)
    if not grouped:
        raise FactsError(f"{path}: no DICOM instances")
    return [facts_from_datasets(grouped[uid], calling_ae) for uid in sorted(grouped)]


def facts_from_folder(path: Path, calling_ae: str = "") -> StudyFacts:
    """Facts of the single study at ``path``.

    Raises:
        FactsError: No study, or more than one study, at ``path``.
    """
    studies = studies_from_folder(path, calling_ae)
    if len(studies) > 1:
        uids = ", ".join(s.study_instance_uid for s in studies)
        raise FactsError(f"{path}: {len(studies)} studies ({uids}); expected one")
    return studies[0]


def orientation_of(cosines: Sequence[float]) -> Orientation:
    """Acquisition plane of ImageOrientationPatient (row cosines then column cosines).

    Raises:
        ValueError: Not six finite numbers, or the two directions are parallel.
    """
    if len(cosines) != 6 or not all(math.isfinite(c) for c in cosines):
        raise ValueError("ImageOrientationPatient must be six finite numbers")
    rx, ry, rz, cx, cy, cz = cosines
    normal = (ry * cz - rz * cy, rz * cx - rx * cz, rx * cy - ry * cx)
    length = math.sqrt(sum(n * n for n in normal))
    if length < 1e-6:
        raise ValueError("ImageOrientationPatient row and column directions are parallel")
    axis = max(range(3), key=lambda i: abs(normal[i]))
    if abs(normal[axis]) / length < _OBLIQUE_BELOW:
        return Orientation.OBLIQUE
    return (Orientation.SAGITTAL, Orientation.CORONAL, Orientation.AXIAL)[axis]


def _procedure_codes(datasets: Iterable[Dataset]) -> tuple[Code, ...]:
    """Procedure Code Sequence and every Request Attributes item's Requested Procedure Code."""
    found: dict[Code, None] = {}
    for ds in datasets:
        items = list(ds.get("ProcedureCodeSequence") or [])
        for request in ds.get("RequestAttributesSequence") or []:
            items += list(request.get("RequestedProcedureCodeSequence") or [])
        for item in items:
            value = _text(item, "CodeValue") or _text(item, "LongCodeValue")
            if value:
                found[Code(_text(item, "CodingSchemeDesignator").upper(), value.upper())] = None
    return tuple(found)


def _shared_item(ds: Dataset, sequence: str) -> Dataset | None:
    """First item of ``sequence`` in the shared functional groups (enhanced multi-frame)."""
    shared = ds.get("SharedFunctionalGroupsSequence")
    if not shared:
        return None
    items = shared[0].get(sequence)
    return items[0] if items else None


def _slice_thickness(ds: Dataset) -> float | None:
    holder = ds if "SliceThickness" in ds else _shared_item(ds, "PixelMeasuresSequence")
    value = _number(holder.get("SliceThickness")) if holder is not None else None
    return value if value is not None and value > 0 else None


def _orientation(ds: Dataset) -> Orientation | None:
    holder = ds if "ImageOrientationPatient" in ds else _shared_item(ds, "PlaneOrientationSequence")
    raw = holder.get("ImageOrientationPatient") if holder is not None else None
    if not raw:
        return None
    try:
        return orientation_of([float(v) for v in raw])
    except (TypeError, ValueError):
        return None


def _most_common(counts: Counter[Any]) -> Any:
    """The most frequent value (first seen wins a tie), None when there is none."""
    return counts.most_common(1)[0][0] if counts else None


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _integer(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None and number.is_integer() else None
