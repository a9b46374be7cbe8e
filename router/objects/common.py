"""What every result object shares: identity, UIDs, equipment, timestamps, source headers.

Each builder (SR, GSPS, SC, SEG) makes its object with highdicom and then calls :func:`finish`,
which copies the source study's identity verbatim from the ``AIResult`` and stamps every date
and time from ``completed_at``, so the same result always yields the same object.

Fenced: :func:`frame_numbers` asks highdicom's private IOD tables
(``highdicom._standard_utils.is_attribute_in_iod``, no public equivalent) whether a SOP class is
multi-frame, only on a highdicom in :data:`TESTED_HIGHDICOM` (the range ``pyproject.toml`` pins).
On any other highdicom it logs one warning and guesses from the frame number, as it does for a
SOP class highdicom does not know.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Final, TypedDict

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion
from pydicom import Dataset
from pydicom.dataelem import DataElement
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes

from models.postprocess import Finding
from router.objects.uids import model_ident, object_uid, tracking_uid
from router.result import AIResult, KeyImage, SourceInstance, StudyIdentity

logger = logging.getLogger(__name__)

MANUFACTURER: Final = "statlane"
CHARACTER_SET: Final = "ISO_IR 192"
SERIES_NUMBERS: Final = {"sr": 9001, "gsps": 9002, "sc": 9003, "seg": 9004}
_SERIES_LABELS: Final = {"sr": "result", "gsps": "marks", "sc": "key image", "seg": "mask"}
_HEAD_PARTS: Final = frozenset({"HEAD", "BRAIN", "SKULL"})
BRAIN_WINDOW_HU: Final = (40.0, 80.0)
"""Window centre and width for a CT head, Hounsfield units (the blood/brain window)."""


class ResultObjectError(ValueError):
    """A result object cannot be built from this result (names the study by UID only)."""

    def __init__(self, study_uid: str, problem: str) -> None:
        super().__init__(f"study {study_uid}: {problem}")
        self.study_uid = study_uid


class ObjectNotApplicable(Exception):
    """This kind of object does not apply to this result, for a reason worth auditing.

    Unlike :class:`ResultObjectError` nothing is wrong: e.g. no valid SEG can be made on a
    source without a Frame of Reference. ``reason`` names UIDs only.
    """

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(f"{kind} not applicable: {reason}")
        self.kind = kind
        self.reason = reason


@dataclass(frozen=True)
class ObjectIdentity:
    """UIDs and numbers of one result object.

    Attributes:
        sop_instance_uid: Deterministic SOP Instance UID.
        series_instance_uid: Deterministic Series Instance UID (one series per kind).
        series_number: Series Number, distinct per kind.
        series_description: Human-readable series label naming model and version.
    """

    sop_instance_uid: str
    series_instance_uid: str
    series_number: int
    series_description: str


@dataclass(frozen=True)
class Window:
    """A VOI window in modality units (Hounsfield units for CT)."""

    center: float
    width: float
    explanation: str

    def to_uint8(self, values: npt.NDArray[np.float64]) -> npt.NDArray[np.uint8]:
        """Map modality values linearly onto 0..255 (DICOM LINEAR window, clipped)."""
        low = self.center - 0.5 - (self.width - 1.0) / 2.0
        scaled = (values - low) / max(self.width - 1.0, 1.0) * 255.0
        return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def object_identity(result: AIResult, kind: str) -> ObjectIdentity:
    """UIDs, series number and description of the ``kind`` object of ``result``.

    The UIDs are those of this result's version (its input digest): a new version is a new
    series with a new instance; the Series Number stays that of the kind.
    """
    study = result.study.study_instance_uid
    inputs = result.input_digest
    model = model_ident(result.algorithm.name, result.algorithm.version)
    label = f"AI {_SERIES_LABELS[kind]} (preliminary) "
    detail = f"{result.algorithm.name} {result.algorithm.version}"
    return ObjectIdentity(
        sop_instance_uid=object_uid(study, model, kind, "instance", inputs=inputs),
        series_instance_uid=object_uid(study, model, kind, "series", inputs=inputs),
        series_number=SERIES_NUMBERS[kind],
        series_description=(label + detail)[:64],  # LO holds 64 characters
    )


def finding_tracking_uid(result: AIResult, finding: Finding) -> str:
    """The finding's Tracking UID, shared by its SR group, GSPS graphic and SEG segment."""
    model = model_ident(result.algorithm.name, result.algorithm.version)
    return tracking_uid(result.study.study_instance_uid, model, finding.name)


