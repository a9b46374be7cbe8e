"""The AI result as a Secondary Capture: the key slice with boxes and a warning burned in.

For viewers and PACS that show neither SR nor GSPS. The key slice is read from the spool,
rescaled to modality units (Hounsfield units for CT), windowed (the brain window for a CT head)
to 8-bit MONOCHROME2 and enlarged by a whole factor (nearest neighbour) until it is about
:data:`TARGET_SIZE_PX` wide, so the burned-in text stays legible. Each located finding on that
slice gets a white outline drawn just outside its pixels; a black banner at the top says
"AI result - preliminary" and names the findings (the first few, then how many more: a
multi-label segmentation can put dozens of organs on one slice). BurnedInAnnotation is YES.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Final

import highdicom as hd
import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont
from pydicom import Dataset
from pydicom.pixels import apply_modality_lut

from models.postprocess import Finding
from router.objects.common import (
    CHARACTER_SET,
    Window,
    clip_box,
    copy_anatomy,
    display_window,
    equipment_kwargs,
    finish,
    frame_numbers,
    key_box,
    located_findings,
    object_identity,
    processing_equipment,
    read_header,
    source_instance,
)
from router.result import AIResult, KeyImage

TARGET_SIZE_PX: Final = 512
"""The capture is enlarged by a whole factor until its longer side reaches about this."""
BANNER_TEXT: Final = "AI result - preliminary"
WHITE: Final = 255
MAX_BANNER_FINDINGS: Final = 4
"""Findings named in the banner; the others are counted (every box is drawn)."""
_AXIS_LETTERS: Final = (("L", "R"), ("P", "A"), ("H", "F"))  # + and - along LPS x, y, z


def build_sc(result: AIResult) -> Dataset | None:
    """A Secondary Capture of the first located finding's key slice; None without one.

    Raises:
        ResultObjectError: The key slice's file is missing or unreadable.
    """
    located = located_findings(result)
    if not located:
        return None
    first_key = located[0][1]
    on_slice = [
        (f, k)
        for f, k in located
        if (k.sop_instance_uid, k.frame) == (first_key.sop_instance_uid, first_key.frame)
    ]
    instance = source_instance(result, first_key.sop_instance_uid)
    header = read_header(result, instance, pixels=True)
    window = display_window(header)
    boxed = [(f, dataclasses.replace(k, box_px=key_box(result, k))) for f, k in on_slice]
    pixels, scale = render(header, first_key.frame, window, boxed)
    identity = object_identity(result, "sc")
    sc = hd.sc.SCImage(
        pixel_array=pixels,
        photometric_interpretation="MONOCHROME2",
        bits_allocated=8,
        coordinate_system="PATIENT",
        study_instance_uid=result.study.study_instance_uid,
        series_instance_uid=identity.series_instance_uid,
        series_number=identity.series_number,
        sop_instance_uid=identity.sop_instance_uid,
        instance_number=1,
        # highdicom takes single letters only; the source's own orientation replaces it below
        patient_orientation=("L", "P"),
        contributing_equipment=[processing_equipment(result)],
        specific_character_set=CHARACTER_SET,
        series_description=identity.series_description,
        content_date=result.completed_at.date(),
        content_time=result.completed_at.time(),
        **equipment_kwargs(result),
    )
    sc.PatientOrientation = patient_orientation(header)
    sc.BurnedInAnnotation = "YES"
    sc.ConversionType = "WSD"  # made on a workstation, not digitised from film or video
    source = Dataset()
    source.ReferencedSOPClassUID = instance.sop_class_uid
    source.ReferencedSOPInstanceUID = instance.sop_instance_uid
    frames = frame_numbers(instance.sop_class_uid, first_key.frame, instance.number_of_frames)
    if frames is not None:
        source.ReferencedFrameNumber = frames
    sc.SourceImageSequence = [source]
    shown = f"W {window.width:g} L {window.center:g}" if window else "full range"
    sc.DerivationDescription = f"key slice, {shown}, enlarged x{scale}, AI marks burned in"
    copy_anatomy(sc, header)
    finish(sc, result, identity)
    return sc


def render(
    header: Dataset,
    frame: int,
    window: Window | None,
    marks: list[tuple[Finding, KeyImage]],
) -> tuple[npt.NDArray[np.uint8], int]:
    """The burned-in capture of one frame and its enlargement factor.

    Args:
        header: Source instance with pixel data.
        frame: 1-based frame number.
        window: Window in modality units; None stretches the frame's full range.
        marks: Findings whose boxes (source pixel indices) are drawn; each box is clipped to
            the frame first, and its outline to the capture, so every mark stays inside.

    Raises:
        ValueError: ``frame`` is not one of the instance's frames.
    """
    stored = header.pixel_array
    frames = int(header.get("NumberOfFrames", 1) or 1)
    if not 1 <= frame <= frames:
        raise ValueError(f"frame {frame} of an instance with {frames} frames")
    if frames > 1:
        stored = stored[frame - 1]
    values = np.asarray(apply_modality_lut(stored, header), dtype=np.float64)
    if window is None:
        low, high = float(values.min()), float(values.max())
        window = Window((low + high) / 2.0, max(high - low, 1.0), "FULL RANGE")
    gray = window.to_uint8(values)
    if str(header.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        gray = 255 - gray  # the capture is MONOCHROME2: keep bone white
    rows, columns = gray.shape
    scale = max(1, math.ceil(TARGET_SIZE_PX / max(rows, columns)))
    image = Image.fromarray(gray).resize((columns * scale, rows * scale), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(image)
    line = outline_width(image.width, image.height)
    for _, key in marks:
        box = clip_box(key.box_px, rows, columns)
        draw.rectangle(
            outline_rectangle(box, scale, line, image.width, image.height),
            outline=WHITE,
            width=line,
        )
    _banner(draw, image.width, banner_lines([f for f, _ in marks]))
    return np.asarray(image, dtype=np.uint8).copy(), scale


def outline_width(width: int, height: int) -> int:
    """Line width of a burned-in box, pixels of the capture."""
    return max(2, round(min(width, height) / 256))


def outline_rectangle(
    box_px: tuple[float, float, float, float],
    scale: int,
    line: int,
    width: int | None = None,
    height: int | None = None,
) -> tuple[int, int, int, int]:
    """PIL rectangle whose ``line``-wide border lies just outside the box's pixels.

    ``box_px`` holds inclusive source pixel indices; the capture is ``scale`` times larger.
    Given the capture's ``width`` and ``height`` (pixels), the rectangle is kept inside it: a
    box on the image's edge gets its border just inside the edge instead.
    """
    c0, r0, c1, r1 = (round(v) for v in box_px)
    left, top = c0 * scale - line, r0 * scale - line
    right, bottom = (c1 + 1) * scale - 1 + line, (r1 + 1) * scale - 1 + line
    if width is not None:
        left, right = max(left, 0), min(right, width - 1)
    if height is not None:
        top, bottom = max(top, 0), min(bottom, height - 1)
    return (left, top, right, bottom)


def patient_orientation(header: Dataset) -> list[str]:
    """Patient Orientation of the source: its own, else from Image Orientation (Patient).

    Letters per axis are ordered by weight and include every component above 0.25 (oblique
    axes get two or three letters). Empty when the source has neither.
    """
    own = header.get("PatientOrientation")
    if own is not None and len(own) == 2:
        return [str(v) for v in own]
    iop = header.get("ImageOrientationPatient")
    if iop is None or len(iop) != 6:
        return []
    return [_letters([float(v) for v in iop[:3]]), _letters([float(v) for v in iop[3:]])]


def _letters(direction: list[float]) -> str:
    order = sorted(range(3), key=lambda axis: -abs(direction[axis]))
    return "".join(
        _AXIS_LETTERS[axis][0 if direction[axis] > 0 else 1]
        for axis in order
        if abs(direction[axis]) > 0.25
    )


def banner_lines(findings: list[Finding]) -> list[str]:
    """The banner: the warning, then at most :data:`MAX_BANNER_FINDINGS` findings and a count.

    A multi-label segmentation can put dozens of organs on one key slice; listing them all
    would cover the image.
    """
    shown = [_label(f) for f in findings[:MAX_BANNER_FINDINGS]]
    rest = len(findings) - len(shown)
    return [BANNER_TEXT, *shown, *([f"+{rest} more findings"] if rest > 0 else [])]


def _label(finding: Finding) -> str:
    return f"{finding.concept_meaning} p={finding.probability:.2f}"


def _banner(draw: ImageDraw.ImageDraw, width: int, lines: list[str]) -> None:
    size = max(12, width // 32)
    try:
        font: ImageFont.FreeTypeFont | ImageFont.ImageFont = ImageFont.load_default(size=size)
    except (ImportError, OSError):  # Pillow built without FreeType: the bitmap font
        font = ImageFont.load_default()
    pad = max(2, size // 4)
    height = pad + len(lines) * (size + pad)
    draw.rectangle((0, 0, width - 1, height - 1), fill=0)
    for i, text in enumerate(lines):
        draw.text((pad, pad + i * (size + pad)), text, fill=WHITE, font=font)
