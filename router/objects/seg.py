"""The AI result's label map as a binary DICOM Segmentation on the source series.

The label map arrives on the source grid, one plane per source plane in slice order (an
instance, or a frame of a multi-frame instance), so the segmentation references the source
images (or the source frames of an enhanced multi-frame instance) frame for frame; empty frames
are left out.

Not applicable (:class:`~router.objects.common.ObjectNotApplicable`, audited with its reason):
a source without Frame of Reference UID unless it is a single plane of a SOP class whose IOD
does not require one (the SEG IOD itself makes the Frame of Reference optional, but without it
highdicom can only place one plane, and a source that must have one and lacks it cannot be
referenced validly); a multi-frame source made of several instances, or without functional
groups (a SEG on frames takes plane positions from one enhanced instance). One
segment per present finding whose label occurs in the map (segment numbers 1..K in label
order), typed by the finding's code and category and tracked by the same Tracking UID as the
finding's SR measurement group and GSPS graphic.

Frames: highdicom's ``Segmentation`` builds every frame and its per-frame functional groups in
Python, one segment and plane at a time, which costs seconds for a 100-label whole-body CT.
With highdicom :data:`FAST_FRAMES_HIGHDICOM` and two segments or more, highdicom builds the
object around a two-segment skeleton that has the same non-empty planes (so every module,
plane position, derivation and dimension index is its own), and this module then writes the
frames and their functional groups exactly as highdicom would, from each label's bounding box.
:data:`FAST_FRAMES` switches back to highdicom for every frame; a test holds the two paths to
byte-identical objects.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.dataelem import DataElement
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.tag import BaseTag
from scipy import ndimage

from models.postprocess import Finding
from router.objects.common import (
    CHARACTER_SET,
    FINDING_CATEGORY,
    ObjectNotApplicable,
    ResultObjectError,
    copy_anatomy,
    equipment_kwargs,
    finding_category,
    finding_code,
    finding_label,
    finding_laterality,
    finding_tracking_uid,
    finish,
    frame_of_reference_required,
    located_findings,
    object_identity,
    processing_equipment,
    read_header,
    unique_instances,
)
from router.objects.uids import dimension_organization_uid
from router.result import AIResult

CATEGORY: Final = FINDING_CATEGORY
AI_FAMILY: Final = hd.sr.CodedConcept(*codes.cid7162.ArtificialIntelligence)  # DCM 123110

FAST_FRAMES: bool = True
"""Write frames and per-frame functional groups here (False: highdicom builds every frame)."""
FAST_FRAMES_HIGHDICOM: Final = "0.28.2"
"""The highdicom release whose frame layout the fast path reproduces (checked by a test)."""

_DIMENSION_INDEX_VALUES: Final = BaseTag(0x00209157)
_FRAME_CONTENT_SEQUENCE: Final = BaseTag(0x00209111)
_PLANE_POSITION_SEQUENCE: Final = BaseTag(0x00209113)
_DERIVATION_IMAGE_SEQUENCE: Final = BaseTag(0x00089124)
_SEGMENT_IDENTIFICATION_SEQUENCE: Final = BaseTag(0x0062000A)
_REFERENCED_SEGMENT_NUMBER: Final = BaseTag(0x0062000B)


@dataclass(frozen=True)
class Segment:
    """One segment of the SEG: the label it is made of and the finding it shows.

    Attributes:
        number: Segment Number, 1..K in label order.
        label: The label map value (``findings[label - 1]``; 1 for a bool mask).
        finding: The finding.
        box: The label's bounding box on the mask (slices, rows, columns).
    """

    number: int
    label: int
    finding: Finding
    box: tuple[slice, ...]


def build_seg(result: AIResult) -> Dataset | None:
    """A binary SEG of ``result.mask``; None without a mask or a present finding's voxel.

    The mask is ``(len(source_instances), rows, columns)``: a label map (value ``v > 0`` is
    ``result.findings[v - 1]``) or a bool mask of the single located finding. Labels of
    findings that are not present are left out.

    Raises:
        ResultObjectError: A mask of the wrong shape or type, a label without a finding, a
            bool mask with several located findings, or an unreadable source instance.
        ObjectNotApplicable: No valid SEG can reference this source (see the module).
    """
    mask = result.mask
    if mask is None:
        return None
    study_uid = result.study.study_instance_uid
    instances = result.source_instances
    if not instances:
        raise ResultObjectError(study_uid, "a SEG needs the source instances")
    expected = (len(instances), instances[0].rows, instances[0].columns)
    if mask.shape != expected:
        raise ResultObjectError(
            study_uid, f"mask shape {mask.shape} does not match the source grid {expected}"
        )
    labels, segments = segments_of(result)
    if not segments:
        return None
    sources = unique_instances(result)
    headers = [read_header(result, instance) for instance in sources]
    _check_applicable(result, headers)
    multiframe = any(i.number_of_frames > 1 for i in instances)
    if multiframe:
        labels = _labels_by_frame(result, labels, int(headers[0].get("NumberOfFrames", 1)))
    identity = object_identity(result, "seg")
    descriptions = [segment(result, s.finding, s.number) for s in segments]
    kwargs: dict[str, Any] = {
        "source_images": headers,
        "segmentation_type": hd.seg.SegmentationTypeValues.BINARY,
        "series_instance_uid": identity.series_instance_uid,
        "series_number": identity.series_number,
        "sop_instance_uid": identity.sop_instance_uid,
        "instance_number": 1,
        "content_label": "AI_MASK",
        "content_description": identity.series_description,
        "omit_empty_frames": True,
        "contributing_equipment": [processing_equipment(result)],
        "specific_character_set": CHARACTER_SET,
        "series_description": identity.series_description,
        "content_date": result.completed_at.date(),
        "content_time": result.completed_at.time(),
        **equipment_kwargs(result),
    }
    seg: Dataset | None = None
    if fast_frames_apply(len(segments)) and not multiframe:
        seg = _fast_segmentation(labels, segments, descriptions, kwargs)
    if seg is None:
        seg = hd.seg.Segmentation(
            pixel_array=_segment_numbers(labels, segments),
            segment_descriptions=descriptions,
            **kwargs,
        )
    # highdicom draws this UID at random; derived, a re-run yields the very same object
    organization = dimension_organization_uid(identity.sop_instance_uid)
    for item in (*seg.DimensionOrganizationSequence, *seg.DimensionIndexSequence):
        item.DimensionOrganizationUID = organization
    copy_anatomy(seg, headers[0], unknown_laterality=False)
    # A SEG's General Series never takes Laterality (dciodvfy: "present when condition
    # unsatisfied" whatever the body part; a frame's laterality belongs in Frame Anatomy).
    seg.pop("Laterality", None)
    if "FrameOfReferenceUID" not in seg and "PatientOrientation" not in seg:
        # General Image, Type 2C: required when the planes are not placed in patient space
        seg.PatientOrientation = headers[0].get("PatientOrientation") or ""
    _fill_slice_thickness(seg, result)
    finish(seg, result, identity)
    return seg


def _fill_slice_thickness(seg: Dataset, result: AIResult) -> None:
    """Give the SEG's Pixel Measures a Slice Thickness where the source had none.

    Pixel Measures need Slice Thickness (Type 1C) once the frames are placed in a Frame of
    Reference; CT and MR make it Type 2, so a source may leave it empty. The distance between
    neighbouring source planes (mm) stands in for it; a single plane without one gives no SEG.

    Raises:
        ObjectNotApplicable: One source plane and no Slice Thickness.
    """
    if "FrameOfReferenceUID" not in seg:
        return
    groups = [*seg.get("SharedFunctionalGroupsSequence", [])]
    groups += [*seg.get("PerFrameFunctionalGroupsSequence", [])]
    for group in groups:
        for measures in group.get("PixelMeasuresSequence", []):
            if measures.get("SliceThickness") not in (None, ""):
                continue
            step = plane_step_mm(result)
            if step is None:
                raise ObjectNotApplicable(
                    "seg", "source has one plane and no Slice Thickness for the SEG's frames"
                )
            measures.SliceThickness = round(step, 6)


def plane_step_mm(result: AIResult) -> float | None:
    """Smallest non-zero distance between consecutive source plane positions (mm), or None."""
    positions = [i.position_lps for i in result.source_instances if i.position_lps is not None]
    steps = [float(np.linalg.norm(np.subtract(b, a))) for a, b in itertools.pairwise(positions)]
    nonzero = [step for step in steps if step > 1e-6]
    return min(nonzero) if nonzero else None


def _check_applicable(result: AIResult, headers: Sequence[Dataset]) -> None:
    """Raise :class:`ObjectNotApplicable` when no valid SEG can reference these sources."""
    first = headers[0]
    planes = len(result.source_instances)
    frames = int(first.get("NumberOfFrames", 1) or 1)
    if frames > 1 or any(i.number_of_frames > 1 for i in result.source_instances):
        if len(headers) > 1:
            raise ObjectNotApplicable(
                "seg",
                f"source series has {len(headers)} multi-frame instances; a SEG on "
                "frames references one",
            )
        if "SharedFunctionalGroupsSequence" not in first:
            raise ObjectNotApplicable(
                "seg",
                f"multi-frame source {first.SOPInstanceUID} has no functional groups "
                "to place the SEG's frames",
            )
    frame_of_reference = str(first.get("FrameOfReferenceUID", "") or "")
    other_uids = {str(first.get(k, "")) for k in ("StudyInstanceUID", "SeriesInstanceUID")}
    if frame_of_reference and frame_of_reference in other_uids:
        raise ObjectNotApplicable(
            "seg",
            "source Frame of Reference UID repeats its Study or Series Instance UID: not a "
            "frame of reference a SEG can share",
        )
    if "FrameOfReferenceUID" not in first:
        if planes > 1 or frames > 1:
            raise ObjectNotApplicable(
                "seg",
                f"source series of {planes} planes has no Frame of Reference UID to "
                "place the SEG's frames",
            )
        if frame_of_reference_required(str(first.SOPClassUID)):
            raise ObjectNotApplicable(
                "seg",
                f"source {first.SOPInstanceUID} has no Frame of Reference UID, which "
                "its IOD requires",
            )


def _labels_by_frame(result: AIResult, labels: np.ndarray, frames: int) -> np.ndarray:
    """The label map in the multi-frame source's frame order (frame ``f`` at index ``f - 1``).

    Plane ``i`` of the mask is ``source_instances[i]``, frame ``source_instances[i].frame``;
    frames the mask does not cover stay empty.

    Raises:
        ResultObjectError: A plane names a frame the instance does not have, or two planes
            the same frame.
    """
    out = np.zeros((frames, *labels.shape[1:]), dtype=labels.dtype)
    seen: set[int] = set()
    for plane, instance in enumerate(result.source_instances):
        if not 1 <= instance.frame <= frames or instance.frame in seen:
            raise ResultObjectError(
                result.study.study_instance_uid,
                f"mask plane {plane} names frame {instance.frame} of "
                f"{instance.sop_instance_uid}, which has {frames} frames",
            )
        seen.add(instance.frame)
        out[instance.frame - 1] = labels[plane]
    return out


def fast_frames_apply(segment_count: int) -> bool:
    """Whether this module writes the frames (switch on, known highdicom, >= 2 segments).

    With one segment highdicom puts its identification in the shared functional groups;
    that small case stays with highdicom.
    """
    return FAST_FRAMES and hd.__version__ == FAST_FRAMES_HIGHDICOM and segment_count >= 2


def segments_of(result: AIResult) -> tuple[np.ndarray, list[Segment]]:
    """The mask as unsigned labels and its segments: present findings whose label occurs.

    One pass over the mask (``ndimage.find_objects``) finds the labels and their boxes.

    Raises:
        ResultObjectError: A label beyond the findings, a mask of another type, or a bool mask
            with several located findings.
    """
    mask = result.mask
    assert mask is not None
    study_uid = result.study.study_instance_uid
    if mask.dtype == np.bool_:
        located = located_findings(result)
        if len(located) > 1 and mask.any():
            names = ", ".join(f.name for f, _ in located)
            raise ResultObjectError(
                study_uid, f"one bool mask cannot be split between the located findings {names}"
            )
        labels = mask.view(np.uint8)
        owners = [located[0][0]] if located else []
    elif mask.dtype.kind == "u" or (mask.dtype.kind == "i" and int(mask.min(initial=0)) >= 0):
        labels, owners = mask, list(result.findings)
    else:
        raise ResultObjectError(study_uid, f"mask of {mask.dtype} is not a label map")
    boxes = ndimage.find_objects(labels)
    if len(boxes) > len(owners) and any(box is not None for box in boxes[len(owners) :]):
        top = max(v for v, box in enumerate(boxes, 1) if box is not None)
        raise ResultObjectError(
            study_uid, f"label {top} names no finding (the result has {len(result.findings)})"
        )
    segments: list[Segment] = []
    for value, box in enumerate(boxes, 1):
        if box is not None and owners[value - 1].present:
            segments.append(Segment(len(segments) + 1, value, owners[value - 1], box))
    return labels, segments


def _segment_numbers(labels: np.ndarray, segments: Sequence[Segment]) -> np.ndarray:
    """The label map with each label replaced by its segment number (0 for the rest)."""
    top = max(int(labels.max()), max(s.label for s in segments))
    lookup = np.zeros(top + 1, dtype=np.uint8 if len(segments) < 256 else np.uint16)
    for s in segments:
        lookup[s.label] = s.number
    numbers: np.ndarray = lookup[labels]
    return numbers


def segment(result: AIResult, finding: Finding, number: int) -> hd.seg.SegmentDescription:
    """Segment ``number`` for ``finding``: its code as property type, the model as algorithm.

    The category is the finding's own (an organ: SCT 91723000 Anatomical Structure), else
    morphologically abnormal structure.
    """
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=finding_label(finding),
        segmented_property_category=finding_category(finding),
        segmented_property_type=finding_code(finding),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=result.algorithm.name, family=AI_FAMILY, version=result.algorithm.version
        ),
        tracking_uid=finding_tracking_uid(result, finding),
        tracking_id=finding.name,
    )
    side = finding_laterality(finding)
    if side is not None:  # a paired organ's side modifies its property type (PS3.3 C.8.20.2)
        item = description.SegmentedPropertyTypeCodeSequence[0]
        item.SegmentedPropertyTypeModifierCodeSequence = DicomSequence([side])
    return description


# ---- fast frames ------------------------------------------------------------------------------


def _occupied_planes(labels: np.ndarray, s: Segment) -> np.ndarray:
    """The planes (mask axis 0) where segment ``s``'s label occurs, ascending."""
    inside = labels[s.box] == s.label
    planes: np.ndarray = np.flatnonzero(inside.any(axis=(1, 2))) + s.box[0].start
    return planes


