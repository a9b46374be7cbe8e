"""element_text gives exactly what pydicom's conversion gives, on raw and converted elements."""

from __future__ import annotations

import itertools
from io import BytesIO

import pytest
from pydicom import dcmread
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import BaseTag, Tag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from serving.gateway.element_text import element_count, element_text

_VALUES = [
    b"",
    b"CT",
    b"CT ",
    b"CT\x00",
    b" CT",
    b"A\\B",
    b"ACC-12 ",
    b"\xc3\xa9t\xc3\xa9",
    b"\x1b$B",
    b"12",
    b" 12",
    b"12.0",
    b"1.2.840.10008.5.1.4.1.1.2\x00",
]
_CHARSETS = [None, "ISO_IR 100", "ISO_IR 192", "ISO 2022 IR 87", "GB18030"]
_KEYWORDS = {
    "Modality": (0x00080060, "CS"),
    "AccessionNumber": (0x00080050, "SH"),
    "PatientID": (0x00100020, "LO"),
    "SeriesInstanceUID": (0x0020000E, "UI"),
    "ImagesInAcquisition": (0x00201002, "IS"),
    "StationName": (0x00081010, "SH"),
}


def _raw(tag: int, vr: str | None, value: bytes) -> RawDataElement:
    return RawDataElement(Tag(tag), vr, len(value), value, 0, vr is None, True)


def _header(charset: str | None, keyword: str, vr: str | None, value: bytes) -> Dataset:
    tag, _ = _KEYWORDS[keyword]
    elements: dict[BaseTag, DataElement | RawDataElement] = {}
    if charset is not None:
        elements[Tag(0x00080005)] = _raw(0x00080005, "CS", charset.encode())
    elements[Tag(tag)] = _raw(tag, vr, value)
    return Dataset(elements)


def _pydicom(dataset: Dataset, keyword: str) -> str | type[Exception]:
    try:
        return str(dataset.get(keyword, ""))
    except Exception as exc:  # noqa: BLE001 - whatever pydicom raises, the fast path must too
        return type(exc)


@pytest.mark.parametrize("keyword", sorted(_KEYWORDS))
def test_raw_elements_match_pydicom(keyword: str) -> None:
    checked = 0
    dictionary_vr = _KEYWORDS[keyword][1]
    for charset, value, vr in itertools.product(
        _CHARSETS, _VALUES, (dictionary_vr, None, "UN", "LT")
    ):
        expected = _pydicom(_header(charset, keyword, vr, value), keyword)
        header = _header(charset, keyword, vr, value)
        if isinstance(expected, type):
            with pytest.raises(expected):
                element_text(header, keyword)
        else:
            assert element_text(header, keyword) == expected, (charset, value, vr)
        checked += 1
    assert checked == len(_CHARSETS) * len(_VALUES) * 4


def test_absent_and_converted_elements() -> None:
    header = Dataset()
    assert element_text(header, "AccessionNumber") == ""
    header.AccessionNumber = "A1"
    header.Modality = ["CT", "PT"]
    assert element_text(header, "AccessionNumber") == "A1"
    assert element_text(header, "Modality") == str(header.Modality)
    header.StudyDescription = "not a plain short string VR"  # LO, but through pydicom alike
    assert element_text(header, "StudyDescription") == "not a plain short string VR"


def test_a_written_file_reads_the_same() -> None:
    ds = Dataset()
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "PID 7"
    ds.AccessionNumber = "ACC1"
    ds.Modality = "CT"
    ds.ImagesInAcquisition = 40
    ds.file_meta = FileMetaDataset()
    for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        ds.file_meta.TransferSyntaxUID = syntax
        buffer = BytesIO()
        ds.save_as(buffer, implicit_vr=syntax.is_implicit_VR, little_endian=True)
        raw = dcmread(BytesIO(buffer.getvalue()), force=True)
        converted = dcmread(BytesIO(buffer.getvalue()), force=True)
        for keyword in ("SOPInstanceUID", "SeriesInstanceUID", "PatientID", "AccessionNumber"):
            assert element_text(raw, keyword) == str(converted.get(keyword)), keyword
        assert element_count(raw, "ImagesInAcquisition") == 40


@pytest.mark.parametrize(
    ("value", "count"),
    [(b"40", 40), (b" 40 ", 40), (b"40.0", 40), (b"", None), (b"4.5", None), (b"x", None)],
)
def test_element_count(value: bytes, count: int | None) -> None:
    header = Dataset({Tag(0x00201002): _raw(0x00201002, "IS", value)})
    if value == b"x":  # pydicom refuses to convert it: no count rather than an error
        header = Dataset({Tag(0x00201002): _raw(0x00201002, "LO", value)})
    assert element_count(header, "ImagesInAcquisition") == count
    assert element_count(Dataset(), "ImagesInAcquisition") is None