def finding_code(finding: Finding) -> hd.sr.CodedConcept:
    """The finding's concept (e.g. SCT 1386000 Intracranial hemorrhage)."""
    return hd.sr.CodedConcept(
        value=finding.concept_value,
        scheme_designator=finding.concept_scheme,
        meaning=finding.concept_meaning,
    )


FINDING_CATEGORY: Final = hd.sr.CodedConcept(*codes.SCT.MorphologicallyAbnormalStructure)
"""Category of a finding that names none (a lesion): SCT 49755003 (DICOM CID 7150)."""


def finding_category(finding: Finding) -> hd.sr.CodedConcept:
    """The finding's category (an organ: SCT 91723000 Anatomical Structure), else a lesion's."""
    if finding.category_value and finding.category_scheme and finding.category_meaning:
        return hd.sr.CodedConcept(
            value=finding.category_value,
            scheme_designator=finding.category_scheme,
            meaning=finding.category_meaning,
        )
    return FINDING_CATEGORY


def finding_laterality(finding: Finding) -> hd.sr.CodedConcept | None:
    """The side of a paired organ (SCT Left / Right), or None."""
    if finding.laterality_value and finding.laterality_scheme and finding.laterality_meaning:
        return hd.sr.CodedConcept(
            value=finding.laterality_value,
            scheme_designator=finding.laterality_scheme,
            meaning=finding.laterality_meaning,
        )
    return None


def finding_label(finding: Finding) -> str:
    """What a reader sees for the finding: its code meaning, and the side when it has one
    (``Kidney, left``), at most 64 characters (a DICOM LO)."""
    side = f", {finding.laterality_meaning.lower()}" if finding.laterality_meaning else ""
    return f"{finding.concept_meaning}{side}"[:64]


def located_findings(result: AIResult) -> list[tuple[Finding, KeyImage]]:
    """Present findings that have a key image, in finding order.

    Raises:
        ResultObjectError: A key image names a finding the result does not have.
    """
    by_name = {f.name: f for f in result.findings}
    located = []
    for key in result.key_images:
        finding = by_name.get(key.finding)
        if finding is None:
            raise ResultObjectError(
                result.study.study_instance_uid,
                f"key image on {key.sop_instance_uid} names unknown finding {key.finding!r}",
            )
        if finding.present:
            located.append((finding, key))
    order = {f.name: i for i, f in enumerate(result.findings)}
    return sorted(located, key=lambda pair: order[pair[0].name])


def unplaced_findings(result: AIResult) -> list[str]:
    """Names of present findings that have a box (LPS mm) but no key image on the source."""
    keyed = {key.finding for key in result.key_images}
    return [
        f.name
        for f in result.findings
        if f.present and f.bbox_mm_lps is not None and f.name not in keyed
    ]


def source_instance(result: AIResult, sop_instance_uid: str) -> SourceInstance:
    """The source instance with this SOP Instance UID.

    Raises:
        ResultObjectError: The result has no such source instance.
    """
    for instance in result.source_instances:
        if instance.sop_instance_uid == sop_instance_uid:
            return instance
    raise ResultObjectError(
        result.study.study_instance_uid,
        f"key image {sop_instance_uid} is not one of the result's source instances",
    )


def unique_instances(result: AIResult) -> list[SourceInstance]:
    """The source instances once each (the first plane of a multi-frame one), in plane order."""
    seen: dict[str, SourceInstance] = {}
    for instance in result.source_instances:
        seen.setdefault(instance.sop_instance_uid, instance)
    return list(seen.values())


