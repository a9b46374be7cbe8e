"""The durable spool: hashed paths, atomic writes, idempotent repeats, refusal of bad input."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict, Unpack

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.errors import BytesLengthException
from pydicom.filewriter import dcmwrite
from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

from serving.gateway import header_walk, instance_header
from serving.gateway.errors import InvalidInstance, OutOfResources, StudyMismatch
from serving.gateway.spool import InstanceSource, Spool, read_header, read_identity

if TYPE_CHECKING:
    from _typeshed import StrOrBytesPath

STUDY = "1.2.826.0.1.3680043.10.1.1"
SERIES = "1.2.826.0.1.3680043.10.1.1.2"
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
SOURCE = InstanceSource("MODALITY1", "127.0.0.1", "dimse", "assoc-1")
ROWS = COLUMNS = 8
PIXEL_BYTES = ROWS * COLUMNS * 2


def make_dataset(
    sop_uid: str = f"{SERIES}.1",
    *,
    study_uid: str = STUDY,
    series_uid: str = SERIES,
    pixels: bytes | None = None,
    omit: tuple[str, ...] = (),
) -> Dataset:
    """A minimal 8x8 16-bit CT image with file meta (no patient data)."""
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = "CT"
    ds.Rows, ds.Columns = ROWS, COLUMNS
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = bytes(PIXEL_BYTES) if pixels is None else pixels
    for keyword in omit:
        delattr(ds, keyword)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


class _DatasetFields(TypedDict, total=False):
    """The keywords of ``make_dataset`` after the SOP Instance UID."""

    study_uid: str
    series_uid: str
    pixels: bytes | None
    omit: tuple[str, ...]


def make_instance(sop_uid: str = f"{SERIES}.1", **kwargs: Unpack[_DatasetFields]) -> bytes:
    """``make_dataset`` encoded as a Part-10 file."""
    return encode(make_dataset(sop_uid, **kwargs))


def encode(ds: Dataset) -> bytes:
    """A data set with file meta as a Part-10 file, in its meta's transfer syntax."""
    buffer = BytesIO()
    with warnings.catch_warnings():  # invalid UIDs are written on purpose by some tests
        warnings.simplefilter("ignore")
        dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def make_spool(root: Path, *, free: int = 10**12, min_free: int = 1024) -> Spool:
    return Spool(root, min_free_bytes=min_free, free_bytes=lambda _: free, clock=lambda: NOW)


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_store_writes_the_exact_bytes_at_the_hashed_path(tmp_path: Path) -> None:
    spool = make_spool(tmp_path / "spool")
    data = make_instance()

    stored = spool.store(data, SOURCE)

    expected = (
        tmp_path
        / "spool/instances"
        / sha(STUDY)[:16]
        / sha(SERIES)[:16]
        / f"{sha(SERIES + '.1')}.dcm"
    )
    assert stored.path == expected
    assert expected.read_bytes() == data
    assert all_files(tmp_path) == [expected]  # no temporary file left behind
    assert (stored.sop_instance_uid, stored.study_instance_uid) == (f"{SERIES}.1", STUDY)
    assert stored.series_instance_uid == SERIES
    assert stored.sop_class_uid == CTImageStorage
    assert stored.transfer_syntax_uid == ExplicitVRLittleEndian
    assert stored.size_bytes == len(data)
    assert stored.received_at == NOW
    assert stored.source == SOURCE
    assert not stored.duplicate
    assert not stored.replaced


def test_the_stored_instance_carries_its_header_without_pixel_data(tmp_path: Path) -> None:
    stored = make_spool(tmp_path).store(make_instance(), SOURCE)
    assert stored.header is not None
    assert stored.header.SOPInstanceUID == stored.sop_instance_uid
    assert stored.header.StudyInstanceUID == STUDY
    assert stored.header.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert "PixelData" not in stored.header
    assert not hasattr(stored.header, "buffer")  # the received bytes are not kept alive
    rescanned = next(make_spool(tmp_path).iter_instances())
    assert rescanned.header is None  # a rescan reads identity tags only


