"""Reading one short string element of a received header the cheap way.

A header from :func:`serving.gateway.instance_header.read_header` keeps its elements raw, as
pydicom's own reader does; pydicom converts one on first access (character set lookup, value
validation, ``MultiValue`` splitting), which costs tens of microseconds per element. The ingest
thread reads a handful of elements of every instance (series, accession, patient ID,
modality, expected count) under the GIL the receiving associations need, so
:func:`element_text` decodes the common case itself: a single value of plain ASCII in one of
the short string VRs, where every DICOM character set decodes the bytes alike. Anything else
(a converted element, a multi-value, an escape sequence, bytes above 0x7F, another VR) goes
through pydicom and gives exactly what ``str(dataset.get(keyword, ""))`` gives.
"""

from __future__ import annotations

from functools import cache

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

__all__ = ["element_count", "element_text"]

_PLAIN_VRS = frozenset({"AE", "CS", "LO", "SH", "UI"})
"""VRs whose single ASCII value pydicom decodes to the bytes with trailing spaces and NULs
stripped (and leading whitespace too for UI), whatever the Specific Character Set. IS is not
one: pydicom's ``IS`` normalises the number."""

_ESCAPE = b"\x1b"  # ISO 2022 code extension: pydicom switches character sets on it
_DELIMITER = b"\\"  # value multiplicity: pydicom makes a MultiValue


@cache
def _dictionary_entry(keyword: str) -> tuple[BaseTag, str] | None:
    """The tag and dictionary VR of ``keyword``; None for an unknown keyword."""
    tag = tag_for_keyword(keyword)
    return None if tag is None else (BaseTag(tag), dictionary_VR(tag))


def element_text(dataset: Dataset, keyword: str) -> str:
    """``str(dataset.get(keyword, ""))``, decoding a raw single ASCII value without pydicom.

    Raises:
        Whatever pydicom raises converting an element it cannot decode (only on its path).
    """
    entry = _dictionary_entry(keyword)
    if entry is not None:
        tag, vr = entry
        element = dataset.get_item(tag)
        if element is None:
            return ""
        if isinstance(element, RawDataElement) and element.VR in (None, vr) and vr in _PLAIN_VRS:
            raw = element.value
            if not raw:  # pydicom's empty value of a string VR
                return ""
            if (
                isinstance(raw, bytes)
                and raw.isascii()
                and _ESCAPE not in raw
                and _DELIMITER not in raw
            ):
                text = raw.decode("ascii").rstrip(" \x00")
                return text.strip() if vr == "UI" else text  # pydicom's UID strips both ends
    return str(dataset.get(keyword, ""))


def element_count(dataset: Dataset, keyword: str) -> int | None:
    """An integer string element (e.g. ImagesInAcquisition) as an int; None when absent,
    empty or not one whole number."""
    text = element_text(dataset, keyword).strip()
    if not text or text == "None":
        return None
    try:
        number = float(text)
    except ValueError:
        return None
    return int(number) if number.is_integer() else None