def clip_box(
    box_px: tuple[float, float, float, float], rows: int, columns: int
) -> tuple[float, float, float, float]:
    """A key-image box made safe for the image: inside it and at least one pixel.

    ``box_px`` holds inclusive 0-based pixel indices ``(column0, row0, column1, row1)`` on the
    source's pixel grid (``rows`` x ``columns`` pixels). Corners given in the wrong order are
    swapped; each coordinate is clipped to ``0..columns - 1`` (``0..rows - 1``), so a box partly
    outside the image keeps its inside part and a box wholly outside shrinks onto the nearest
    edge pixels. An index range always covers at least one pixel (its outline, see
    :func:`box_outline`, spans ``index1 + 1 - index0 >= 1`` pixel units), so a zero-size box
    becomes a one-pixel box and nothing drawn from the result leaves the image.

    Raises:
        ValueError: A coordinate that is not a finite number, or an empty image.
    """
    if rows < 1 or columns < 1:
        raise ValueError(f"image of {rows}x{columns} pixels has no pixel to mark")
    c0, r0, c1, r1 = (float(v) for v in box_px)
    if not all(math.isfinite(v) for v in (c0, r0, c1, r1)):
        raise ValueError(f"box {box_px} has a coordinate that is not a finite number")
    c0, c1 = sorted((c0, c1))
    r0, r1 = sorted((r0, r1))
    last_c, last_r = float(columns - 1), float(rows - 1)
    return (
        min(max(c0, 0.0), last_c),
        min(max(r0, 0.0), last_r),
        min(max(c1, 0.0), last_c),
        min(max(r1, 0.0), last_r),
    )


def key_box(result: AIResult, key: KeyImage) -> tuple[float, float, float, float]:
    """The key image's box clipped to its source instance's grid (:func:`clip_box`).

    Raises:
        ResultObjectError: The key image is not on a source instance, or its box has a
            coordinate that is not a number.
    """
    instance = source_instance(result, key.sop_instance_uid)
    try:
        return clip_box(key.box_px, instance.rows, instance.columns)
    except ValueError as exc:
        raise ResultObjectError(result.study.study_instance_uid, str(exc)) from exc


def box_outline(box_px: tuple[float, float, float, float]) -> npt.NDArray[np.float64]:
    """Closed outline of a key-image box as DICOM pixel coordinates, shape ``(5, 2)``.

    ``box_px`` holds inclusive 0-based pixel indices ``(column0, row0, column1, row1)``. DICOM
    graphic coordinates put ``0.0\\0.0`` at the top left corner of the top left pixel, so the
    outline that encloses pixels ``column0..column1`` runs from ``column0`` to
    ``column1 + 1`` (likewise for rows). Points are ``(column, row)``; the first equals the last.
    """
    c0, r0, c1, r1 = (float(v) for v in box_px)
    if c1 < c0 or r1 < r0:
        raise ValueError(f"box {box_px} has its second corner before its first")
    c1, r1 = c1 + 1.0, r1 + 1.0
    return np.array([[c0, r0], [c1, r0], [c1, r1], [c0, r1], [c0, r0]], dtype=np.float64)


#: The highdicom releases whose private IOD tables :func:`frame_numbers` reads and that the
#: result-object tests ran against (a PEP 440 specifier, the same as the pin in pyproject.toml).
TESTED_HIGHDICOM = ">=0.22,<0.29"


def highdicom_is_tested(version: str | None = None) -> bool:
    """True if ``version`` (default: the installed highdicom) is in :data:`TESTED_HIGHDICOM`."""
    try:
        return SpecifierSet(TESTED_HIGHDICOM).contains(version or hd.__version__, prereleases=True)
    except InvalidVersion:
        return False


def select_iod_lookup() -> Callable[[str, str], bool] | None:
    """highdicom's ``is_attribute_in_iod(keyword, sop_class_uid)`` on a tested release."""
    if highdicom_is_tested():
        try:
            from highdicom._standard_utils import is_attribute_in_iod  # no public equivalent
        except ImportError:
            pass
        else:
            return is_attribute_in_iod
    logger.warning(
        "highdicom %s is not a version the result objects were tested with (%s): key images "
        "carry a Referenced Frame Number only past frame 1",
        hd.__version__,
        TESTED_HIGHDICOM,
    )
    return None


#: Whether a SOP class's IOD holds an attribute, or None on an untested highdicom (tests set it
#: to None to run the fallback).
iod_lookup: Callable[[str, str], bool] | None = select_iod_lookup()


def select_module_usage() -> Callable[[str, str], object] | None:
    """highdicom's ``get_module_usage(module, sop_class_uid)`` on a tested release, else None."""
    if highdicom_is_tested():
        try:
            from highdicom._standard_utils import get_module_usage  # no public equivalent
        except ImportError:
            return None
        return get_module_usage
    return None