def _fast_segmentation(
    labels: np.ndarray,
    segments: Sequence[Segment],
    descriptions: Sequence[hd.seg.SegmentDescription],
    kwargs: dict[str, Any],
) -> Dataset | None:
    """The SEG highdicom would build from ``labels``, with the frames written here.

    highdicom builds a skeleton: the first two segments described, segment 1 on one pixel of
    every plane that any segment occupies. Its modules, plane order, plane positions,
    derivation items and dimension indices are therefore those of the full object; the segment
    sequence, per-frame functional groups (segment-major, planes in highdicom's order) and the
    bit-packed pixel data are then replaced. Each label is read on its bounding box only.
    Returns None when the skeleton is not laid out as expected (the caller then lets
    highdicom build every frame).
    """
    planes = [_occupied_planes(labels, s) for s in segments]
    occupied = np.zeros(labels.shape[0], dtype=bool)
    for found in planes:
        occupied[found] = True
    skeleton = np.zeros(labels.shape, dtype=np.uint8)
    skeleton[occupied, 0, 0] = 1
    seg = hd.seg.Segmentation(
        pixel_array=skeleton, segment_descriptions=list(descriptions[:2]), **kwargs
    )
    template = _plane_templates(seg, kwargs["source_images"])
    if template is None or len(template) != int(occupied.sum()):
        return None
    items: list[Dataset] = []
    packed: list[bytes] = []
    rows, columns = labels.shape[1], labels.shape[2]
    loose: list[np.ndarray] = []  # frames of a size that is no multiple of 8 pixels
    for s, found in zip(segments, planes, strict=True):
        ordered = found[np.argsort([template[int(p)][0] for p in found], kind="stable")]
        identification = _segment_identification(s.number)
        for plane in ordered:
            position_index, position, derivation = template[int(plane)]
            items.append(
                _frame_item(s.number, position_index, position, derivation, identification)
            )
        full = np.zeros((len(ordered), rows, columns), dtype=bool)
        full[:, s.box[1], s.box[2]] = labels[ordered, s.box[1], s.box[2]] == s.label
        if (rows * columns) % 8 == 0:
            packed.append(np.packbits(full, bitorder="little").tobytes())
        else:
            loose.append(full)
    if loose:  # highdicom packs one bit stream across frames
        packed = [np.packbits(np.concatenate(loose), bitorder="little").tobytes()]
    seg.SegmentSequence = list(descriptions)
    seg.PerFrameFunctionalGroupsSequence = items
    seg.NumberOfFrames = len(items)
    data = b"".join(packed)
    seg.PixelData = data + b"0" if len(data) % 2 else data  # highdicom's padding byte
    plain = Dataset(seg)  # the object without the skeleton's frame lookup tables
    plain.file_meta = seg.file_meta
    plain.preamble = seg.preamble
    return plain


