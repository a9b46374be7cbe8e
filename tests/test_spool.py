"""The durable spool: hashed paths, atomic writes, idempotent repeats, refusal of bad input."""

from __future__ import annotations

import errno
import hashlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian

from serving.gateway.errors import InvalidInstance, OutOfResources, StudyMismatch
from serving.gateway.spool import InstanceSource, Spool

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


def make_instance(sop_uid: str = f"{SERIES}.1", **kwargs: object) -> bytes:
    """``make_dataset`` encoded as a Part-10 file."""
    buffer = BytesIO()
    with warnings.catch_warnings():  # invalid UIDs are written on purpose by some tests
        warnings.simplefilter("ignore")
        dcmwrite(buffer, make_dataset(sop_uid, **kwargs), enforce_file_format=True)  # type: ignore[arg-type]
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
    assert not stored.duplicate and not stored.replaced


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

    assert again.duplicate and not again.replaced
    assert again.path == first.path
    assert (first.path.stat().st_ino, first.path.stat().st_mtime_ns) == (inode, mtime)


def test_different_bytes_under_the_same_uid_replace_the_stored_copy(tmp_path: Path) -> None:
    spool = make_spool(tmp_path)
    spool.store(make_instance(), SOURCE)
    corrected = make_instance(pixels=b"\x01\x00" * (PIXEL_BYTES // 2))

    stored = spool.store(corrected, SOURCE)

    assert stored.replaced and not stored.duplicate
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

    monkeypatch.setattr(os, "fsync", full)
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
    kwargs: dict[str, object] = {"sop_uid": f"{SERIES}.1", field: value}
    with pytest.raises(InvalidInstance, match="is not a valid UID"):
        spool.store(make_instance(**kwargs), SOURCE)  # type: ignore[arg-type]
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
def test_damaged_streams_are_invalid(tmp_path: Path, damage: object, reason: str) -> None:
    spool = make_spool(tmp_path)
    with pytest.raises(InvalidInstance, match=reason):
        spool.store(damage(make_instance()), SOURCE)  # type: ignore[operator]
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
    (leaf / f".{'0' * 64}.abc.tmp").write_bytes(b"half a file")  # crash mid-write
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
    assert spool.discard_partial_writes() == 1
    assert not list(leaf.glob("*.tmp"))
