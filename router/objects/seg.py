"""The AI result's mask as a binary DICOM Segmentation on the source series.

The mask arrives on the source grid, one plane per source instance in slice order, so the
segmentation references the source images frame for frame; empty planes are left out. One
segment per located finding, typed by the finding's code and tracked by the same Tracking UID
as the finding's SR measurement group and GSPS graphic.
"""

from __future__ import annotations

from typing import Final

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes

from models.postprocess import Finding
from router.objects.common import (
    CHARACTER_SET,
    ResultObjectError,
    copy_anatomy,
    equipment_kwargs,
    finding_code,
    finding_tracking_uid,
    finish,
    located_findings,
    object_identity,
    processing_equipment,
    read_header,
)
from router.objects.uids import dimension_organization_uid
from router.result import AIResult

CATEGORY: Final = hd.sr.CodedConcept(*codes.SCT.MorphologicallyAbnormalStructure)
AI_FAMILY: Final = hd.sr.CodedConcept(*codes.cid7162.ArtificialIntelligence)  # DCM 123110


def build_seg(result: AIResult) -> Dataset | None:
    """A binary SEG of ``result.mask``; None without a mask, a located finding or a voxel.

    The mask is ``(len(source_instances), rows, columns)`` and belongs to the single located
    finding (present, with a key image).

    Raises:
        ResultObjectError: A mask of the wrong shape, one mask for several located findings,
            or an unreadable source instance.
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
    located = located_findings(result)
    if not located or not mask.any():
        return None
    if len(located) > 1:
        names = ", ".join(f.name for f, _ in located)
        raise ResultObjectError(
            study_uid, f"one mask cannot be split between the located findings {names}"
        )
    finding = located[0][0]
    headers = [read_header(result, instance) for instance in instances]
    identity = object_identity(result, "seg")
    seg = hd.seg.Segmentation(
        source_images=headers,
        pixel_array=mask.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment(result, finding, 1)],
        series_instance_uid=identity.series_instance_uid,
        series_number=identity.series_number,
        sop_instance_uid=identity.sop_instance_uid,
        instance_number=1,
        content_label="AI_MASK",
        content_description=identity.series_description,
        omit_empty_frames=True,
        contributing_equipment=[processing_equipment(result)],
        specific_character_set=CHARACTER_SET,
        series_description=identity.series_description,
        content_date=result.completed_at.date(),
        content_time=result.completed_at.time(),
        **equipment_kwargs(result),
    )
    # highdicom draws this UID at random; derived, a re-run yields the very same object
    organization = dimension_organization_uid(identity.sop_instance_uid)
    for item in (*seg.DimensionOrganizationSequence, *seg.DimensionIndexSequence):
        item.DimensionOrganizationUID = organization
    copy_anatomy(seg, headers[0])
    finish(seg, result, identity)
    return seg


def segment(result: AIResult, finding: Finding, number: int) -> hd.seg.SegmentDescription:
    """Segment ``number`` for ``finding``: its code as property type, the model as algorithm."""
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=finding.concept_meaning[:64],
        segmented_property_category=CATEGORY,
        segmented_property_type=finding_code(finding),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=result.algorithm.name, family=AI_FAMILY, version=result.algorithm.version
        ),
        tracking_uid=finding_tracking_uid(result, finding),
        tracking_id=finding.name,
    )
