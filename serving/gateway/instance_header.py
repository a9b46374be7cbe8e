"""Reading a received Part-10 instance before it is acknowledged: identity, completeness and
pixel length, and the header (every element but the pixel data) the service routes on.

:func:`read_header` runs once per C-STORE and STOW instance, on the path a modality waits on.
Ordinary files (Explicit/Implicit VR Little Endian, Big Endian, and compressed pixel data in
any of them) are walked straight from the bytes into the same raw elements pydicom builds, the
pixel data located and length-checked but never copied; anything unusual (deflated or private
transfer syntaxes, odd file meta, unknown VRs, elements out of order, items at the top level,
uncommon character sets) is read by pydicom's ``dcmread`` exactly as before. Both paths give
the same identity, header and errors (``tests/test_spool.py`` compares them on damaged files).

Every failure is an :class:`~serving.gateway.errors.InvalidInstance` (or its subclass
:class:`~serving.gateway.errors.StudyMismatch`): whatever pydicom raises for a file it cannot
read, or for an element it cannot decode while the instance is checked (a garbled VR, say), is
chained to one, never raised as is.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from io import BytesIO
from struct import Struct
from typing import BinaryIO, NamedTuple, cast

from pydicom import dcmread
from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import DataElement, RawDataElement, empty_value_for_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import generate_fragments
from pydicom.filereader import ENCODED_VR, data_element_generator
from pydicom.pixels.utils import get_expected_length
from pydicom.tag import BaseTag
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    PrivateTransferSyntaxes,
)
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32
from pydicom.values import convert_string

from serving.gateway.errors import InvalidInstance, StudyMismatch

__all__ = [
    "InstanceIdentity",
    "is_valid_uid",
    "read_header",
    "read_identity",
    "read_stored_identity",
]

_UID_PATTERN = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_IDENTITY_TAGS = {
    "SOPClassUID": BaseTag(0x00080016),
    "SOPInstanceUID": BaseTag(0x00080018),
    "StudyInstanceUID": BaseTag(0x0020000D),
    "SeriesInstanceUID": BaseTag(0x0020000E),
}
_MEDIA_STORAGE_SOP_INSTANCE_UID = BaseTag(0x00020003)
_TRANSFER_SYNTAX_UID = BaseTag(0x00020010)
_UNDEFINED_LENGTH = 0xFFFFFFFF
_SEQUENCE_DELIMITER = {
    True: b"\xfe\xff\xdd\xe0\x00\x00\x00\x00",  # little endian
    False: b"\xff\xfe\xe0\xdd\x00\x00\x00\x00",
}
_PIXEL_DATA = 0x7FE00010
_OTHER_PIXEL_DATA = (0x7FE00008, 0x7FE00009)  # Float / Double Float Pixel Data
_PIXEL_TAGS = frozenset({_PIXEL_DATA, *_OTHER_PIXEL_DATA})  # tested once per element
# Transfer syntaxes known to carry native (not encapsulated) pixel data: no UID lookup needed.
_NATIVE_SYNTAXES = frozenset({ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian})
# The Image Pixel module elements that get_expected_length reads.
_SAMPLES_PER_PIXEL = BaseTag(0x00280002)
_PHOTOMETRIC_INTERPRETATION = BaseTag(0x00280004)
_NUMBER_OF_FRAMES = BaseTag(0x00280008)
_ROWS = BaseTag(0x00280010)
_COLUMNS = BaseTag(0x00280011)
_BITS_ALLOCATED = BaseTag(0x00280100)
_US_LE = Struct("<H").unpack
_US_BE = Struct(">H").unpack


@dataclass(frozen=True)
class InstanceIdentity:
    """The validated UIDs that name an instance and the transfer syntax it is encoded in."""

    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    study_instance_uid: str
    transfer_syntax_uid: str


def is_valid_uid(text: str) -> bool:
    """True for a syntactically valid DICOM UID (PS3.5 9.1): digits and dots, at most 64."""
    return len(text) <= 64 and _UID_PATTERN.fullmatch(text) is not None


def _unreadable(exc: Exception, sop_instance_uid: str | None = None) -> InvalidInstance:
    """The error for a file pydicom cannot read, or an element it cannot decode.

    Only the exception's type is named (its message may quote a value); raise it ``from exc``.
    """
    return InvalidInstance(
        f"not a readable DICOM Part-10 file ({type(exc).__name__})",
        sop_instance_uid=sop_instance_uid,
    )


def _uid(dataset: Dataset, keyword: str, tag: BaseTag) -> str:
    try:
        element = dataset.get_item(tag)  # decodes a raw element without a value: may fail
    except Exception as exc:  # e.g. NotImplementedError for an empty UID with a garbled VR
        raise _unreadable(exc) from exc
    if element is None or element.value is None:
        raise InvalidInstance(f"{keyword} is missing")
    value = element.value
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
    text = text.rstrip("\x00 ")
    if not is_valid_uid(text):
        # The value itself is not echoed: a broken sender may put anything in a UID field.
        raise InvalidInstance(f"{keyword} is not a valid UID ({len(text)} characters)")
    return text


def _identity(dataset: Dataset) -> InstanceIdentity:
    uids = {keyword: _uid(dataset, keyword, tag) for keyword, tag in _IDENTITY_TAGS.items()}
    sop_uid = uids["SOPInstanceUID"]
    meta = dataset.file_meta
    try:
        transfer_syntax = _uid(meta, "TransferSyntaxUID", _TRANSFER_SYNTAX_UID)
        if _MEDIA_STORAGE_SOP_INSTANCE_UID in meta:  # get_item would decode an empty one
            meta_sop_uid = _uid(meta, "MediaStorageSOPInstanceUID", _MEDIA_STORAGE_SOP_INSTANCE_UID)
            if meta_sop_uid != sop_uid:
                raise InvalidInstance("file meta names a different SOP Instance UID")
    except InvalidInstance as exc:
        raise InvalidInstance(exc.reason, sop_instance_uid=sop_uid) from exc.__cause__
    return InstanceIdentity(
        sop_instance_uid=sop_uid,
        sop_class_uid=uids["SOPClassUID"],
        series_instance_uid=uids["SeriesInstanceUID"],
        study_instance_uid=uids["StudyInstanceUID"],
        transfer_syntax_uid=transfer_syntax,
    )


def _check_complete(
    last: RawDataElement | DataElement, data: bytes, identity: InstanceIdentity
) -> None:
    """Refuse a stream that ends inside ``last``, the element with the highest tag.

    pydicom reads such a stream silently. Not for a deflated data set, whose offsets refer to
    the inflated stream.
    """
    if not isinstance(last, RawDataElement) or last.value_tell is None:
        return
    if last.length == _UNDEFINED_LENGTH:
        complete = data.endswith(_SEQUENCE_DELIMITER[bool(last.is_little_endian)])
    else:
        complete = last.value_tell + last.length <= len(data)
    if not complete:
        raise InvalidInstance(
            f"truncated: the stream ends inside element {last.tag}",
            sop_instance_uid=identity.sop_instance_uid,
        )


def _check_study(identity: InstanceIdentity, expected_study_uid: str | None) -> None:
    """Refuse an instance of another study than the one the request is for, if any."""
    if expected_study_uid is not None and identity.study_instance_uid != expected_study_uid:
        raise StudyMismatch(
            expected=expected_study_uid,
            found=identity.study_instance_uid,
            sop_instance_uid=identity.sop_instance_uid,
        )


def _raw_us(dataset: Dataset, tag: BaseTag) -> int | None:
    """The value of a still-raw, single-valued US element; None for anything else."""
    element = dataset.get_item(tag)
    if (
        not isinstance(element, RawDataElement)
        or element.VR not in (None, "US")  # None: implicit VR, and these tags are US
        or element.value is None
        or len(element.value) != 2
    ):
        return None
    return int((_US_LE if element.is_little_endian else _US_BE)(element.value)[0])


def _expected_pixel_bytes(dataset: Dataset) -> int:
    """``get_expected_length(dataset, "bytes")``, from the raw elements where that is exact.

    A single-frame image with plain US attributes (nearly all of them) is computed here, with
    pydicom's formula, without decoding five elements through the Dataset machinery; anything
    else (Number of Frames, YBR_FULL_422, unusual encodings, missing attributes) is left to
    :func:`get_expected_length`, which also raises what it raises.
    """
    rows = _raw_us(dataset, _ROWS)
    columns = _raw_us(dataset, _COLUMNS)
    samples_per_pixel = _raw_us(dataset, _SAMPLES_PER_PIXEL)
    bits_allocated = _raw_us(dataset, _BITS_ALLOCATED)
    photometric = dataset.get_item(_PHOTOMETRIC_INTERPRETATION)
    if (
        rows is None
        or columns is None
        or samples_per_pixel is None
        or bits_allocated is None
        or dataset.get_item(_NUMBER_OF_FRAMES) is not None
        or not isinstance(photometric, RawDataElement)
        or photometric.VR not in (None, "CS")
        or b"YBR_FULL_422" in (photometric.value or b"")
    ):
        return get_expected_length(dataset, "bytes")
    length = rows * columns * samples_per_pixel
    if bits_allocated == 1:
        return length // 8 + (length % 8 > 0)
    return length * (bits_allocated // 8)


def _check_pixel_data(
    dataset: Dataset,
    identity: InstanceIdentity,
    pixel_data: bytes | memoryview | None,
    other_pixel_data: bool,
) -> None:
    """Refuse images whose Pixel Data is missing, empty or shorter than the image needs.

    Args:
        dataset: The data set (its Image Pixel module is read; Pixel Data itself is not).
        identity: The validated identity (transfer syntax, and the UID errors name).
        pixel_data: The Pixel Data value (a view into the received bytes is fine); None when
            the data set has no Pixel Data element, ``b""`` when the element is empty.
        other_pixel_data: The data set has Float or Double Float Pixel Data instead.
    """
    sop_uid = identity.sop_instance_uid
    if pixel_data is None:
        is_image = "Rows" in dataset and "BitsAllocated" in dataset
        if is_image and not other_pixel_data:
            raise InvalidInstance("image without Pixel Data (truncated?)", sop_instance_uid=sop_uid)
        return
    if not pixel_data:
        raise InvalidInstance("Pixel Data is empty", sop_instance_uid=sop_uid)
    if identity.transfer_syntax_uid not in _NATIVE_SYNTAXES:
        transfer_syntax = UID(identity.transfer_syntax_uid)
        if not transfer_syntax.is_transfer_syntax:
            return  # a private transfer syntax: nothing we can check
        if transfer_syntax.is_encapsulated:
            if isinstance(pixel_data, memoryview):
                pixel_data = pixel_data.tobytes()  # generate_fragments reads bytes or a file
            try:
                fragments = sum(1 for _ in generate_fragments(pixel_data)) - 1  # minus the BOT
            except (ValueError, TypeError) as exc:
                raise InvalidInstance(f"Pixel Data: {exc}", sop_instance_uid=sop_uid) from exc
            if fragments < 1:
                raise InvalidInstance("Pixel Data has no fragments", sop_instance_uid=sop_uid)
            return
    try:
        expected = _expected_pixel_bytes(dataset)
    except (AttributeError, KeyError, TypeError, ValueError):
        raise InvalidInstance("Image Pixel module incomplete", sop_instance_uid=sop_uid) from None
    if len(pixel_data) < expected:
        raise InvalidInstance(
            f"Pixel Data holds {len(pixel_data)} bytes, the image needs {expected}",
            sop_instance_uid=sop_uid,
        )


def _read_header_with_pydicom(
    data: bytes, expected_study_uid: str | None
) -> tuple[InstanceIdentity, Dataset]:
    """:func:`read_header` for any file pydicom can read (deflated, odd or broken ones)."""
    try:
        dataset = dcmread(BytesIO(data))
    except Exception as exc:  # pydicom raises many types for garbage; all mean "unreadable"
        raise _unreadable(exc) from exc
    if not len(dataset):  # pydicom returns nothing when a top-level sequence is cut short
        raise InvalidInstance("the dataset is empty or truncated")
    identity = _identity(dataset)
    _check_study(identity, expected_study_uid)
    try:  # pydicom decodes the elements read here, and an empty last element: that may fail
        if identity.transfer_syntax_uid != DeflatedExplicitVRLittleEndian:
            last = dataset.get_item(max(dataset.keys(), key=int))
            assert last is not None  # one of its keys
            _check_complete(last, data, identity)
        element = dataset.get_item(_PIXEL_DATA)
        pixel_data = None if element is None else (b"" if element.value is None else element.value)
        other_pixel_data = any(tag in dataset for tag in _OTHER_PIXEL_DATA)
        _check_pixel_data(dataset, identity, pixel_data, other_pixel_data)
    except InvalidInstance:
        raise
    except Exception as exc:  # e.g. NotImplementedError for Rows with a garbled VR
        raise _unreadable(exc, identity.sop_instance_uid) from exc
    # A plain Dataset of the elements: the FileDataset keeps the whole received buffer, and the
    # pixel data is megabytes; neither is kept with the header.
    header = Dataset(dataset)
    header.file_meta = dataset.file_meta
    for tag in _PIXEL_TAGS:
        header.pop(tag, None)
    return identity, header


class _Parsed(NamedTuple):
    """What :func:`_parse_fast` read: the header to keep, and what is only checked.

    Attributes:
        header: The data set without its pixel data elements, with its ``file_meta``.
        last: The element with the highest tag (pixel data included): where a cut stream ends.
        pixel_data: The Pixel Data value, see :func:`_check_pixel_data`.
        other_pixel_data: Float or Double Float Pixel Data is present.
    """

    header: Dataset
    last: RawDataElement | DataElement
    pixel_data: bytes | memoryview | None
    other_pixel_data: bool


# The fast path. An ordinary Part-10 file is read with struct straight from the bytes, without
# pydicom's per-element reader (about 2 us an element through a file object) and without
# copying the pixel data; it builds the very RawDataElements pydicom builds. Whatever pydicom
# would treat specially gives up the fast path, and _read_header_with_pydicom reads the file
# as before, so both paths accept, refuse and return the same: no "DICM", a file meta group
# length that does not match, a deflated or private transfer syntax, a command set, an unknown
# VR, tags out of order or repeated, an item or delimiter at the top level, a stream that ends
# inside an element header, an unusual Specific Character Set, and an empty pixel data or last
# element (pydicom would decode those while checking them).

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

    None where pydicom would read it differently, warn or fail (see :func:`_parse_fast`).
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
        except Exception:
            return None
    return meta, transfer_syntax, pos


def _parse_fast(data: bytes) -> _Parsed | None:
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
                except Exception:
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
        except Exception:  # pydicom warns or fails the same way on its own
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
    return _Parsed(header, last, pixel_data, other_pixel_data)


def read_identity(data: bytes, *, expected_study_uid: str | None = None) -> InstanceIdentity:
    """Parse a received Part-10 file and validate identity, completeness and pixel length.

    Raises:
        InvalidInstance: Not Part-10, unreadable or undecodable (a damaged element header,
            whatever pydicom raises for it), identity UIDs missing or invalid, truncated stream,
            or Pixel Data inconsistent with the image attributes.
        StudyMismatch: ``expected_study_uid`` is set and the instance belongs to another study.
    """
    return read_header(data, expected_study_uid=expected_study_uid)[0]


def read_header(
    data: bytes, *, expected_study_uid: str | None = None
) -> tuple[InstanceIdentity, Dataset]:
    """As :func:`read_identity`, also returning the parsed data set without its pixel data.

    The header is a plain :class:`~pydicom.dataset.Dataset` with ``file_meta``, holding no
    reference to ``data``; most of its elements are still raw (decoded on first access).
    """
    try:
        parsed = _parse_fast(data)
    except Exception:  # not foreseen by the fast path: pydicom's reader decides, as for the rest
        parsed = None
    if parsed is None:
        return _read_header_with_pydicom(data, expected_study_uid)
    header = parsed.header
    identity = _identity(header)
    _check_study(identity, expected_study_uid)
    try:  # the Image Pixel module is decoded here, which may fail as on pydicom's path
        _check_complete(parsed.last, data, identity)  # never deflated here
        _check_pixel_data(header, identity, parsed.pixel_data, parsed.other_pixel_data)
    except InvalidInstance:
        raise
    except Exception as exc:
        raise _unreadable(exc, identity.sop_instance_uid) from exc
    return identity, header


def read_stored_identity(handle: BinaryIO) -> InstanceIdentity:
    """The validated identity of a stored Part-10 file, reading only the identity elements.

    Completeness and pixel data are not checked (they were when the file was received).

    Raises:
        InvalidInstance: Not Part-10, unreadable or undecodable, or identity UIDs missing or
            invalid.
    """
    try:
        dataset = dcmread(
            handle, stop_before_pixels=True, specific_tags=list(_IDENTITY_TAGS.values())
        )
    except Exception as exc:  # see read_identity
        raise _unreadable(exc) from exc
    return _identity(dataset)


# ---------------------------------------------------------------------------------------------
