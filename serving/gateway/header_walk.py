"""The fast path of :func:`serving.gateway.instance_header.read_header`: an ordinary Part-10
file walked with :mod:`struct` straight from the bytes into pydicom's raw elements.

The walk skips pydicom's per-element reader (about 2 us an element through a file object) and
never copies the pixel data; it builds the very ``RawDataElement`` tuples pydicom builds. Whatever
pydicom would treat specially gives up the walk (:func:`walk_part10` returns None), and
``instance_header`` reads the file with ``dcmread``, so both paths accept, refuse and return the
same: no "DICM", a file meta group length that does not match, a deflated or private transfer
syntax, a command set, an unknown VR, tags out of order or repeated, an item or delimiter at the
top level, a stream that ends inside an element header, an unusual Specific Character Set, and
an empty pixel data or last element (pydicom would decode those while checking them).

Fenced: this module uses pydicom internals (``RawDataElement`` built with ``tuple.__new__``,
``filereader.data_element_generator`` and ``ENCODED_VR``, ``valuerep.EXPLICIT_VR_LENGTH_32``).
``instance_header`` imports it only when the installed pydicom is in
:data:`~serving.gateway.instance_header.TESTED_PYDICOM`; ``pyproject.toml`` pins pydicom to the
same range.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from io import BytesIO
from struct import Struct
from typing import NamedTuple, cast

from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import DataElement, RawDataElement, empty_value_for_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import ENCODED_VR, data_element_generator
from pydicom.tag import BaseTag
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    PrivateTransferSyntaxes,
)
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32
from pydicom.values import convert_string

from serving.gateway.part10 import is_valid_uid

__all__ = ["WalkedHeader", "walk_part10"]

_TRANSFER_SYNTAX_UID = BaseTag(0x00020010)
_UNDEFINED_LENGTH = 0xFFFFFFFF
_PIXEL_DATA = 0x7FE00010
_OTHER_PIXEL_DATA = (0x7FE00008, 0x7FE00009)  # Float / Double Float Pixel Data
_PIXEL_TAGS = frozenset({_PIXEL_DATA, *_OTHER_PIXEL_DATA})  # tested once per element


class WalkedHeader(NamedTuple):
    """What :func:`walk_part10` read: the header to keep, and what is only checked.

    Attributes:
        header: The data set without its pixel data elements, with its ``file_meta``.
        last: The element with the highest tag (pixel data included): where a cut stream ends.
        pixel_data: The Pixel Data value, see ``instance_header._check_pixel_data``.
        other_pixel_data: Float or Double Float Pixel Data is present.
    """

    header: Dataset
    last: RawDataElement | DataElement
    pixel_data: bytes | memoryview | None
    other_pixel_data: bool


_PREAMBLE_END = 132  # 128-byte preamble and b"DICM"
_GROUP_LENGTH_TAG = 0x00020000
_CHARACTER_SET_TAG = 0x00080005
# Items and delimiters, group FFFE: pydicom ends or misreads a data set there.
_FIRST_DELIMITER, _LAST_DELIMITER = 0xFFFE0000, 0xFFFEFFFF
# Explicit VR: encoded VR -> (VR, whether a 4-byte length follows two reserved bytes).
_EXPLICIT_VRS = {
    encoded: (encoded.decode(default_encoding), encoded.decode() in EXPLICIT_VR_LENGTH_32)
    for encoded in ENCODED_VR
    if len(encoded) == 2
}
_EXPLICIT_LE = Struct("<HH2sH").unpack_from
_EXPLICIT_BE = Struct(">HH2sH").unpack_from
_IMPLICIT_LE = Struct("<HHL").unpack_from
_LENGTH_LE = Struct("<L").unpack_from
_LENGTH_BE = Struct(">L").unpack_from
# A RawDataElement from a tuple of all nine fields: RawDataElement._make without its Python
# frame and its length check (moot: every call passes nine). Faster than both _make and the
# keyword-handling constructor.
_raw_element = cast(
    Callable[[tuple[object, ...]], RawDataElement], partial(tuple.__new__, RawDataElement)
)


def _explicit_element_header(
    data: bytes, pos: int, little: bool
) -> tuple[int, str, int, int] | None:
    """The Explicit VR element header at ``pos``: its tag, VR, value length and value offset.

    Tag, VR and a 16-bit length; or, for the VRs of :data:`EXPLICIT_VR_LENGTH_32` (OB, SQ,
    UN...), two reserved bytes and a 32-bit length after them. ``data`` holds at least 8 bytes
    from ``pos``. None for a VR pydicom does not know, and for a 12-byte header cut by the end.

    Both walks (file meta and data set) decode their headers here: one Python call an element,
    which :data:`_raw_element` pays back in part (one frame fewer than ``_make``).
    """
    group, element, encoded_vr, length = (_EXPLICIT_LE if little else _EXPLICIT_BE)(data, pos)
    known = _EXPLICIT_VRS.get(encoded_vr)
    if known is None:
        return None
    vr, long_length = known
    if not long_length:
        return group << 16 | element, vr, length, pos + 8
    if len(data) - pos < 12:
        return None
    length = (_LENGTH_LE if little else _LENGTH_BE)(data, pos + 8)[0]
    return group << 16 | element, vr, length, pos + 12


def _empty_value(vr: str | None) -> bytes | None:
    """The value pydicom's reader gives an element of length 0 (it depends on its config)."""
    return cast(bytes | None, empty_value_for_VR(vr, raw=True))


