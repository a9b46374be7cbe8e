"""Vocabulary of synthetic studies: kinds, faults, compressions and the validated request."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

PRIORITIES = ("STAT", "HIGH", "ROUTINE", "MEDIUM", "LOW")
"""Enumerated values of Requested Procedure Priority (0040,1003)."""


class StudyKind(StrEnum):
    """Which examination a synthetic study imitates."""

    CT_HEAD = "ct-head"
    CT_CHEST = "ct-chest"
    CT_ABDOMEN = "ct-abdomen"
    CR_CHEST = "cr-chest"
    DX_CHEST = "dx-chest"

    @property
    def is_ct(self) -> bool:
        """True for cross-sectional CT series, False for single-image radiographs."""
        return self in (StudyKind.CT_HEAD, StudyKind.CT_CHEST, StudyKind.CT_ABDOMEN)

    @property
    def has_finding(self) -> bool:
        """True when the kind can carry a planted finding (see ``FINDING_TYPES``)."""
        return self in FINDING_TYPES


class Fault(StrEnum):
    """One deliberate defect planted in an otherwise valid study."""

    MISSING_SLICE = "missing-slice"
    DUPLICATE_SLICE = "duplicate-slice"
    MIXED_ORIENTATION = "mixed-orientation"
    TWO_PATIENTS = "two-patients"
    INCONSISTENT_GEOMETRY = "inconsistent-geometry"
    TRUNCATED_FILE = "truncated-file"
    NON_DICOM_FILE = "non-dicom-file"

    @property
    def needs_series(self) -> bool:
        """True when the defect only makes sense in a multi-slice series."""
        return self not in (Fault.TRUNCATED_FILE, Fault.NON_DICOM_FILE)


class Compression(StrEnum):
    """Lossless transfer syntaxes the pixel data may be encoded with."""

    NONE = "none"
    RLE = "rle"
    JPEG_LS = "jpeg-ls"
    JPEG2000 = "jpeg2000"


FINDING_TYPES = {
    StudyKind.CT_HEAD: "intracranial-hemorrhage",
    StudyKind.CT_CHEST: "lung-nodule",
    StudyKind.CR_CHEST: "pneumothorax",
    StudyKind.DX_CHEST: "pneumothorax",
}
"""The one finding each kind can carry when ``finding=True``. ct-abdomen has none: it is
normal anatomy with an organ label map, and asking it for a finding is a ``SynthSpecError``."""


@dataclass(frozen=True)
class SyntheticStudy:
    """What :func:`generate_study` wrote: identity, files (slice order) and ground truth."""

    kind: StudyKind
    study_dir: Path
    study_uid: str
    accession_number: str
    series_uid: str
    files: list[Path]
    ground_truth: Path | None
    mask: Path | None
    fault: Fault | None
    compression: Compression
    priority: str = "ROUTINE"
    finding: bool = False
    labels: Path | None = None
    """The organ label map (``labels.npy``, ct-abdomen only); read it with ``load_label_map``."""


class SynthSpecError(ValueError):
    """A request for a synthetic study that cannot be honoured (bad kind/parameter mix)."""


@dataclass(frozen=True)
class StudySpec:
    """A validated, fully defaulted request for one synthetic study.

    Geometry is in millimetres; ``matrix`` is rows = columns in pixels.
    """

    kind: StudyKind
    seed: int
    finding: bool
    slices: int
    slice_thickness_mm: float
    matrix: int
    gantry_tilt_deg: float
    compression: Compression
    fault: Fault | None
    priority: str

    @classmethod
    def build(
        cls,
        kind: StudyKind | str,
        *,
        seed: int,
        finding: bool,
        slices: int | None,
        slice_thickness_mm: float | None,
        matrix: int | None,
        gantry_tilt_deg: float,
        compression: Compression | str,
        fault: Fault | str | None,
        priority: str,
    ) -> StudySpec:
        """Apply per-kind defaults and reject combinations a real scanner would not produce."""
        try:
            kind = StudyKind(kind)
            compression = Compression(compression)
            fault = Fault(fault) if fault is not None else None
        except ValueError as exc:
            raise SynthSpecError(str(exc)) from exc
        if seed < 0:
            raise SynthSpecError(f"seed must be >= 0, got {seed}")
        priority = priority.upper()
        if priority not in PRIORITIES:
            raise SynthSpecError(f"priority must be one of {PRIORITIES}, got {priority!r}")
        if kind is StudyKind.CT_HEAD:
            slices = 32 if slices is None else slices
            thickness = 5.0 if slice_thickness_mm is None else float(slice_thickness_mm)
            if not 32 <= slices <= 64:
                raise SynthSpecError(f"ct-head takes 32-64 slices, got {slices}")
            if thickness not in (2.5, 5.0):
                raise SynthSpecError(f"ct-head slice thickness is 2.5 or 5.0 mm, got {thickness}")
        elif kind is StudyKind.CT_CHEST:
            slices = 100 if slices is None else slices
            thickness = 2.5 if slice_thickness_mm is None else float(slice_thickness_mm)
            if slices < 100:
                raise SynthSpecError(f"ct-chest takes >= 100 slices, got {slices}")
            if thickness not in (1.25, 2.5):
                raise SynthSpecError(f"ct-chest slice thickness is 1.25 or 2.5 mm, got {thickness}")
        elif kind is StudyKind.CT_ABDOMEN:
            slices = 100 if slices is None else slices
            thickness = 2.5 if slice_thickness_mm is None else float(slice_thickness_mm)
            if thickness not in (1.25, 2.0, 2.5):
                raise SynthSpecError(
                    f"ct-abdomen slice thickness is 1.25, 2.0 or 2.5 mm, got {thickness}"
                )
            if slices < 16 or (slices - 1) * thickness > 600.0:
                raise SynthSpecError(
                    f"ct-abdomen takes 16 slices up to 600 mm of coverage, got {slices} x "
                    f"{thickness} mm"
                )
        else:
            if slices not in (None, 1):
                raise SynthSpecError(f"{kind.value} is a single image; slices must be None or 1")
            if slice_thickness_mm is not None:
                raise SynthSpecError(f"{kind.value} has no slice thickness")
            slices, thickness = 1, 0.0
        if gantry_tilt_deg and kind is not StudyKind.CT_HEAD:
            raise SynthSpecError("gantry tilt applies to ct-head only")
        if not -30.0 <= gantry_tilt_deg <= 30.0:
            raise SynthSpecError(f"gantry tilt must be within +-30 degrees, got {gantry_tilt_deg}")
        matrix = (512 if kind.is_ct else 1024) if matrix is None else int(matrix)
        if not 32 <= matrix <= 4096:
            raise SynthSpecError(f"matrix must be 32-4096 pixels, got {matrix}")
        if finding and not kind.has_finding:
            raise SynthSpecError(f"{kind.value} has no finding to plant")
        if fault is not None and fault.needs_series and not kind.is_ct:
            raise SynthSpecError(f"fault {fault.value} needs a CT series, not {kind.value}")
        return cls(
            kind=kind,
            seed=int(seed),
            finding=bool(finding),
            slices=slices,
            slice_thickness_mm=thickness,
            matrix=matrix,
            gantry_tilt_deg=float(gantry_tilt_deg),
            compression=compression,
            fault=fault,
            priority=priority,
        )

    def digest(self, *salt: str) -> bytes:
        """SHA-256 over every parameter plus ``salt``: the root of all UIDs of this study."""
        parts = (
            "statlane-synth-v1",
            self.kind.value,
            str(self.seed),
            str(self.finding),
            str(self.slices),
            repr(self.slice_thickness_mm),
            str(self.matrix),
            repr(self.gantry_tilt_deg),
            self.compression.value,
            self.fault.value if self.fault else "",
            self.priority,
            *salt,
        )
        return hashlib.sha256("|".join(parts).encode()).digest()


def seeded_int(*parts: str | int) -> int:
    """A stable 64-bit integer from ``parts`` (used to seed numpy generators)."""
    text = "|".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little")
