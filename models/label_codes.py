"""Reviewed table from segmentation label names to DICOM coded concepts.

Bundles name their output channels in free text (``channel_def`` / ``label_def`` in
``configs/metadata.json``): ``"spleen"``, ``"kidney_left"``, ``"Left Kideny"``, ``"IVC"``,
``"vertebrae_L1"``. DICOM SEG needs a coded Segmented Property Type for each segment. This module
maps the label names the MONAI model-zoo CT bundles write (TotalSegmentator v1 labels of
``wholeBody_ct_segmentation``, the 13 BTCV labels of ``swin_unetr_btcv_segmentation``, spleen,
liver and pancreas) to concepts **taken only from the DICOM code dictionary shipped with pydicom**
(``pydicom.sr.codedict.codes``). The table stores pydicom keywords only; value and meaning are read
from pydicom on first use, so no code value or meaning is typed by hand here.

Rules the table follows:

* Laterality. pydicom's dictionary has no "Left kidney" / "Right adrenal gland" concepts, so paired
  structures map to the unlateralised concept (``Kidney``) and :func:`laterality_for_label` gives
  the SCT ``Left`` / ``Right`` concept to put in the segment's Segmented Property Type Modifier
  Code Sequence, as DICOM SEG does. Where pydicom has a lateralised concept (``LeftAtrium``,
  ``RightVentricle``, ``StructureOfUpperLobeOfLeftLung``, ``MiddleLobeOfRightLung``) it is used
  and no modifier is given.
* Vertebrae are mapped to their specific concept (C1-C7, T1-T12, L1-L5 all exist). Ribs are not
  mapped: pydicom has only the generic ``Rib``, no numbered rib.
* Structures without a concept that means the same thing are left unmapped: the caller writes a
  marked placeholder. Unmapped on purpose: ``heart_myocardium`` (pydicom has only "Left Ventricle
  Myocardium"), ``hip_*`` (the hip *bone*; pydicom's ``Hip`` is the hip region), gluteus
  maximus/medius/minimus, ``autochthon_*`` (broader than "Erector spinae muscle"), iliopsoas and
  the 24 numbered ribs.
* Entries in :data:`APPROXIMATE_LABELS` are coded with the nearest concept pydicom has; the
  segment is not exactly that concept (``portal_vein_and_splenic_vein`` -> "Portal vein").
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from pydicom.sr.codedict import codes

__all__ = [
    "ANATOMICAL_STRUCTURE",
    "APPROXIMATE_LABELS",
    "LabelCode",
    "code_for_label",
    "laterality_for_label",
    "normalise_label",
    "reviewed_labels",
]


@dataclass(frozen=True)
class LabelCode:
    """One coded concept from pydicom's DICOM code dictionary.

    Attributes:
        value: Code value, e.g. ``"78961009"``.
        scheme: Coding scheme designator, e.g. ``"SCT"``.
        meaning: Code meaning as pydicom gives it, e.g. ``"Spleen"``.
        keyword: pydicom keyword, e.g. ``"Spleen"`` (``codes.SCT.Spleen``).
    """

    value: str
    scheme: str
    meaning: str
    keyword: str


def _from_pydicom(keyword: str, scheme: str = "SCT") -> LabelCode:
    """Build a :class:`LabelCode` from ``codes.<scheme>.<keyword>``; raises if pydicom lacks it."""
    try:
        code = getattr(getattr(codes, scheme), keyword)
    except AttributeError as exc:  # pragma: no cover - only on a pydicom that dropped a keyword
        raise LookupError(f"pydicom has no {scheme} concept with keyword {keyword!r}") from exc
    return LabelCode(
        value=str(code.value),
        scheme=str(code.scheme_designator),
        meaning=str(code.meaning),
        keyword=keyword,
    )


# SEG Segmented Property Category for organs and other anatomy (CID 7150): SCT 91723000.
ANATOMICAL_STRUCTURE: LabelCode = _from_pydicom("AnatomicalStructure")

_LATERALITY_TOKENS = ("left", "right")

# Normalised label (see normalise_label) -> pydicom SCT keyword.
_TABLE: dict[str, str] = {
    # Abdomen (TotalSegmentator v1 1-12; BTCV 1-13; spleen/pediatric bundles).
    "spleen": "Spleen",
    "right_kidney": "Kidney",
    "left_kidney": "Kidney",
    "gallbladder": "Gallbladder",
    "liver": "Liver",
    "stomach": "Stomach",
    "aorta": "Aorta",
    "inferior_vena_cava": "InferiorVenaCava",
    "portal_vein_and_splenic_vein": "PortalVein",
    "pancreas": "Pancreas",
    "right_adrenal_gland": "AdrenalGland",
    "left_adrenal_gland": "AdrenalGland",
    "esophagus": "Esophagus",
    # BTCV spellings as swin_unetr_btcv_segmentation's channel_def writes them.
    "ivc": "InferiorVenaCava",
    "portal_and_splenic_veins": "PortalVein",
    "left_kideny": "Kidney",  # sic: the published channel_def misspells "Left Kidney"
    # Lung lobes.
    "left_lung_upper_lobe": "StructureOfUpperLobeOfLeftLung",
    "left_lung_lower_lobe": "LowerLobeOfLung",
    "right_lung_upper_lobe": "UpperLobeOfLung",
    "right_lung_middle_lobe": "MiddleLobeOfRightLung",
    "right_lung_lower_lobe": "LowerLobeOfLung",
    # Vertebrae.
    **{f"vertebrae_c{n}": f"C{n}Vertebra" for n in range(1, 8)},
    **{f"vertebrae_t{n}": f"T{n}Vertebra" for n in range(1, 13)},
    **{f"vertebrae_l{n}": f"L{n}Vertebra" for n in range(1, 6)},
    # Chest, heart and vessels.
    "trachea": "Trachea",
    "left_heart_atrium": "LeftAtrium",
    "left_heart_ventricle": "LeftVentricle",
    "right_heart_atrium": "RightAtrium",
    "right_heart_ventricle": "RightVentricle",
    "pulmonary_artery": "PulmonaryArtery",
    "left_iliac_artery": "IliacArtery",
    "right_iliac_artery": "IliacArtery",
    "left_iliac_vena": "IliacVein",
    "right_iliac_vena": "IliacVein",
    # Head, bowel, bladder.
    "brain": "Brain",
    "face": "Face",
    "small_bowel": "SmallIntestine",
    "duodenum": "Duodenum",
    "colon": "Colon",
    "urinary_bladder": "Bladder",
    # Bones.
    "left_humerus": "Humerus",
    "right_humerus": "Humerus",
    "left_scapula": "Scapula",
    "right_scapula": "Scapula",
    "left_clavicula": "Clavicle",
    "right_clavicula": "Clavicle",
    "left_femur": "Femur",
    "right_femur": "Femur",
    "sacrum": "Sacrum",
}

# Keywords whose concept already carries the side: no laterality modifier for them.
_LATERALISED_KEYWORDS = frozenset(
    {
        "LeftAtrium",
        "LeftVentricle",
        "RightAtrium",
        "RightVentricle",
        "StructureOfUpperLobeOfLeftLung",
        "MiddleLobeOfRightLung",
    }
)

#: Normalised labels coded with the nearest concept pydicom has, not an exact one: the segment
#: contains the portal *and* the splenic vein, the code says "Portal vein".
APPROXIMATE_LABELS: frozenset[str] = frozenset(
    {"portal_vein_and_splenic_vein", "portal_and_splenic_veins"}
)


def normalise_label(label: str) -> str:
    """Normalise a bundle's label name to the table's key.

    Lower-case, strip, spaces and hyphens to ``_`` (runs collapsed), and a single ``left`` /
    ``right`` token moved to the front, so ``"Left Kidney"``, ``"left-kidney"`` and
    ``"kidney_left"`` all give ``"left_kidney"`` and ``"rib_left_3"`` gives ``"left_rib_3"``.
    """
    key = re.sub(r"[\s\-_]+", "_", label.strip().lower()).strip("_")
    tokens = key.split("_")
    sides = [t for t in tokens if t in _LATERALITY_TOKENS]
    if len(sides) == 1 and tokens[0] != sides[0]:
        tokens.remove(sides[0])
        tokens.insert(0, sides[0])
    return "_".join(tokens)


@functools.cache
def _resolved() -> dict[str, LabelCode]:
    return {key: _from_pydicom(keyword) for key, keyword in _TABLE.items()}


def code_for_label(label: str) -> LabelCode | None:
    """The reviewed concept for ``label``, or ``None`` when the table has none.

    Paired structures give the unlateralised concept (left and right kidney both give
    ``Kidney``); use :func:`laterality_for_label` for the side.
    """
    return _resolved().get(normalise_label(label))


def laterality_for_label(label: str) -> LabelCode | None:
    """SCT ``Left`` / ``Right`` for a coded paired structure whose concept has no side.

    ``None`` for unpaired structures, for concepts that already carry the side
    (``LeftAtrium``) and for labels the table does not code.
    """
    key = normalise_label(label)
    keyword = _TABLE.get(key)
    if keyword is None or keyword in _LATERALISED_KEYWORDS:
        return None
    side = key.split("_", 1)[0]
    if side not in _LATERALITY_TOKENS:
        return None
    return _from_pydicom(side.capitalize())


def reviewed_labels() -> list[str]:
    """Normalised labels that have a reviewed code, sorted."""
    return sorted(_TABLE)