#: Usage of a module in a SOP class's IOD, or None on an untested highdicom (see
#: :func:`frame_of_reference_required`).
module_usage: Callable[[str, str], object] | None = select_module_usage()


def frame_of_reference_required(sop_class_uid: str) -> bool:
    """Whether the IOD of ``sop_class_uid`` makes the Frame of Reference module mandatory.

    highdicom builds a SEG on a source without Frame of Reference UID only when the source's
    own IOD does not require one (and the source is a single plane). On an untested highdicom,
    or a SOP class it does not know, the answer is True (no SEG rather than a refused one).
    """
    lookup = module_usage
    if lookup is None:
        return True
    try:
        usage = lookup("frame-of-reference", sop_class_uid)
    except KeyError:
        return True
    return str(getattr(usage, "value", usage)) == "M"


def frame_numbers(sop_class_uid: str, frame: int, number_of_frames: int = 1) -> list[int] | None:
    """Referenced Frame Number for a key image: only multi-frame instances carry one.

    An instance is multi-frame when its SOP class's IOD has Number of Frames (enhanced CT/MR,
    ultrasound and X-ray multi-frame, ...) or when it holds more than one frame
    (``number_of_frames``), whatever its class.
    """
    lookup = iod_lookup
    multiframe = frame > 1 or number_of_frames > 1  # a class highdicom does not know
    if lookup is not None:
        with contextlib.suppress(KeyError):
            multiframe = lookup("NumberOfFrames", sop_class_uid) or number_of_frames > 1
    return [frame] if multiframe else None


def reference_header(result: AIResult, instance: SourceInstance) -> Dataset:
    """A header of a source instance made from the result alone (no file read).

    Carries the study identity and the instance's UIDs and geometry: enough for highdicom to
    reference the instance as SR evidence.
    """
    ds = Dataset()
    ds.SOPClassUID = instance.sop_class_uid
    ds.SOPInstanceUID = instance.sop_instance_uid
    ds.SeriesInstanceUID = instance.series_instance_uid
    ds.Rows = instance.rows
    ds.Columns = instance.columns
    ds.SamplesPerPixel = 1
    apply_identity(ds, result.study)
    return ds


def read_header(result: AIResult, instance: SourceInstance, *, pixels: bool = False) -> Dataset:
    """The source instance's own header (with pixel data when ``pixels``).

    Raises:
        ResultObjectError: No path, an unreadable file, or a file of another instance.
    """
    study = result.study.study_instance_uid
    uid = instance.sop_instance_uid
    if instance.path is None:
        raise ResultObjectError(study, f"source instance {uid} has no file to read")
    try:
        ds = pydicom.dcmread(instance.path, stop_before_pixels=not pixels)
    except (OSError, InvalidDicomError) as exc:
        raise ResultObjectError(study, f"source instance {uid} unreadable: {exc}") from exc
    if str(ds.get("SOPInstanceUID", "")) != uid:
        raise ResultObjectError(study, f"file of source instance {uid} holds another instance")
    return ds


def display_window(header: Dataset) -> Window | None:
    """The window to show a source image with: brain window for a CT head, else the source's.

    Returns None when the source names no window (callers then use the pixel range).
    """
    modality = str(header.get("Modality", "")).upper()
    part = str(header.get("BodyPartExamined", "")).upper()
    if modality == "CT" and part in _HEAD_PARTS:
        return Window(*BRAIN_WINDOW_HU, "BRAIN")
    centers, widths = header.get("WindowCenter"), header.get("WindowWidth")
    if centers is None or widths is None:
        return None
    center = float(centers[0] if isinstance(centers, pydicom.multival.MultiValue) else centers)
    width = float(widths[0] if isinstance(widths, pydicom.multival.MultiValue) else widths)
    explanation = header.get("WindowCenterWidthExplanation", "SOURCE")
    if isinstance(explanation, pydicom.multival.MultiValue):
        explanation = explanation[0]
    return Window(center, max(width, 1.0), str(explanation) or "SOURCE")


