"""The contract between the runtime and the router: one postprocessed AI result of one study.

Result objects (SR, GSPS, SC, SEG) and messages (HL7 ORU, FHIR) are built from an ``AIResult``
only: the findings as the model reported them, the source study's identity and the geometry of
the source instances. No tensor crosses this boundary except the optional label map, already
resampled onto the source series' grid.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING

import numpy as np
from pydicom import Dataset

if TYPE_CHECKING:  # the finding record lives with postprocessing; importing it costs seconds
    from models.postprocess import Finding


class Mode(StrEnum):
    """What a task's result is allowed to touch."""

    SHADOW = "shadow"  # kept and audited; nothing reaches clinical destinations
    TRIAGE = "triage"  # worklist signals only
    ASSISTANT = "assistant"  # worklist signals plus result objects and messages


@dataclass(frozen=True)
class StudyIdentity:
    """Identity of the source study, copied verbatim into every result object.

    Dates are DICOM ``YYYYMMDD`` strings, times ``HHMMSS``; empty strings where the source had none.

    ``modules`` holds the source's Patient, Patient Study, General Study and Clinical Trial
    Subject/Study attributes as they were (see
    :func:`router.objects.common.identity_modules`), so every result object copies whole modules
    (de-identification, issuers, other IDs) rather than the few fields above; None when the
    result was made without a source header (the fields above are then all there is).
    """

    patient_id: str
    patient_name: str
    study_instance_uid: str
    accession_number: str
    patient_birth_date: str = ""
    patient_sex: str = ""
    study_id: str = ""
    study_date: str = ""
    study_time: str = ""
    referring_physician_name: str = ""
    study_description: str = ""
    issuer_of_patient_id: str = ""
    modules: Dataset | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class SourceInstance:
    """One plane of the source series: an instance, or one frame of a multi-frame instance,
    with the geometry needed to place findings on it.

    A multi-frame instance appears once per frame (same SOP Instance UID, ``frame`` 1..N), so
    ``AIResult.source_instances`` lists the planes in slice order whatever the storage.

    Attributes:
        sop_instance_uid: SOP Instance UID.
        sop_class_uid: SOP Class UID.
        series_instance_uid: Series Instance UID.
        rows: Rows.
        columns: Columns.
        position_lps: ImagePositionPatient, LPS mm (None for projection radiographs).
        orientation: ImageOrientationPatient (row cosines then column cosines).
        pixel_spacing_mm: PixelSpacing ``(row spacing, column spacing)``, mm.
        path: The instance's file in the spool (pixel data for SC, source images for SEG).
        frame: 1-based frame number of this plane inside the instance (1 for single-frame).
        number_of_frames: Number of Frames of the instance (1 for single-frame).
    """

    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    rows: int
    columns: int
    position_lps: tuple[float, float, float] | None = None
    orientation: tuple[float, float, float, float, float, float] | None = None
    pixel_spacing_mm: tuple[float, float] | None = None
    path: str | None = None
    frame: int = 1
    number_of_frames: int = 1


@dataclass(frozen=True)
class Algorithm:
    """The model that produced the result (IHE AI Results algorithm identification).

    Attributes:
        name: Model name, e.g. ``ich-ct-head``.
        version: Model version as a string, e.g. ``"2"``.
        manufacturer: Who made the model.
        device_uid: A UID that identifies this model version as a device (deterministic).
    """

    name: str
    version: str
    manufacturer: str
    device_uid: str


@dataclass(frozen=True)
class KeyImage:
    """Where the largest region of a finding lies on one source instance.

    Attributes:
        finding: Name of the finding (``Finding.name``).
        sop_instance_uid: The source instance (key slice).
        frame: 1-based frame number (1 for single-frame instances).
        box_px: ``(column0, row0, column1, row1)`` in the instance's pixel coordinates, 0-based,
            inclusive bounds, as floats (sub-pixel corners).
    """

    finding: str
    sop_instance_uid: str
    frame: int
    box_px: tuple[float, float, float, float]


