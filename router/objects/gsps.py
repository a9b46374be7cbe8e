"""The AI result as a Grayscale Softcopy Presentation State: boxes a radiologist can toggle.

The presentation state applies to the whole source series (so its window holds on every slice)
and draws, on each key slice, the finding's box as a closed polyline with a label (finding and
probability) on one graphic layer, ``AI FINDINGS``, that a viewer can switch off. A line in
display units says the marks are a preliminary AI result.
"""

from __future__ import annotations

from typing import Final

import highdicom as hd
from pydicom import Dataset

from models.postprocess import Finding
from router.objects.common import (
    CHARACTER_SET,
    ResultObjectError,
    box_outline,
    clip_box,
    copy_anatomy,
    display_window,
    equipment_kwargs,
    finding_tracking_uid,
    finish,
    frame_numbers,
    key_box,
    located_findings,
    object_identity,
    processing_equipment,
    read_header,
    unique_instances,
)
from router.result import AIResult, KeyImage

LAYER: Final = "AI FINDINGS"
"""Graphic Layer name (CS, upper case) that holds every AI mark."""
CONTENT_LABEL: Final = "AI_FINDINGS"
DISCLAIMER: Final = "AI result - preliminary"
_LAYER_COLOR: Final = hd.color.CIELabColor(97.1, -21.6, 94.5)  # yellow
_LABEL_HEIGHT_FRACTION: Final = 0.08  # of the image's rows


def build_gsps(result: AIResult) -> Dataset | None:
    """A GSPS marking every located finding on its key slice; None without a key image.

    Reads the headers (not the pixels) of the source instances for their modality LUT,
    geometry and window, each instance once (a multi-frame instance's marks name its frame).
    Every graphic lies inside its image: boxes are clipped to the source's pixel grid and
    widened to one pixel at least (:func:`~router.objects.common.clip_box`).

    Raises:
        ResultObjectError: A key image outside the source series, or an unreadable source.
    """
    located = located_findings(result)
    if not located:
        return None
    identity = object_identity(result, "gsps")
    headers = {
        i.sop_instance_uid: presentable(read_header(result, i)) for i in unique_instances(result)
    }
    layer = hd.pr.GraphicLayer(
        layer_name=LAYER,
        order=1,
        description="AI findings (preliminary)",
        display_color=_LAYER_COLOR,
    )
    annotations = [_annotation(result, finding, key, headers, layer) for finding, key in located]
    key_header = headers[located[0][1].sop_instance_uid]
    window = display_window(key_header)
    voi = (
        [
            hd.pr.SoftcopyVOILUTTransformation(
                window_center=[window.center],
                window_width=[window.width],
                window_explanation=[window.explanation],
            )
        ]
        if window is not None
        else None
    )
    gsps = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=list(headers.values()),
        series_instance_uid=identity.series_instance_uid,
        series_number=identity.series_number,
        sop_instance_uid=identity.sop_instance_uid,
        instance_number=1,
        content_label=CONTENT_LABEL,
        content_description=identity.series_description,
        graphic_annotations=annotations,
        graphic_layers=[layer],
        voi_lut_transformations=voi,
        contributing_equipment=[processing_equipment(result)],
        specific_character_set=CHARACTER_SET,
        series_description=identity.series_description,
        **equipment_kwargs(result),
    )
    copy_anatomy(gsps, key_header)
    finish(gsps, result, identity)
    return gsps