def test_a_dataset_with_file_meta_is_stored_like_its_bytes(tmp_path: Path) -> None:
    stored = make_spool(tmp_path).store(make_dataset(), SOURCE)
    assert stored.path.read_bytes() == make_instance()


def test_the_same_bytes_twice_is_a_duplicate_and_not_rewritten(tmp_path: Path) -> None:
    spool = make_spool(tmp_path)
    first = spool.store(make_instance(), SOURCE)
    inode, mtime = first.path.stat().st_ino, first.path.stat().st_mtime_ns

    again = spool.store(make_instance(), SOURCE)

    assert again.duplicate
    assert not again.replaced
    assert again.path == first.path
    assert (first.path.stat().st_ino, first.path.stat().st_mtime_ns) == (inode, mtime)


def test_different_bytes_under_the_same_uid_replace_the_stored_copy(tmp_path: Path) -> None:
    spool = make_spool(tmp_path)
    spool.store(make_instance(), SOURCE)
    corrected = make_instance(pixels=b"\x01\x00" * (PIXEL_BYTES // 2))

    stored = spool.store(corrected, SOURCE)

    assert stored.replaced
    assert not stored.duplicate
    assert stored.path.read_bytes() == corrected
    assert len(all_files(tmp_path)) == 1


def test_concurrent_copies_of_one_instance_are_written_once(tmp_path: Path) -> None:
    spool = make_spool(tmp_path)
    data = make_instance()
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: spool.store(data, SOURCE), range(16)))
    assert sum(not r.duplicate for r in results) == 1
    assert len(all_files(tmp_path)) == 1


def test_low_disk_space_refuses_without_writing(tmp_path: Path) -> None:
    data = make_instance()
    spool = make_spool(tmp_path, free=1024 + len(data) - 1, min_free=1024)
    with pytest.raises(OutOfResources, match="out of space"):
        spool.store(data, SOURCE)  # would leave one byte less than the reserve
    assert all_files(tmp_path) == []


def test_disk_full_during_the_write_is_out_of_resources_and_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = make_spool(tmp_path)

    def full(_: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    def full_write(_: int, __: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full_write)  # the synchronized write of the data
    monkeypatch.setattr(os, "fsync", full)
    monkeypatch.setattr(os, "fdatasync", full, raising=False)
    with pytest.raises(OutOfResources):
        spool.store(make_instance(), SOURCE)
    assert all_files(tmp_path) == []


@pytest.mark.parametrize("missing", ["SOPInstanceUID", "SOPClassUID", "StudyInstanceUID"])
def test_missing_identity_is_invalid_and_not_written(tmp_path: Path, missing: str) -> None:
    spool = make_spool(tmp_path)
    with pytest.raises(InvalidInstance, match=f"{missing} is missing"):
        spool.store(make_instance(omit=(missing,)), SOURCE)
    assert all_files(tmp_path) == []


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("sop_uid", "../../x"),
        ("study_uid", "../../../../etc"),
        ("series_uid", "/tmp/escape"),
        ("sop_uid", "1.2.3/4"),
        ("sop_uid", "1.2." + "3" * 70),
    ],
)
def test_uids_that_could_escape_the_spool_are_refused(
    tmp_path: Path, field: str, value: str
) -> None:
    root = tmp_path / "deep" / "spool"
    spool = make_spool(root)
    uids = {"sop_uid": f"{SERIES}.1", "study_uid": STUDY, "series_uid": SERIES, field: value}
    instance = make_instance(
        uids["sop_uid"], study_uid=uids["study_uid"], series_uid=uids["series_uid"]
    )
    with pytest.raises(InvalidInstance, match="is not a valid UID"):
        spool.store(instance, SOURCE)
    assert all_files(tmp_path) == []