def _parse_file_meta(data: bytes) -> tuple[FileMetaDataset, str, int] | None:
    """The file meta group, its transfer syntax, and where the data set starts.

    None where pydicom would read it differently, warn or fail (see :func:`walk_part10`).
    """
    if data[128:_PREAMBLE_END] != b"DICM":
        return None
    elements: dict[BaseTag, RawDataElement | DataElement] = {}
    end, pos, previous = len(data), _PREAMBLE_END, -1
    group_length: int | None = None
    while True:  # always Explicit VR Little Endian
        if end - pos < 8:
            return None  # no data set after the file meta
        if data[pos : pos + 2] != b"\x02\x00":
            break  # group 2 has ended: the data set, in whichever encoding
        element_header = _explicit_element_header(data, pos, True)
        if element_header is None:
            return None
        tag, vr, length, value_tell = element_header
        pos = value_tell + length
        if tag <= previous or length == _UNDEFINED_LENGTH or pos > end:
            return None
        previous = tag
        key = BaseTag(tag)
        value = data[value_tell:pos] if length else _empty_value(vr)
        elements[key] = _raw_element((key, vr, length, value, value_tell, False, True, True, False))
        if tag == _GROUP_LENGTH_TAG:
            if vr != "UL" or length != 4:
                return None
            group_length = _LENGTH_LE(data, value_tell)[0]
    if group_length is not None and group_length != pos - (_PREAMBLE_END + 12):
        return None  # pydicom logs the mismatch
    syntax_element = elements.get(_TRANSFER_SYNTAX_UID)
    if syntax_element is None or syntax_element.VR != "UI" or not syntax_element.value:
        return None
    # Decoded as pydicom decodes a UI value, and valid, so that decoding it can never fail.
    transfer_syntax = syntax_element.value.decode(default_encoding).rstrip(" \x00")
    if not is_valid_uid(transfer_syntax):
        return None
    meta = FileMetaDataset(elements)
    meta.set_original_encoding(
        is_implicit_vr=False, is_little_endian=True, character_encoding=default_encoding
    )
    first = next(iter(elements))
    if first != _GROUP_LENGTH_TAG:  # pydicom decodes the first element to test the encoding
        try:
            meta[first]
        # pydicom raises many types for a value it cannot decode; all mean "leave this file to
        # pydicom's own reader", which reports it properly.
        except Exception:  # noqa: BLE001
            return None
    return meta, transfer_syntax, pos