def presentable(header: Dataset) -> Dataset:
    """``header`` as highdicom's presentation state takes it.

    highdicom reads a multi-frame image's Modality LUT from its Shared Functional Groups. A
    multi-frame instance without functional groups (a plain multi-frame image, or an enhanced
    one that lost them) gets a copy with one shared item holding its top-level rescale, if
    any, and an empty item per frame; the GSPS references the instance by UID and frame
    only, so nothing else changes.
    """
    frames = int(header.get("NumberOfFrames", 1) or 1)
    if frames <= 1 or "SharedFunctionalGroupsSequence" in header:
        return header
    shared = Dataset()
    if "RescaleSlope" in header and "RescaleIntercept" in header:
        transform = Dataset()
        transform.RescaleSlope = header.RescaleSlope
        transform.RescaleIntercept = header.RescaleIntercept
        transform.RescaleType = header.get("RescaleType", "US")
        shared.PixelValueTransformationSequence = [transform]
    copied = Dataset(header)  # shallow: the source's elements are not changed
    copied.SharedFunctionalGroupsSequence = [shared]
    if "PerFrameFunctionalGroupsSequence" not in copied:
        copied.PerFrameFunctionalGroupsSequence = [Dataset() for _ in range(frames)]
    return copied


def label_box(
    box_px: tuple[float, float, float, float], rows: int, columns: int
) -> tuple[float, float, float, float]:
    """Where a finding's label goes, pixel units: a band just above its box, else below.

    The box is clipped to the ``rows`` x ``columns`` image first
    (:func:`~router.objects.common.clip_box`), so the label stays inside the image too. A box
    too tall for a full band on either side (an organ spanning the image) gets the larger of
    the two gaps, or, with no gap at all, a band inside its top edge.
    """
    outline = box_outline(clip_box(box_px, rows, columns))
    left, top, bottom = float(outline[0, 0]), float(outline[0, 1]), float(outline[2, 1])
    height = max(8.0, round(rows * _LABEL_HEIGHT_FRACTION))
    below = float(rows) - bottom
    if top >= height:
        y0, y1 = top - height, top
    elif below >= height:
        y0, y1 = bottom, bottom + height
    elif max(top, below) >= 1.0:
        y0, y1 = (0.0, top) if top >= below else (bottom, float(rows))
    else:
        y0, y1 = top, min(float(rows), top + height)
    right = float(columns)
    if left >= right - 1.0:  # a box on the right edge: the label starts at the left
        left = 0.0
    return (left, y0, right, y1)


def _annotation(
    result: AIResult,
    finding: Finding,
    key: KeyImage,
    headers: dict[str, Dataset],
    layer: hd.pr.GraphicLayer,
) -> hd.pr.GraphicAnnotation:
    header = headers.get(key.sop_instance_uid)
    if header is None:
        raise ResultObjectError(
            result.study.study_instance_uid,
            f"key image {key.sop_instance_uid} is not one of the result's source instances",
        )
    tracking_uid = finding_tracking_uid(result, finding)
    box_px = key_box(result, key)
    box = hd.pr.GraphicObject(
        graphic_type=hd.pr.GraphicTypeValues.POLYLINE,
        graphic_data=box_outline(box_px),
        units=hd.pr.AnnotationUnitsValues.PIXEL,
        is_filled=False,
        tracking_id=finding.name,
        tracking_uid=tracking_uid,
    )
    label = hd.pr.TextObject(
        text_value=f"{finding.concept_meaning} p={finding.probability:.2f}",
        units=hd.pr.AnnotationUnitsValues.PIXEL,
        bounding_box=label_box(box_px, int(header.Rows), int(header.Columns)),
        text_justification=hd.pr.TextJustificationValues.LEFT,
        tracking_id=finding.name,
        tracking_uid=tracking_uid,
    )
    disclaimer = hd.pr.TextObject(
        text_value=DISCLAIMER,
        units=hd.pr.AnnotationUnitsValues.DISPLAY,
        bounding_box=(0.01, 0.01, 0.6, 0.06),
        text_justification=hd.pr.TextJustificationValues.LEFT,
    )
    return hd.pr.GraphicAnnotation(
        referenced_images=[header],
        graphic_layer=layer,
        referenced_frame_number=frame_numbers(
            str(header.SOPClassUID), key.frame, int(header.get("NumberOfFrames", 1) or 1)
        ),
        graphic_objects=[box],
        text_objects=[label, disclaimer],
    )