def test_study_mismatch_is_refused_without_writing(tmp_path: Path) -> None:
    spool = make_spool(tmp_path)
    with pytest.raises(StudyMismatch, match=r"does not match the requested study 1\.2\.3"):
        spool.store(make_instance(), SOURCE, expected_study_uid="1.2.3")
    assert all_files(tmp_path) == []


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda b: b[:-100], "truncated"),
        (lambda b: b[:-1], "truncated"),
        (lambda b: b"not a DICOM file at all" * 10, "not a readable DICOM Part-10 file"),
        (lambda b: b[128:], "not a readable DICOM Part-10 file"),  # no preamble / DICM
    ],
    ids=["cut-in-pixel-data", "last-byte-missing", "garbage", "no-preamble"],
)
def test_damaged_streams_are_invalid(
    tmp_path: Path, damage: Callable[[bytes], bytes], reason: str
) -> None:
    spool = make_spool(tmp_path)
    with pytest.raises(InvalidInstance, match=reason):
        spool.store(damage(make_instance()), SOURCE)
    assert all_files(tmp_path) == []


def test_pixel_data_shorter_than_the_image_is_invalid(tmp_path: Path) -> None:
    short = make_instance(pixels=bytes(PIXEL_BYTES // 2))
    with pytest.raises(InvalidInstance, match=f"holds {PIXEL_BYTES // 2} bytes, the image needs"):
        make_spool(tmp_path).store(short, SOURCE)


def test_image_cut_before_its_pixel_data_is_invalid(tmp_path: Path) -> None:
    with pytest.raises(InvalidInstance, match="image without Pixel Data"):
        make_spool(tmp_path).store(make_instance(omit=("PixelData",)), SOURCE)


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter")
@pytest.mark.parametrize("compression", ["rle", "jpeg2000"])
def test_compressed_synthetic_slices_are_accepted_and_truncation_is_caught(
    tmp_path: Path, compression: str
) -> None:
    from models.synthetic import generate_study

    study = generate_study("cr-chest", tmp_path / "in", seed=2, matrix=64, compression=compression)
    data = study.files[0].read_bytes()
    spool = make_spool(tmp_path / "spool")
    assert spool.store(data, SOURCE).study_instance_uid == study.study_uid
    with pytest.raises(InvalidInstance, match="truncated"):
        spool.store(data[:-100], SOURCE)


def test_rescan_finds_every_instance_and_skips_debris(tmp_path: Path) -> None:
    spool = make_spool(tmp_path)
    stored = [spool.store(make_instance(f"{SERIES}.{i}"), SOURCE) for i in range(1, 6)]
    other = spool.store(make_instance("1.2.3.4", study_uid="1.2.3", series_uid="1.2.3.9"), SOURCE)
    leaf = stored[0].path.parent
    (spool.staging_dir / f".{'1' * 32}.tmp").write_bytes(b"half a file")  # crash mid-write
    (leaf / f".{'0' * 64}.abc.tmp").write_bytes(b"half a file")  # left by an earlier version
    (leaf / f"{'f' * 64}.dcm").write_bytes(b"garbage")  # unreadable
    misplaced = leaf / f"{'e' * 64}.dcm"  # readable, but not where its UIDs say
    misplaced.write_bytes(make_instance(f"{SERIES}.99"))

    found = list(make_spool(tmp_path).iter_instances())

    assert sorted(f.sop_instance_uid for f in found) == sorted(
        s.sop_instance_uid for s in [*stored, other]
    )
    assert {f.path for f in found} == {s.path for s in [*stored, other]}
    assert all(f.source.channel == "rescan" for f in found)
    assert all(f.size_bytes == f.path.stat().st_size for f in found)
    assert spool.discard_partial_writes() == 2
    assert not list(leaf.glob("*.tmp"))
    assert not list(spool.staging_dir.iterdir())


# --- read_header: the fast reader and pydicom's reader must agree ------------------------------


def variant(name: str) -> bytes:
    """``make_instance`` in another encoding or with another layout."""
    ds = make_dataset()
    if name == "implicit":
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    elif name == "big-endian":
        ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    elif name == "deflated":
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    elif name == "encapsulated":
        ds.file_meta.TransferSyntaxUID = RLELossless
        ds.PixelData = encapsulate([b"\x01\x00" * 8, b"\x02\x00" * 8])
        ds["PixelData"].VR = "OB"
    elif name == "trailing-padding":  # an element after Pixel Data
        ds.add_new(0xFFFCFFFC, "OB", b"\x00" * 6)
    elif name == "sequence":  # an undefined-length sequence, read by pydicom's own reader
        item = Dataset()
        item.CodeValue = "X"
        ds.ProcedureCodeSequence = [item]
        ds["ProcedureCodeSequence"].is_undefined_length = True
    elif name == "character-set":
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.PatientName = "Müller^Jörg"
    elif name != "plain":
        raise ValueError(name)
    return encode(ds)


VARIANTS = [
    "plain",
    "implicit",
    "big-endian",
    "deflated",
    "encapsulated",
    "trailing-padding",
    "sequence",
    "character-set",
]


def outcome(read: Callable[[bytes], tuple[object, Dataset]], data: bytes) -> tuple[object, ...]:
    """What a read_header-like function makes of ``data``: an error, or identity and header.

    Any other exception fails the test: every failure must be an InvalidInstance.
    """
    try:
        identity, header = read(data)
    except (InvalidInstance, StudyMismatch) as exc:
        return type(exc).__name__, str(exc), exc.sop_instance_uid
    assert type(header) is Dataset
    assert "PixelData" not in header
    return identity, decoded(header), decoded(header.file_meta)


def decoded(ds: Dataset) -> dict[int, object]:
    """Every element as pydicom decodes it (a damaged one may not decode: how it fails)."""
    elements: dict[int, object] = {}
    for tag in sorted(ds.keys()):
        try:
            elements[tag] = (ds[tag].VR, ds[tag].value)
        except Exception as exc:  # noqa: BLE001 - how a damaged element fails is the result
            elements[tag] = (type(exc).__name__, str(exc))
    return elements


def by_pydicom(data: bytes) -> tuple[object, Dataset]:
    return instance_header.read_header_with_pydicom(data)


@pytest.mark.parametrize("name", VARIANTS)
def test_read_header_matches_pydicom_for_every_encoding(name: str) -> None:
    data = variant(name)
    fast = header_walk.walk_part10(data) is not None
    assert fast == (name != "deflated")  # deflated streams are always inflated by pydicom
    result = outcome(read_header, data)
    assert isinstance(result[0], instance_header.InstanceIdentity)
    assert result == outcome(by_pydicom, data)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name", VARIANTS)
def test_read_header_matches_pydicom_for_damaged_streams(name: str) -> None:
    data = variant(name)
    cuts = [1, 2, 3, 7, 8, 9, 12, 100, len(data) // 2, len(data) - 400, len(data) - 200]
    damaged = [data[:-cut] for cut in cuts if cut < len(data) - 132]
    damaged += [data + b"\x00" * 3, data + b"\x00" * 8]
    for at in range(132, min(len(data), 700), 7):  # every 7th header byte, one at a time
        damaged.append(data[:at] + bytes([data[at] ^ 0x41]) + data[at + 1 :])
    for uid in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.3"):
        damaged.append(with_transfer_syntax(data, uid))  # a meta that lies about the encoding
    damaged.append(data.replace(b"\x02\x00\x10\x00UI", b"\x02\x00\x10\x00UL", 1))
    for sample in damaged:
        header_walk.walk_part10(sample)  # gives up (None), never raises: read_header hides it
        assert outcome(read_header, sample) == outcome(by_pydicom, sample)


def with_transfer_syntax(data: bytes, uid: str) -> bytes:
    """``data`` with another Transfer Syntax UID in its file meta (same length, NUL padded)."""
    at = data.index(b"\x02\x00\x10\x00UI") + 8
    length = int.from_bytes(data[at - 2 : at], "little")
    return data[:at] + uid.encode().ljust(length, b"\x00") + data[at + length :]


def test_elements_out_of_order_are_read_as_pydicom_reads_them() -> None:
    data = make_instance()
    modality = b"\x08\x00\x60\x00CS\x02\x00MR"  # (0008,0060) again, after the Pixel Data
    for sample in (data + modality, data + modality[:-1]):
        assert outcome(read_header, sample) == outcome(by_pydicom, sample)
    _, header = read_header(data + modality)
    assert header.Modality == "MR"  # the later copy wins, as in pydicom


def test_a_wrong_file_meta_group_length_is_tolerated_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = make_instance()
    at = data.index(b"\x02\x00\x00\x00UL\x04\x00") + 8
    wrong = data[:at] + (int.from_bytes(data[at : at + 4], "little") + 2).to_bytes(4, "little")
    with caplog.at_level(logging.INFO, logger="pydicom"):
        identity, _ = read_header(wrong + data[at + 4 :])
    assert identity.sop_instance_uid == f"{SERIES}.1"
    assert "Group Length' value doesn't match" in caplog.text  # pydicom's own note, as before


def test_pixel_data_one_sample_short_is_refused() -> None:
    short = make_instance(pixels=bytes(PIXEL_BYTES - 2))  # even, so the element is well formed
    with pytest.raises(InvalidInstance, match=f"holds {PIXEL_BYTES - 2} bytes, the image needs"):
        read_header(short)


def test_stream_one_byte_short_is_refused_in_every_encoding() -> None:
    for name in VARIANTS:
        if name != "deflated":  # a deflated stream cut short does not inflate
            with pytest.raises(InvalidInstance, match="truncated"):
                read_header(variant(name)[:-1])


def test_an_element_after_pixel_data_is_read_and_checked() -> None:
    data = variant("trailing-padding")
    identity, header = read_header(data)
    assert identity.sop_instance_uid == f"{SERIES}.1"
    assert header.DataSetTrailingPadding == b"\x00" * 6
    with pytest.raises(InvalidInstance, match=r"ends inside element \(FFFC,FFFC\)"):
        read_header(data[:-1])


def test_empty_pixel_data_is_refused() -> None:
    with pytest.raises(InvalidInstance, match="Pixel Data is empty"):
        read_header(make_instance(pixels=b""))


def test_encapsulated_pixel_data_without_fragments_is_refused() -> None:
    ds = make_dataset()
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.PixelData = b"\xfe\xff\x00\xe0\x00\x00\x00\x00"  # an empty offset table, no fragment
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    with pytest.raises(InvalidInstance, match="Pixel Data has no fragments"):
        read_header(encode(ds))


def test_file_meta_naming_another_instance_is_refused() -> None:
    data = make_instance()
    meta_end = data.index(b"\x08\x00\x16\x00UI")  # the data set starts with SOP Class UID
    other = (
        data[:meta_end].replace(f"{SERIES}.1".encode(), f"{SERIES}.2".encode()) + data[meta_end:]
    )
    with pytest.raises(InvalidInstance, match="file meta names a different SOP Instance UID"):
        read_header(other)


def test_the_header_keeps_no_view_of_the_received_bytes() -> None:
    identity, header = read_header(make_instance())
    assert identity.transfer_syntax_uid == ExplicitVRLittleEndian
    assert all(not isinstance(elem.value, memoryview) for elem in header.values() if elem.value)
    assert "PixelData" not in header
    assert header.Rows == ROWS


# --- damaged element headers: one typed error from every entry point ---------------------------

ROWS_TAG = b"\x28\x00\x10\x00"  # (0028,0010), as an Explicit VR Little Endian header starts
IMAGE_TYPE_TAG = b"\x08\x00\x08\x00"
MEDIA_STORAGE_SOP_INSTANCE_UID_TAG = b"\x02\x00\x03\x00"  # in the file meta
SOP_CLASS_UID_TAG = b"\x08\x00\x16\x00"
PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"


def with_vr(data: bytes, tag: bytes, vr: bytes, *, empty: bool = False) -> bytes:
    """``data`` with another VR on the element ``tag`` (short-length VRs only).

    ``empty`` also drops the element's value and sets its length to 0: pydicom decodes an
    empty element as soon as it is looked up.
    """
    at = data.index(tag, 132)  # after the preamble; no value here holds these 4 bytes
    if not empty:
        return data[: at + 4] + vr + data[at + 6 :]
    length = int.from_bytes(data[at + 6 : at + 8], "little")
    return data[: at + 4] + vr + b"\x00\x00" + data[at + 8 + length :]


def with_overrunning_length(data: bytes, tag: bytes, by: int) -> bytes:
    """``data`` with the element ``tag`` claiming ``by`` bytes more than the file has left."""
    at = data.index(tag, 132)  # after the preamble; no value here holds these 4 bytes
    if data[at + 4 : at + 6] in (b"OB", b"OW", b"SQ", b"UN"):  # reserved bytes, 32-bit length
        length = len(data) - (at + 12) + by
        return data[: at + 8] + length.to_bytes(4, "little") + data[at + 12 :]
    length = len(data) - (at + 8) + by
    return data[: at + 6] + length.to_bytes(2, "little") + data[at + 8 :]


def assert_invalid_everywhere(data: bytes, *, stored: bool = True) -> InvalidInstance:
    """Every entry point refuses ``data`` with an InvalidInstance, the same on both paths."""
    with pytest.raises(InvalidInstance) as header_error:
        read_header(data)
    with pytest.raises(InvalidInstance) as identity_error:
        read_identity(data)
    assert str(identity_error.value) == str(header_error.value)
    assert type(header_error.value) is InvalidInstance  # not a StudyMismatch
    assert outcome(by_pydicom, data) == outcome(read_header, data)
    if stored:
        with pytest.raises(InvalidInstance):
            instance_header.read_stored_identity(BytesIO(data))
    return header_error.value


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize(
    ("vr", "fast", "cause"),
    [
        (b"ZZ", False, NotImplementedError),  # unknown: pydicom fails decoding it
        (b"U\x00", False, NotImplementedError),
        (b"\x00\x01", False, None),  # not letters: pydicom reads it as implicit VR, truncated
        (b"FD", True, BytesLengthException),  # known but wrong: 2 bytes are no double
        (b"DS", True, TypeError),  # known but wrong: decoded as text
    ],
    ids=["ZZ", "U-NUL", "00-01", "FD", "DS"],
)
def test_a_garbled_vr_on_rows_is_invalid_on_both_paths(
    vr: bytes, fast: bool, cause: type[Exception] | None
) -> None:
    data = with_vr(make_instance(), ROWS_TAG, vr)
    assert (header_walk.walk_part10(data) is not None) == fast
    error = assert_invalid_everywhere(data, stored=False)  # identity alone is readable
    assert error.sop_instance_uid == f"{SERIES}.1"
    if cause is None:
        assert "truncated" in error.reason
    else:
        assert error.reason.startswith("not a readable DICOM Part-10 file (")
        assert isinstance(error.__cause__, cause)  # chained, for the log
    identity = instance_header.read_stored_identity(BytesIO(data))
    assert identity.sop_instance_uid == f"{SERIES}.1"


def image_type_instance() -> bytes:
    """``make_instance`` with Image Type (0008,0008), an element before the identity UIDs."""
    ds = make_dataset()
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    return encode(ds)


UNDECODABLE = "not a readable DICOM Part-10 file (NotImplementedError)"


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize(
    ("tag", "vr", "empty", "reason"),
    [
        (IMAGE_TYPE_TAG, b"\x00\x01", False, "SOPClassUID is missing"),  # swallows the rest
        (SOP_CLASS_UID_TAG, b"\x00\x01", False, "SOPClassUID is not a valid UID"),
        (SOP_CLASS_UID_TAG, b"ZZ", True, UNDECODABLE),  # decoded to be read: it cannot be
        (SOP_CLASS_UID_TAG, b"U\x00", True, UNDECODABLE),
        (MEDIA_STORAGE_SOP_INSTANCE_UID_TAG, b"ZZ", True, UNDECODABLE),
    ],
    ids=["image-type-00-01", "sop-class-00-01", "sop-class-ZZ", "sop-class-U-NUL", "meta-ZZ"],
)
def test_a_garbled_vr_before_the_identity_uids_is_invalid_everywhere(
    tag: bytes, vr: bytes, empty: bool, reason: str
) -> None:
    data = with_vr(image_type_instance(), tag, vr, empty=empty)
    error = assert_invalid_everywhere(data)
    assert reason in error.reason
    if reason == UNDECODABLE:
        assert isinstance(error.__cause__, NotImplementedError)  # chained, for the log
    in_meta = tag == MEDIA_STORAGE_SOP_INSTANCE_UID_TAG  # read after the data set's UIDs
    assert error.sop_instance_uid == (f"{SERIES}.1" if in_meta else None)


@pytest.mark.filterwarnings("ignore")
def test_a_garbled_vr_on_an_empty_last_element_is_invalid() -> None:
    padding = b"\xfc\xff\xfc\xffZZ\x00\x00"  # (FFFC,FFFC) after Pixel Data, empty, VR "ZZ"
    data = make_instance() + padding
    error = assert_invalid_everywhere(data, stored=False)
    assert error.reason == UNDECODABLE
    assert error.sop_instance_uid == f"{SERIES}.1"


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize(
    ("tag", "by"),
    [(PIXEL_DATA_TAG, 1), (PIXEL_DATA_TAG, 2**31), (ROWS_TAG, 1), (ROWS_TAG, 60000)],
    ids=["pixel-data-by-1", "pixel-data-by-2GiB", "rows-by-1", "rows-by-60000"],
)
def test_a_length_that_overruns_the_file_is_invalid_everywhere(tag: bytes, by: int) -> None:
    data = with_overrunning_length(make_instance(), tag, by)
    assert header_walk.walk_part10(data) is not None  # by_pydicom reads it the other way
    error = assert_invalid_everywhere(data, stored=False)  # identity alone is readable
    assert error.reason == f"truncated: the stream ends inside element {tag_name(tag)}"
    assert error.sop_instance_uid == f"{SERIES}.1"


def tag_name(tag: bytes) -> str:
    """``(GGGG,EEEE)`` for the four bytes of a little endian tag."""
    return f"({tag[1]:02X}{tag[0]:02X},{tag[3]:02X}{tag[2]:02X})"


def test_the_data_is_on_disk_before_the_rename_and_the_directory_synced_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = make_spool(tmp_path)
    spool.store(make_instance(sop_uid="1.2.3.4.5"), SOURCE)  # directories exist from here on
    events: list[str] = []
    fsync, open_, write, replace, unlink = os.fsync, os.open, os.write, os.replace, os.unlink

    def record_open(path: StrOrBytesPath, flags: int, mode: int = 0o777) -> int:
        if Path(str(path)).parent == spool.staging_dir:
            events.append("open O_DSYNC" if flags & os.O_DSYNC else "open")
        return open_(path, flags, mode)

    def record_write(fd: int, data: bytes) -> int:
        events.append("write")
        return write(fd, data)

    def record_fsync(fd: int) -> None:
        events.append("dir-sync" if os.path.isdir(f"/proc/self/fd/{fd}") else "file-fsync")
        fsync(fd)

    def record_replace(src: StrOrBytesPath, dst: StrOrBytesPath) -> None:
        events.append("rename")
        replace(src, dst)

    def record_unlink(path: StrOrBytesPath, *, dir_fd: int | None = None) -> None:
        events.append("unlink")  # none for a stored instance: its staged file was renamed
        unlink(path, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", record_open)
    monkeypatch.setattr(os, "write", record_write)
    monkeypatch.setattr(os, "fsync", record_fsync)
    monkeypatch.setattr(os, "replace", record_replace)
    monkeypatch.setattr(os, "unlink", record_unlink)
    stored = spool.store(make_instance(sop_uid="1.2.3.4.6"), SOURCE)
    # O_DSYNC: the write returns once the data and the size to read it back are on disk
    assert events == ["open O_DSYNC", "write", "rename", "dir-sync"]
    assert stored.path.read_bytes() == make_instance(sop_uid="1.2.3.4.6")
    assert not list(spool.staging_dir.iterdir())


def test_a_refused_instance_and_a_duplicate_leave_nothing_in_staging(tmp_path: Path) -> None:
    spool = make_spool(tmp_path)
    with pytest.raises(InvalidInstance):
        spool.store(make_instance(omit=("SOPInstanceUID",)), SOURCE)
    with pytest.raises(StudyMismatch):
        spool.store(make_instance(), SOURCE, expected_study_uid="1.2.999")
    first = spool.store(make_instance(), SOURCE)
    again = spool.store(make_instance(), SOURCE)
    assert again.duplicate
    assert first.path.exists()
    assert not list(spool.staging_dir.iterdir())
    assert all_files(tmp_path) == [first.path]