def copy_anatomy(ds: Dataset, header: Dataset, *, unknown_laterality: bool = True) -> None:
    """Body Part Examined and Laterality of the source series, onto a new series.

    General Series needs Laterality (Type 2C) for paired body parts; without the source's body
    part it is unknown, which DICOM says to send empty (``unknown_laterality``). dciodvfy
    rejects that empty value in a Segmentation (whose frames may carry their own laterality),
    so the SEG leaves it out instead.
    """
    for keyword in ("BodyPartExamined", "Laterality"):
        if header.get(keyword):
            setattr(ds, keyword, header.get(keyword))
        elif keyword in ds:
            delattr(ds, keyword)  # highdicom's copy of an empty value
    if unknown_laterality and "BodyPartExamined" not in ds and "Laterality" not in ds:
        ds.Laterality = ""


def processing_equipment(result: AIResult) -> hd.ContributingEquipment:
    """Contributing Equipment item for the model (Purpose of Reference DCM 109102)."""
    algorithm = result.algorithm
    item = hd.ContributingEquipment(
        manufacturer=algorithm.manufacturer,
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=algorithm.name,
        software_versions=algorithm.version,
        contribution_datetime=dicom_datetime(result.completed_at),
        contribution_description="AI inference (preliminary, unverified)",
    )
    item.DeviceUID = algorithm.device_uid
    return item


class Equipment(TypedDict):
    """General Equipment arguments shared by every highdicom constructor."""

    manufacturer: str
    manufacturer_model_name: str
    software_versions: str
    device_serial_number: str


def equipment_kwargs(result: AIResult) -> Equipment:
    """General Equipment of a result object: statlane running this model version."""
    return {
        "manufacturer": MANUFACTURER,
        "manufacturer_model_name": result.algorithm.name,
        "software_versions": result.algorithm.version,
        # The device is the model version; its UID is the most stable serial it has.
        "device_serial_number": result.algorithm.device_uid,
    }