@dataclass(frozen=True)
class PriorVersion:
    """The earlier result a new one replaces: the latest result of the same task lineage (same
    study and model name) that was sent and read other input (or ran another model version).

    Attributes:
        task_id: The task that produced the earlier result (opaque).
        study_instance_uid: Study Instance UID of the earlier SR (the source study).
        sr_series_instance_uid: Series Instance UID of the earlier SR.
        sr_sop_instance_uid: SOP Instance UID of the earlier SR.
        sr_sop_class_uid: SOP Class UID of the earlier SR.
        report_id: Logical id (a UUID) of the earlier FHIR DiagnosticReport; its identifier is
            ``urn:uuid:<report_id>`` in system ``urn:ietf:rfc:3986``.
        model: Model identity ``name@version`` of the earlier result.
    """

    task_id: str
    study_instance_uid: str
    sr_series_instance_uid: str
    sr_sop_instance_uid: str
    sr_sop_class_uid: str
    report_id: str
    model: str


def input_digest(sop_instance_uids: Iterable[str], model: str) -> str:
    """What a model read, as 32 hex digits: SHA-256 of the model ``name@version`` and the
    sorted, de-duplicated SOP Instance UIDs of the source instances.

    Two runs with the same digest read the same input with the same model: their results are
    the same version (same UIDs, same delivery keys). Any instance more or less, or another
    model version, makes a new version.
    """
    text = "\x1f".join([model, *sorted(set(sop_instance_uids))])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True)
class AIResult:
    """One task's postprocessed result for one study.

    Attributes:
        task_id: The task that produced it (opaque).
        study: Identity of the source study.
        source_instances: The planes of the series the model read, in slice order (first =
            lowest index): one per single-frame instance, one per frame of a multi-frame one.
        algorithm: Model identification.
        findings: Findings as postprocessed (presence, probability, measurements).
        key_images: Key slices with boxes on the source instances, one per located finding.
        mask: Optional label map on the source grid, ``(len(source_instances), rows, columns)``
            (plane ``i`` is ``source_instances[i]``, a frame for a multi-frame source)
            unsigned integers (``uint8``, ``uint16`` beyond 255 findings), for SEG: a voxel of
            value ``v > 0`` belongs to ``findings[v - 1]``, 0 is background. A ``bool`` mask is
            still accepted and belongs to the single located finding. None for classifiers.
        mode: What the result may touch.
        completed_at: When inference finished (timezone-aware).
        unreliable: Why the output must not be believed (saturated on an atypical input, a
            finding over an implausible fraction of the volume; see ``models.domain``), None
            when plausible. An unreliable result is never critical.
        replaces: The earlier version this result corrects (its SR names it in the
            Predecessor Documents Sequence, the ORU goes out with status C, the FHIR report as
            amended); None for a first version.
    """

    task_id: str
    study: StudyIdentity
    source_instances: tuple[SourceInstance, ...]
    algorithm: Algorithm
    findings: tuple[Finding, ...]
    completed_at: datetime
    key_images: tuple[KeyImage, ...] = ()
    mask: np.ndarray | None = field(default=None, compare=False)
    mode: Mode = Mode.ASSISTANT
    unreliable: str | None = None
    replaces: PriorVersion | None = None

    @property
    def input_digest(self) -> str:
        """The version of this result: :func:`input_digest` of its source instances and model.

        Result object UIDs, FHIR ids and delivery keys derive from it, so a re-run on the same
        input repeats them exactly and a re-run on more input makes new ones.
        """
        model = f"{self.algorithm.name}@{self.algorithm.version}"
        return input_digest((i.sop_instance_uid for i in self.source_instances), model)

    @property
    def critical_positive(self) -> bool:
        """A critical finding is present (moves the study to the top of the worklist); never
        for an unreliable result."""
        if self.unreliable is not None:
            return False
        return any(f.critical and f.present for f in self.findings)
