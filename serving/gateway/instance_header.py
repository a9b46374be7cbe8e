"""Reading a received Part-10 instance before it is acknowledged: identity, completeness and
pixel length, and the header (every element but the pixel data) the service routes on.

:func:`read_header` runs once per C-STORE and STOW instance, on the path a modality waits on.
Ordinary files (Explicit/Implicit VR Little Endian, Big Endian, and compressed pixel data in
any of them) are walked straight from the bytes into the same raw elements pydicom builds, the
pixel data located and length-checked but never copied; anything unusual (deflated or private
transfer syntaxes, odd file meta, unknown VRs, elements out of order, items at the top level,
uncommon character sets) is read by pydicom's ``dcmread`` exactly as before. Both paths give
the same identity, header and errors (``tests/test_spool.py`` compares them on damaged files).

The walk (:mod:`serving.gateway.header_walk`) uses pydicom internals, so it is fenced: it is
imported and used only when the installed pydicom is in :data:`TESTED_PYDICOM` (the range
``pyproject.toml`` pins). On any other pydicom every file takes the public path,
:func:`read_header_with_pydicom` (``dcmread``), with one warning naming the version.

Every failure is an :class:`~serving.gateway.errors.InvalidInstance` (or its subclass
:class:`~serving.gateway.errors.StudyMismatch`): whatever pydicom raises for a file it cannot
read, or for an element it cannot decode while the instance is checked (a garbled VR, say), is
chained to one, never raised as is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from struct import Struct
from typing import TYPE_CHECKING, BinaryIO

import pydicom
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion
from pydicom import dcmread
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments
from pydicom.pixels.utils import get_expected_length
from pydicom.tag import BaseTag
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from serving.gateway.errors import InvalidInstance, StudyMismatch
from serving.gateway.part10 import is_valid_uid

if TYPE_CHECKING:
    from serving.gateway.header_walk import WalkedHeader

__all__ = [
    "TESTED_PYDICOM",
    "InstanceIdentity",
    "pydicom_is_tested",
    "read_header",
    "read_header_with_pydicom",
    "read_identity",
    "read_stored_identity",
]

LOGGER = logging.getLogger(__name__)

#: The pydicom releases whose internals :mod:`serving.gateway.header_walk` uses and that the
#: gateway's tests ran against (a PEP 440 specifier, the same as the pin in ``pyproject.toml``).
TESTED_PYDICOM = ">=3.0,<4"
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


def pydicom_is_tested(version: str | None = None) -> bool:
    """True if ``version`` (default: the installed pydicom) is in :data:`TESTED_PYDICOM`."""
    try:
        return SpecifierSet(TESTED_PYDICOM).contains(
            version or pydicom.__version__, prereleases=True
        )
    except InvalidVersion:
        return False


def select_fast_walk() -> Callable[[bytes], WalkedHeader | None] | None:
    """:func:`~serving.gateway.header_walk.walk_part10` on a tested pydicom, else None."""
    if not pydicom_is_tested():
        LOGGER.warning(
            "pydicom %s is not a version the header walk was tested with (%s): "
            "every received file is read by pydicom's dcmread",
            pydicom.__version__,
            TESTED_PYDICOM,
        )
        return None
    from serving.gateway.header_walk import walk_part10

    return walk_part10


#: The fast path of :func:`read_header`, or None to read every file with pydicom (an untested
#: pydicom; tests set it to None to run the public path alone).
fast_walk: Callable[[bytes], WalkedHeader | None] | None = select_fast_walk()


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


def read_header_with_pydicom(
    data: bytes, *, expected_study_uid: str | None = None
) -> tuple[InstanceIdentity, Dataset]:
    """:func:`read_header` through pydicom's public reader, ``dcmread``, for any file.

    The fast path leaves deflated, odd or broken files to it, and every file when the
    installed pydicom is not a tested release. Same results and errors as :func:`read_header`.
    """
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
    walk = fast_walk
    try:
        parsed = None if walk is None else walk(data)
    except Exception:  # noqa: BLE001 - not foreseen by the fast path: pydicom's reader decides, as for the rest
        parsed = None
    if parsed is None:
        return read_header_with_pydicom(data, expected_study_uid=expected_study_uid)
    header = parsed.header
    identity = _identity(header)
    _check_study(identity, expected_study_uid)
    try:  # the Image Pixel module is decoded here, which may fail as on pydicom's path
        _check_complete(parsed.last, data, identity)  # never deflated here
        _check_pixel_data(header, identity, parsed.pixel_data, parsed.other_pixel_data)
    except InvalidInstance:
        raise
    # pydicom raises many types for garbage pixel attributes; all mean "unreadable" (re-raised
    # as one typed error, which the gateway turns into a DIMSE status)
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