PATIENT_MODULE: Final = (
    "ReferencedPatientSequence", "PatientName", "PatientID", "IssuerOfPatientID",
    "TypeOfPatientID", "IssuerOfPatientIDQualifiersSequence",
    "SourcePatientGroupIdentificationSequence", "GroupOfPatientsIdentificationSequence",
    "PatientBirthDate", "PatientBirthTime", "PatientBirthDateInAlternativeCalendar",
    "PatientDeathDateInAlternativeCalendar", "PatientAlternativeCalendar", "PatientSex",
    "QualityControlSubject", "StrainDescription", "StrainNomenclature", "StrainStockSequence",
    "StrainAdditionalInformation", "StrainCodeSequence", "GeneticModificationsSequence",
    "OtherPatientNames", "OtherPatientIDsSequence", "ReferencedPatientPhotoSequence",
    "EthnicGroupCodeSequence", "PatientSpeciesDescription", "PatientSpeciesCodeSequence",
    "PatientBreedDescription", "PatientBreedCodeSequence", "BreedRegistrationSequence",
    "ResponsiblePerson", "ResponsiblePersonRole", "ResponsibleOrganization", "PatientComments",
    "PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence",
)  # fmt: skip
"""Patient module (PS3.3 C.7.1.1), top-level attributes."""
CLINICAL_TRIAL_SUBJECT_MODULE: Final = (
    "ClinicalTrialSponsorName", "ClinicalTrialProtocolID", "ClinicalTrialProtocolName",
    "IssuerOfClinicalTrialProtocolID", "OtherClinicalTrialProtocolIDsSequence",
    "ClinicalTrialSiteID", "ClinicalTrialSiteName", "IssuerOfClinicalTrialSiteID",
    "ClinicalTrialSubjectID", "IssuerOfClinicalTrialSubjectID", "ClinicalTrialSubjectReadingID",
    "IssuerOfClinicalTrialSubjectReadingID", "ClinicalTrialProtocolEthicsCommitteeName",
    "ClinicalTrialProtocolEthicsCommitteeApprovalNumber",
)  # fmt: skip
"""Clinical Trial Subject module (PS3.3 C.7.1.3)."""
GENERAL_STUDY_MODULE: Final = (
    "StudyDate", "StudyTime", "AccessionNumber", "IssuerOfAccessionNumberSequence",
    "ReferringPhysicianName", "ReferringPhysicianIdentificationSequence",
    "ConsultingPhysicianName", "ConsultingPhysicianIdentificationSequence", "StudyDescription",
    "ProcedureCodeSequence", "PhysiciansOfRecord", "PhysiciansOfRecordIdentificationSequence",
    "NameOfPhysiciansReadingStudy", "PhysiciansReadingStudyIdentificationSequence",
    "ReferencedStudySequence", "StudyInstanceUID", "StudyID", "RequestingService",
    "RequestingServiceCodeSequence", "ReasonForPerformedProcedureCodeSequence",
)  # fmt: skip
"""General Study module (PS3.3 C.7.2.1)."""
PATIENT_STUDY_MODULE: Final = (
    "AdmittingDiagnosesDescription", "AdmittingDiagnosesCodeSequence", "PatientAge",
    "PatientSize", "PatientSizeCodeSequence", "PatientBodyMassIndex", "MeasuredAPDimension",
    "MeasuredLateralDimension", "PatientWeight", "MedicalAlerts", "Allergies", "Occupation",
    "SmokingStatus", "AdditionalPatientHistory", "PregnancyStatus", "LastMenstrualDate",
    "PatientSexNeutered", "ReasonForVisit", "ReasonForVisitCodeSequence", "AdmissionID",
    "IssuerOfAdmissionIDSequence", "ServiceEpisodeID", "ServiceEpisodeDescription",
    "IssuerOfServiceEpisodeIDSequence", "PatientState",
)  # fmt: skip
"""Patient Study module (PS3.3 C.7.2.2)."""
CLINICAL_TRIAL_STUDY_MODULE: Final = (
    "ClinicalTrialTimePointID", "ClinicalTrialTimePointDescription",
    "LongitudinalTemporalOffsetFromEvent", "LongitudinalTemporalEventType",
    "ClinicalTrialTimePointTypeCodeSequence", "IssuerOfClinicalTrialTimePointID",
    "ConsentForClinicalTrialUseSequence",
)  # fmt: skip
"""Clinical Trial Study module (PS3.3 C.7.2.3)."""
IDENTITY_KEYWORDS: Final = (
    *PATIENT_MODULE,
    *CLINICAL_TRIAL_SUBJECT_MODULE,
    *GENERAL_STUDY_MODULE,
    *PATIENT_STUDY_MODULE,
    *CLINICAL_TRIAL_STUDY_MODULE,
)
"""Every attribute of the patient and study modules a result object shares with its source."""
_TYPE_2_KEYWORDS: Final = frozenset(
    {
        "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
        "AccessionNumber", "ReferringPhysicianName", "StudyID", "ClinicalTrialProtocolName",
        "ClinicalTrialSiteID", "ClinicalTrialSiteName", "ClinicalTrialTimePointID",
    }
)  # fmt: skip
"""Identity attributes that are copied even when empty (Type 2: present, maybe empty)."""
DEIDENTIFICATION_UNKNOWN: Final = "unknown: source did not say"
"""De-identification Method of a result whose source says it is de-identified but not how."""


def identity_modules(header: Dataset) -> Dataset:
    """The source's patient and study modules (:data:`IDENTITY_KEYWORDS`) as they were.

    Values are decoded with the source's character set (result objects are UTF-8); sequences
    are copied item by item. Empty values are left out except Type 2 attributes, which a
    result object must carry even empty.
    """
    modules = Dataset()
    for keyword in IDENTITY_KEYWORDS:
        if keyword not in header:
            continue
        element = header[keyword]  # decoded with the source's Specific Character Set
        if element.VR != "SQ" and element.is_empty and keyword not in _TYPE_2_KEYWORDS:
            continue
        modules.add(_decoded_copy(element))
    return modules


def _decoded_copy(element: DataElement) -> DataElement:
    """A copy of ``element`` with every value decoded (items of a sequence too)."""
    if element.VR == "SQ":
        items = []
        for item in element.value:
            copied = Dataset()
            for inner in item:  # iterating a Dataset decodes each element
                copied.add(_decoded_copy(inner))
            items.append(copied)
        return DataElement(element.tag, "SQ", DicomSequence(items))
    value = element.value
    if isinstance(value, list | pydicom.multival.MultiValue):
        value = list(value)
    return DataElement(element.tag, element.VR, value)