def walk_part10(data: bytes) -> WalkedHeader | None:  # noqa: PLR0915 - one hot loop, kept whole
    """Parse an ordinary Part-10 file exactly as pydicom would; None to leave it to pydicom.

    Defined-length elements are sliced from ``data`` in one pass; Pixel Data is located, not
    copied. From the first element of undefined length on (encapsulated pixel data, a
    sequence), pydicom's own element reader reads the rest.
    """
    parsed_meta = _parse_file_meta(data)
    if parsed_meta is None:
        return None
    meta, transfer_syntax, pos = parsed_meta
    if (
        transfer_syntax == DeflatedExplicitVRLittleEndian
        or transfer_syntax in PrivateTransferSyntaxes
    ):
        return None
    implicit = transfer_syntax == ImplicitVRLittleEndian
    little = transfer_syntax != ExplicitVRBigEndian  # all others are explicit little endian
    end = len(data)
    if end - pos < 8 or data[pos : pos + 2] == b"\x00\x00":
        return None  # empty, or it starts with a command set
    if (0x40 < data[pos + 4] < 0x5B and 0x40 < data[pos + 5] < 0x5B) == implicit:
        return None  # pydicom's test of the first VR disagrees: it would warn and switch

    elements: dict[BaseTag, RawDataElement | DataElement] = {}
    pixels: dict[int, RawDataElement | DataElement] = {}
    pixel_data: bytes | memoryview | None = None
    encoding: str | list[str] = default_encoding
    vr: str | None = None  # always None for implicit VR
    last_tag = -1
    undefined_at = None
    while end - pos >= 8:  # pydicom ignores a stub shorter than an element header
        if implicit:
            group, element, length = _IMPLICIT_LE(data, pos)
            tag, value_tell = group << 16 | element, pos + 8
        else:
            element_header = _explicit_element_header(data, pos, little)
            if element_header is None:
                return None
            tag, vr, length, value_tell = element_header
        if tag <= last_tag or _FIRST_DELIMITER <= tag <= _LAST_DELIMITER:
            return None
        if length == _UNDEFINED_LENGTH:
            undefined_at = pos
            break
        last_tag = tag
        key = BaseTag(tag)
        stop = value_tell + length
        if tag in _PIXEL_TAGS:  # located, not copied: only its length is checked
            if not length:
                return None
            pixels[key] = _raw_element(
                (key, vr, length, None, value_tell, implicit, little, True, False)
            )
            if tag == _PIXEL_DATA:
                pixel_data = memoryview(data)[value_tell:stop]
        else:
            value = data[value_tell:stop] if length else _empty_value(vr)
            elements[key] = _raw_element(
                (key, vr, length, value, value_tell, implicit, little, True, False)
            )
            if tag == _CHARACTER_SET_TAG:
                if vr not in (None, "CS") or not value:
                    return None
                try:  # as pydicom's reader does; it may refuse an unknown character set
                    encoding = convert_encodings(convert_string(value, little))
                # any refusal (unknown charset, bad value): pydicom's reader decides instead
                except Exception:  # noqa: BLE001
                    return None
        pos = stop

    if undefined_at is not None:
        stream = BytesIO(data)  # shares the bytes
        stream.seek(undefined_at)
        try:
            for item in data_element_generator(stream, implicit, little, encoding=encoding):
                if item.tag in _PIXEL_TAGS:
                    if isinstance(item, RawDataElement) and item.value is None:
                        return None
                    pixels[item.tag] = item
                    if item.tag == _PIXEL_DATA:
                        pixel_data = item.value
                else:
                    elements[item.tag] = item
                last_tag = max(last_tag, int(item.tag))
        except Exception:  # noqa: BLE001 - pydicom warns or fails the same way on its own
            return None
    if last_tag < 0:
        return None  # an empty data set
    if last_tag in pixels:
        last = pixels[last_tag]
    else:
        last = elements[BaseTag(last_tag)]
        if isinstance(last, RawDataElement) and last.value is None:
            return None
    header = Dataset(elements)
    header.file_meta = meta
    other_pixel_data = any(tag in pixels for tag in _OTHER_PIXEL_DATA)
    return WalkedHeader(header, last, pixel_data, other_pixel_data)