def _plane_templates(
    seg: Dataset, headers: Sequence[Dataset]
) -> dict[int, tuple[int, DicomSequence, DicomSequence]] | None:
    """Per occupied plane (mask axis 0): its position index and shared sequences.

    Each skeleton frame is segment 1 on one plane; None if any is not.
    """
    if len(seg.DimensionIndexSequence) != 2:  # segment number, image position
        return None
    plane_of_uid = {str(h.SOPInstanceUID): index for index, h in enumerate(headers)}
    template: dict[int, tuple[int, DicomSequence, DicomSequence]] = {}
    for item in seg.PerFrameFunctionalGroupsSequence:
        derivation = item[_DERIVATION_IMAGE_SEQUENCE].value
        sources = derivation[0].SourceImageSequence
        segment_number, position_index = item.FrameContentSequence[0].DimensionIndexValues
        if len(sources) != 1 or segment_number != 1:
            return None
        plane = plane_of_uid[str(sources[0].ReferencedSOPInstanceUID)]
        template[plane] = (int(position_index), item[_PLANE_POSITION_SEQUENCE].value, derivation)
    return template


def _segment_identification(number: int) -> DicomSequence:
    """Segment Identification Sequence of every frame of segment ``number`` (one object)."""
    identification = Dataset()
    identification.add(DataElement(_REFERENCED_SEGMENT_NUMBER, "US", number))
    return DicomSequence([identification])