def apply_identity(ds: Dataset, study: StudyIdentity) -> None:
    """Make ``ds``'s patient and study modules the source study's, whole and valid.

    The one function every result object (SR, GSPS, SC, SEG) takes its identity from, so all
    four carry the same attributes: whatever highdicom copied from a source header is removed
    first; the Type 2 attributes are then set from ``study``, and every attribute of the
    source's Patient, Clinical Trial Subject, General Study, Patient Study and Clinical Trial
    Study modules (``study.modules``) is copied over them, de-identification included.

    De-identification: De-identification Method (0012,0063) is Type 1C, required when Patient
    Identity Removed (0012,0062) is YES and there is no De-identification Method Code Sequence
    (0012,0064); dciodvfy rejects an object without it. A source that says YES but neither how
    gets :data:`DEIDENTIFICATION_UNKNOWN` as its method: the result object must not claim
    identified data (dropping Patient Identity Removed would), and it must not invent a
    profile it cannot know.
    """
    for keyword in IDENTITY_KEYWORDS:
        if keyword in ds:
            delattr(ds, keyword)
    ds.PatientID = study.patient_id
    ds.PatientName = study.patient_name
    ds.PatientBirthDate = study.patient_birth_date
    ds.PatientSex = study.patient_sex
    ds.StudyInstanceUID = study.study_instance_uid
    ds.AccessionNumber = study.accession_number
    ds.StudyID = study.study_id
    ds.StudyDate = study.study_date
    ds.StudyTime = study.study_time
    ds.ReferringPhysicianName = study.referring_physician_name
    if study.study_description:
        ds.StudyDescription = study.study_description
    if study.issuer_of_patient_id:
        ds.IssuerOfPatientID = study.issuer_of_patient_id
    if study.modules is not None:
        for element in study.modules:
            ds.add(_decoded_copy(element))
        ds.StudyInstanceUID = study.study_instance_uid  # the result joins this study, always
    removed = str(ds.get("PatientIdentityRemoved", "")).upper() == "YES"
    if (
        removed
        and not ds.get("DeidentificationMethod")
        and not ds.get("DeidentificationMethodCodeSequence")
    ):
        ds.DeidentificationMethod = DEIDENTIFICATION_UNKNOWN


def dicom_date(moment: datetime) -> str:
    """DICOM DA of ``moment`` (its own time zone)."""
    return moment.strftime("%Y%m%d")


def dicom_time(moment: datetime) -> str:
    """DICOM TM of ``moment`` (its own time zone), whole seconds."""
    return moment.strftime("%H%M%S")


def dicom_datetime(moment: datetime) -> str:
    """DICOM DT of ``moment``, whole seconds, without offset (Timezone Offset From UTC has it).

    14 characters: an even length needs no padding, which dcmpschk rejects in a DT.
    """
    return moment.strftime("%Y%m%d%H%M%S")


def finish(ds: Dataset, result: AIResult, identity: ObjectIdentity) -> None:
    """Identity, character set, series and timestamps common to every result object.

    Every date and time the object carries is ``result.completed_at``, so building the same
    result twice yields the same object.
    """
    apply_identity(ds, result.study)
    ds.SpecificCharacterSet = CHARACTER_SET
    ds.SeriesDescription = identity.series_description
    date, time = dicom_date(result.completed_at), dicom_time(result.completed_at)
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.SeriesDate, ds.SeriesTime = date, time
    for prefix in ("Content", "PresentationCreation"):
        if f"{prefix}Date" in ds:
            setattr(ds, f"{prefix}Date", date)
            setattr(ds, f"{prefix}Time", time)
    if "DateOfSecondaryCapture" in ds:
        ds.DateOfSecondaryCapture, ds.TimeOfSecondaryCapture = date, time
    zone = result.completed_at.strftime("%z")  # "+0000", or "" for a naive datetime
    if zone:
        ds.TimezoneOffsetFromUTC = zone
    for item in ds.get("ContributingEquipmentSequence", []):
        # highdicom stamps its own contribution with the wall clock; the build is part of
        # the task, so it gets the task's time (acquisition equipment keeps its own).
        if item.get("ManufacturerModelName") == "highdicom":
            item.ContributionDateTime = dicom_datetime(result.completed_at)
    logger.debug(
        "built %s %s for study %s",
        ds.get("Modality", "?"),
        identity.sop_instance_uid,
        result.study.study_instance_uid,
    )
