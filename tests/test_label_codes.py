"""The reviewed label code table: every code comes from pydicom's DICOM code dictionary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import pytest
from pydicom.sr._concepts_dict import concepts
from pydicom.sr.codedict import codes

from models.label_codes import (
    ANATOMICAL_STRUCTURE,
    APPROXIMATE_LABELS,
    LabelCode,
    code_for_label,
    laterality_for_label,
    normalise_label,
    reviewed_labels,
)

BUNDLES = Path(__file__).parent / "fixtures" / "monai-bundles"

# What the table achieves on the wholeBody bundle's 104 TotalSegmentator v1 labels. Unmapped:
# 24 ribs, heart_myocardium, hip x2, gluteus x6, autochthon x2, iliopsoas x2.
WHOLEBODY_CODED_FLOOR = 67


def _output_labels(bundle: str) -> list[str]:
    meta = json.loads((BUNDLES / bundle / "configs" / "metadata.json").read_text())
    pred = meta["network_data_format"]["outputs"]["pred"]
    names = pred.get("channel_def") or pred["label_def"]
    return [
        name for _, name in sorted(names.items(), key=lambda kv: int(kv[0])) if name != "background"
    ]


def test_every_entry_resolves_in_pydicom_to_the_same_value_and_meaning() -> None:
    labels = reviewed_labels()
    assert labels == sorted(labels)
    assert len(labels) == len(set(labels))
    for label in labels:
        assert normalise_label(label) == label, label
        code = code_for_label(label)
        assert isinstance(code, LabelCode), label
        assert code.scheme == "SCT"
        pd = getattr(codes.SCT, code.keyword)
        assert (pd.value, pd.scheme_designator, pd.meaning) == (code.value, "SCT", code.meaning)
        # And independently in the raw concept dictionary pydicom builds ``codes`` from.
        entry = cast(dict[str, tuple[str, list[int]]], concepts["SCT"][code.keyword])
        assert entry[code.value][0] == code.meaning, label


def test_anatomical_structure_is_the_cid_7150_category() -> None:
    expected = LabelCode("91723000", "SCT", "Anatomical Structure", "AnatomicalStructure")
    assert expected == ANATOMICAL_STRUCTURE
    assert codes.cid7150.AnatomicalStructure.value == ANATOMICAL_STRUCTURE.value


@pytest.mark.parametrize(
    ("label", "value", "meaning"),
    [
        ("spleen", "78961009", "Spleen"),
        ("Spleen", "78961009", "Spleen"),
        ("liver", "10200004", "Liver"),
        ("Liver", "10200004", "Liver"),
        ("vertebrae_L1", "66794005", "L1 vertebra"),
        ("urinary_bladder", "89837001", "Bladder"),
    ],
)
def test_known_codes(label: str, value: str, meaning: str) -> None:
    code = code_for_label(label)
    assert code is not None
    assert (code.value, code.scheme, code.meaning) == (value, "SCT", meaning)


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("Left Kidney", "left_kidney"),
        ("kidney_left", "left_kidney"),
        ("left_kidney", "left_kidney"),
        ("  left-kidney ", "left_kidney"),
        ("Right adrenal gland", "right_adrenal_gland"),
        ("adrenal_gland_right", "right_adrenal_gland"),
        ("rib_left_3", "left_rib_3"),
        ("heart_ventricle_left", "left_heart_ventricle"),
        ("vertebrae_L1", "vertebrae_l1"),
        ("Portal and Splenic Veins", "portal_and_splenic_veins"),
    ],
)
def test_normalise_label(raw: str, key: str) -> None:
    assert normalise_label(raw) == key


def test_laterality_variants_map_alike() -> None:
    kidney = code_for_label("Kidney_Left")
    assert kidney is not None
    assert kidney.keyword == "Kidney"
    for variant in ("kidney_left", "left kidney", "Left Kidney", "left_kidney", "kidney_right"):
        assert code_for_label(variant) == kidney, variant
    assert code_for_label("adrenal_gland_left") == code_for_label("Left adrenal gland")
    assert code_for_label("Left Kideny") == kidney  # the BTCV bundle's published spelling

    left, right = laterality_for_label("kidney_left"), laterality_for_label("Right Kidney")
    assert left is not None
    assert (left.value, left.meaning) == ("7771000", "Left")
    assert right is not None
    assert (right.value, right.meaning) == ("24028007", "Right")
    assert laterality_for_label("left kidney") == left
    # Unpaired, already lateralised, or uncoded: no modifier.
    assert laterality_for_label("spleen") is None
    assert laterality_for_label("heart_atrium_left") is None
    assert laterality_for_label("lung_upper_lobe_left") is None
    assert laterality_for_label("rib_left_3") is None


def test_lateralised_concepts_when_pydicom_has_them() -> None:
    expected = {
        "heart_atrium_left": "LeftAtrium",
        "heart_ventricle_left": "LeftVentricle",
        "heart_atrium_right": "RightAtrium",
        "heart_ventricle_right": "RightVentricle",
        "lung_upper_lobe_left": "StructureOfUpperLobeOfLeftLung",
        "lung_middle_lobe_right": "MiddleLobeOfRightLung",
    }
    for label, keyword in expected.items():
        code = code_for_label(label)
        assert code is not None, label
        assert code.keyword == keyword, label


@pytest.mark.parametrize(
    "label",
    ["no_such_organ", "", "rib_left_3", "heart_myocardium", "hip_left", "gluteus_maximus_right"],
)
def test_unknown_or_unreviewed_label_is_none(label: str) -> None:
    assert code_for_label(label) is None


def test_btcv_organs_all_coded() -> None:
    btcv = _output_labels("swin_unetr_btcv_segmentation")
    assert len(btcv) == 13
    missing = [label for label in btcv if code_for_label(label) is None]
    assert missing == []
    # The BTCV and TotalSegmentator spellings of the same organ give the same code.
    pairs = [
        ("IVC", "inferior_vena_cava"),
        ("Right Kidney", "kidney_right"),
        ("Portal and Splenic Veins", "portal_vein_and_splenic_vein"),
        ("Right adrenal gland", "adrenal_gland_right"),
    ]
    for btcv_name, ts_name in pairs:
        assert code_for_label(btcv_name) == code_for_label(ts_name)


def test_small_bundles_fully_coded() -> None:
    for bundle in ("spleen_ct_segmentation", "pediatric_abdominal_ct_segmentation"):
        labels = _output_labels(bundle)
        assert labels, bundle
        assert all(code_for_label(label) is not None for label in labels), bundle


def test_wholebody_coverage_report() -> None:
    labels = _output_labels("wholeBody_ct_segmentation")
    assert len(labels) == 104
    coded = [label for label in labels if code_for_label(label) is not None]
    uncoded = sorted(set(labels) - set(coded))
    print(f"wholeBody_ct_segmentation: {len(coded)}/{len(labels)} labels coded; uncoded: {uncoded}")
    assert len(coded) >= WHOLEBODY_CODED_FLOOR
    # Every vertebra has its specific concept; no rib does.
    assert all(code_for_label(label) is not None for label in labels if label.startswith("vert"))
    assert all(code_for_label(label) is None for label in labels if label.startswith("rib_"))


def test_approximate_labels_are_table_entries() -> None:
    assert set(APPROXIMATE_LABELS) <= set(reviewed_labels())