def _frame_item(
    number: int,
    position_index: int,
    position: DicomSequence,
    derivation: DicomSequence,
    identification: DicomSequence,
) -> Dataset:
    """One Per-Frame Functional Groups item, with highdicom's content.

    The plane's position and derivation and the segment's identification are shared by the
    frames that have them (highdicom shares the first two as well); elements go straight into
    the item's mapping (``Dataset(dict)``), which skips pydicom's per-element bookkeeping.
    """
    content = Dataset(
        {
            _DIMENSION_INDEX_VALUES: DataElement(
                _DIMENSION_INDEX_VALUES, "UL", [number, position_index]
            )
        }
    )
    return Dataset(
        {
            _FRAME_CONTENT_SEQUENCE: DataElement(
                _FRAME_CONTENT_SEQUENCE, "SQ", DicomSequence([content]), already_converted=True
            ),
            _PLANE_POSITION_SEQUENCE: DataElement(
                _PLANE_POSITION_SEQUENCE, "SQ", position, already_converted=True
            ),
            _DERIVATION_IMAGE_SEQUENCE: DataElement(
                _DERIVATION_IMAGE_SEQUENCE, "SQ", derivation, already_converted=True
            ),
            _SEGMENT_IDENTIFICATION_SEQUENCE: DataElement(
                _SEGMENT_IDENTIFICATION_SEQUENCE, "SQ", identification, already_converted=True
            ),
        }
    )
