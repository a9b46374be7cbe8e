"""The durable spool: every received instance is on disk, fsynced, before anyone acknowledges it.

Layout (file names never come from network data, only from hashes of validated UIDs)::

    root/instances/<sha256(StudyUID)[:16]>/<sha256(SeriesUID)[:16]>/<sha256(SOPInstanceUID)>.dcm

A write goes to a temporary file in ``root/staging``, opened with ``O_DSYNC`` so that the one
``write`` returns only once the data (and the size needed to read it back) is on disk; it is then
renamed to its final name and that directory is fsynced, so after a crash a file is either
complete or absent (a leftover temporary file is never read, and is removed at start-up by
:meth:`Spool.discard_partial_writes`).

The header is checked on a parser thread *while* the write runs: the write holds no GIL for
its whole duration, so the two overlap instead of adding up. The final name comes from the
header's UIDs, which is why the data goes to the staging directory first. An instance the header
check refuses, and a copy of one already stored, are deleted from staging, never renamed.

A repeated SOP Instance UID is idempotent: identical bytes are not rewritten
(``duplicate=True``). Different bytes under the same UID replace the stored copy
(``replaced=True``): a modality resends an instance after correcting it, and the newest copy is
the one a radiologist would see at the PACS, so the spool keeps the same one.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path
from typing import Any, Literal

from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite

from serving.gateway.errors import InvalidInstance, OutOfResources
from serving.gateway.instance_header import (
    InstanceIdentity,
    read_header,
    read_identity,
    read_stored_identity,
)
from serving.gateway.part10 import is_valid_uid

__all__ = [
    "DEFAULT_MIN_FREE_BYTES",
    "Channel",
    "InstanceIdentity",
    "InstanceSource",
    "Spool",
    "StoredInstance",
    "disk_free_bytes",
    "is_valid_uid",
    "read_header",
    "read_identity",
    "utc_now",
]

LOGGER = logging.getLogger(__name__)

MIB = 1024 * 1024
DEFAULT_MIN_FREE_BYTES = 512 * MIB
_LOCK_STRIPES = 64
_TEMP_SUFFIX = ".tmp"
_PARSER_THREADS = 4  # header checks are GIL-bound: more threads would not check faster
# O_DSYNC: each write(2) is synchronized I/O data integrity completion (data plus the metadata
# needed to read it back), as write + fdatasync, in one call that holds no GIL.
_DSYNC = getattr(os, "O_DSYNC", 0)
_STAGED_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | _DSYNC

_parsers: ThreadPoolExecutor | None = None
_parsers_lock = threading.Lock()


def _parser_pool() -> ThreadPoolExecutor:
    """The process's header-check threads (shared by every spool; created on first use)."""
    global _parsers
    with _parsers_lock:
        if _parsers is None:
            _parsers = ThreadPoolExecutor(_PARSER_THREADS, thread_name_prefix="spool-header")
        return _parsers


Channel = Literal["dimse", "stow", "rescan"]


@dataclass(frozen=True)
class InstanceSource:
    """Where an instance came from.

    Attributes:
        calling_ae: Calling AE title (DIMSE); None for STOW-RS and rescans.
        address: Peer IP address; None for rescans.
        channel: ``"dimse"``, ``"stow"``, or ``"rescan"`` (found on disk at start-up).
        association_id: Opaque id of the association or HTTP request (empty for rescans).
    """

    calling_ae: str | None
    address: str | None
    channel: Channel
    association_id: str


@dataclass(frozen=True)
class StoredInstance:
    """An instance that is durably in the spool.

    Attributes:
        size_bytes: Size of the Part-10 file in bytes.
        received_at: When the spool accepted it (injected clock; file mtime for rescans).
        duplicate: The same bytes were already stored; nothing was written.
        replaced: Different bytes were stored under this SOP Instance UID and were replaced.
        header: The data set as the spool parsed it to validate it, without its pixel data
            (None for a rescan): whoever records the instance needs no second read of the file.
            Shared, not copied: treat it as read-only.
    """

    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    study_instance_uid: str
    path: Path
    size_bytes: int
    transfer_syntax_uid: str
    received_at: datetime
    source: InstanceSource
    duplicate: bool = False
    replaced: bool = False
    header: Dataset | None = field(default=None, compare=False, repr=False)


def disk_free_bytes(path: Path) -> int:
    """Bytes available to this process on the file system holding ``path``."""
    return shutil.disk_usage(path).free


def utc_now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def _digest(uid: str) -> str:
    return hashlib.sha256(uid.encode("ascii")).hexdigest()


def _sync_file_data(fd: int) -> None:
    """Force a new file's data, and the metadata needed to read it back (its size), to disk.

    fdatasync(2) where the platform has it: an instance's modification time need not survive a
    crash, so its timestamps are not forced out on their own; fsync(2) elsewhere.
    """
    sync = getattr(os, "fdatasync", os.fsync)
    sync(fd)


def _fsync_directory(directory: Path) -> None:
    """Make a rename or a new entry in ``directory`` durable (POSIX)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _encode(instance: bytes | Dataset) -> bytes:
    if isinstance(instance, bytes | bytearray | memoryview):
        return bytes(instance)
    if "TransferSyntaxUID" not in getattr(instance, "file_meta", Dataset()):
        raise InvalidInstance("dataset has no file meta with a Transfer Syntax UID")
    buffer = BytesIO()
    try:
        dcmwrite(buffer, instance, enforce_file_format=True)
    except (AttributeError, ValueError, TypeError) as exc:
        raise InvalidInstance(f"dataset cannot be encoded as a Part-10 file: {exc}") from exc
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Validation: read what a peer sent without trusting it. Raw element values are read directly,
# so pydicom never converts (or logs) a value we did not ask for.


LOW_DISK_HEADROOM_BYTES = 64 * 2**20
"""Free space above the reserve (bytes) under which ``Spool.low_disk`` reports the disk low."""


class Spool:
    """Durable store of received instances, safe for concurrent associations and requests.

    Args:
        root: Spool directory; instances live under ``root/instances``.
        min_free_bytes: Free space (bytes) that must remain after a write; below it
            :meth:`store` raises :class:`OutOfResources` without writing.
        free_bytes: Free bytes on the file system of a path (injected for tests).
        clock: Returns the current time for ``StoredInstance.received_at``.
    """

    def __init__(
        self,
        root: Path,
        *,
        min_free_bytes: int = DEFAULT_MIN_FREE_BYTES,
        free_bytes: Callable[[Path], int] = disk_free_bytes,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        if min_free_bytes < 0:
            raise ValueError(f"min_free_bytes must be >= 0, got {min_free_bytes}")
        self.root = Path(root)
        self.instances_dir = self.root / "instances"
        self.instances_dir.mkdir(parents=True, exist_ok=True)
        self.staging_dir = self.root / "staging"
        self.staging_dir.mkdir(exist_ok=True)
        self.min_free_bytes = min_free_bytes
        self._free_bytes = free_bytes
        self._clock = clock
        # One lock per hash stripe: two copies of one instance never race, others never wait.
        self._locks = [threading.Lock() for _ in range(_LOCK_STRIPES)]
        self._bytes_lock = threading.Lock()
        self._stored_bytes = 0  # of instance files, as far as this process knows (see count)

    @property
    def stored_bytes(self) -> int:
        """Bytes of instance files in the spool: those found by :meth:`count_stored` plus those
        written since, less those removed."""
        with self._bytes_lock:
            return self._stored_bytes

    def _add_bytes(self, delta: int) -> None:
        with self._bytes_lock:
            self._stored_bytes = max(self._stored_bytes + delta, 0)

    def count_stored(self, instances: Iterator[StoredInstance] | list[StoredInstance]) -> None:
        """Start :attr:`stored_bytes` from the instances found at start-up (a rescan)."""
        total = sum(i.size_bytes for i in instances)
        with self._bytes_lock:
            self._stored_bytes = total

    def remove(self, path: Path | str) -> int:
        """Remove one instance file (retention); the bytes removed, 0 when it was not there.

        Only files below ``root/instances`` are touched; the series and study directories go
        when they are left empty. Takes the instance's stripe lock, so a resend being checked
        as a duplicate at the same moment either sees the file or writes it anew.
        """
        target = Path(path)
        try:
            target.relative_to(self.instances_dir)
        except ValueError:
            LOGGER.warning("spool retention skipped a path outside the spool")
            return 0
        if target.suffix != ".dcm" or len(target.stem) < 8:
            return 0
        with self._locks[int(target.stem[:8], 16) % _LOCK_STRIPES]:
            try:
                size = target.stat().st_size
                target.unlink()
            except FileNotFoundError:
                return 0
        self._add_bytes(-size)
        for directory in (target.parent, target.parent.parent):
            try:
                directory.rmdir()  # only when empty
            except OSError:
                break
        return size

    def path_for(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> Path:
        """Where the instance with these (validated) UIDs is stored."""
        return (
            self.instances_dir
            / _digest(study_uid)[:16]
            / _digest(series_uid)[:16]
            / f"{_digest(sop_instance_uid)}.dcm"
        )

    def store(
        self,
        instance: bytes | Dataset,
        source: InstanceSource,
        *,
        expected_study_uid: str | None = None,
    ) -> StoredInstance:
        """Validate and durably store one instance; return only once it is safe on disk.

        Args:
            instance: A complete Part-10 file (preamble, meta, dataset) or a pydicom Dataset
                with ``file_meta``.
            source: Who sent it.
            expected_study_uid: When set, an instance of another study is refused
                (:class:`~serving.gateway.errors.StudyMismatch`) and nothing of it is kept.

        Raises:
            InvalidInstance: Unreadable, truncated, or missing/invalid identity UIDs.
            OutOfResources: Writing would leave less than ``min_free_bytes`` free (checked
                before anything is written, duplicates included), or the disk filled up.
        """
        data = _encode(instance)
        self._check_space(len(data))
        staged = self.staging_dir / f".{uuid.uuid4().hex}{_TEMP_SUFFIX}"
        renamed = False
        try:
            handle = os.open(staged, _STAGED_FLAGS, 0o644)
            checked = _parser_pool().submit(
                read_header, data, expected_study_uid=expected_study_uid
            )
            try:
                self._write_synced(handle, data, checked)
            finally:
                os.close(handle)
            identity, header = checked.result()
            path = self.path_for(
                identity.study_instance_uid,
                identity.series_instance_uid,
                identity.sop_instance_uid,
            )
            with self._locks[int(path.stem[:8], 16) % _LOCK_STRIPES]:
                duplicate, replaced, old_size = False, False, 0
                if path.exists():
                    old_size = path.stat().st_size
                    if old_size == len(data) and path.read_bytes() == data:
                        duplicate = True
                    else:
                        replaced = True
                if not duplicate:
                    self._ensure_directory(path.parent)
                    # rename(2): atomic, and it overwrites a replaced instance.
                    try:
                        os.replace(staged, path)
                    except FileNotFoundError:  # retention removed the empty directory just now
                        self._ensure_directory(path.parent)
                        os.replace(staged, path)
                    renamed = True
                    _fsync_directory(path.parent)
                    self._add_bytes(len(data) - old_size)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise OutOfResources(
                    free_bytes=self._free_bytes(self.instances_dir),
                    needed_bytes=len(data),
                    reserve_bytes=self.min_free_bytes,
                ) from exc
            raise
        finally:
            if not renamed:  # refused, a duplicate, or failed: nothing of it is kept
                staged.unlink(missing_ok=True)
        stored = self._stored(identity, path, len(data), source, duplicate, replaced, header)
        LOGGER.debug(
            "spooled SOP instance %s (%d bytes, duplicate=%s, replaced=%s)",
            identity.sop_instance_uid,
            len(data),
            duplicate,
            replaced,
        )
        return stored

    def iter_instances(self) -> Iterator[StoredInstance]:
        """Every complete instance in the spool (for a restart), in path order.

        Reads only the file meta and identity tags. Files that cannot be read, or whose UIDs
        do not hash to their path, are logged and skipped; temporary files are ignored.
        """
        source = InstanceSource(None, None, "rescan", "")
        for path in sorted(self.instances_dir.glob("*/*/*.dcm")):
            try:
                with path.open("rb") as handle:
                    identity = read_stored_identity(handle)
            except (InvalidInstance, OSError) as exc:
                LOGGER.warning("spool rescan skipped %s: %s", path.name, exc)
                continue
            expected = self.path_for(
                identity.study_instance_uid,
                identity.series_instance_uid,
                identity.sop_instance_uid,
            )
            if expected != path:
                LOGGER.warning("spool rescan skipped %s: UIDs do not match its path", path.name)
                continue
            stat = path.stat()
            received_at = datetime.fromtimestamp(stat.st_mtime, UTC)
            yield StoredInstance(
                sop_instance_uid=identity.sop_instance_uid,
                sop_class_uid=identity.sop_class_uid,
                series_instance_uid=identity.series_instance_uid,
                study_instance_uid=identity.study_instance_uid,
                path=path,
                size_bytes=stat.st_size,
                transfer_syntax_uid=identity.transfer_syntax_uid,
                received_at=received_at,
                source=source,
            )

    def discard_partial_writes(self) -> int:
        """Delete temporary files left by a crash mid-write; return how many were removed.

        Call at start-up only, before any association or request is served.
        """
        removed = 0
        leftovers = (
            *self.staging_dir.glob(f".*{_TEMP_SUFFIX}"),
            *self.instances_dir.glob(f"*/*/.*{_TEMP_SUFFIX}"),  # written by earlier versions
        )
        for path in leftovers:
            path.unlink(missing_ok=True)
            removed += 1
        return removed

    def low_disk(self) -> str | None:
        """Why instances are (about to be) refused for space, one line; None when there is room.

        Low means less than ``LOW_DISK_HEADROOM_BYTES`` above the ``min_free_bytes`` reserve:
        a large instance would be refused with ``0xA700`` now.
        """
        free = self._free_bytes(self.instances_dir)
        if free - self.min_free_bytes >= LOW_DISK_HEADROOM_BYTES:
            return None
        return (
            f"spool disk low: {free // 2**20} MiB free, {self.min_free_bytes // 2**20} MiB "
            "reserved; large instances are refused"
        )

    def _check_space(self, needed_bytes: int) -> None:
        free = self._free_bytes(self.instances_dir)
        if free - needed_bytes < self.min_free_bytes:
            raise OutOfResources(
                free_bytes=free, needed_bytes=needed_bytes, reserve_bytes=self.min_free_bytes
            )

    def _ensure_directory(self, directory: Path) -> None:
        """Create the study/series directories, making each new entry durable."""
        for level in (directory.parent, directory):
            if not level.is_dir():
                level.mkdir(exist_ok=True)
                _fsync_directory(level.parent)

    @staticmethod
    def _write_synced(handle: int, data: bytes, checked: Future[Any]) -> None:
        """Write ``data`` to the staged file and make it durable while ``checked`` runs.

        With ``O_DSYNC`` each write(2) returns once its data is on disk; without it (a
        platform that lacks the flag) the file is fdatasynced after the last write.
        """
        try:
            written = os.write(handle, data)  # a regular file takes it all, in practice
            while written < len(data):
                written += os.write(handle, memoryview(data)[written:])
            if not _DSYNC:
                _sync_file_data(handle)
        # Also on KeyboardInterrupt/SystemExit: the background check must be cancelled, then
        # the error goes on (re-raised).
        except BaseException:
            checked.cancel()  # not started yet: skip it; started: its result is not awaited
            raise

    def _stored(
        self,
        identity: InstanceIdentity,
        path: Path,
        size_bytes: int,
        source: InstanceSource,
        duplicate: bool,
        replaced: bool,
        header: Dataset | None = None,
    ) -> StoredInstance:
        return StoredInstance(
            sop_instance_uid=identity.sop_instance_uid,
            sop_class_uid=identity.sop_class_uid,
            series_instance_uid=identity.series_instance_uid,
            study_instance_uid=identity.study_instance_uid,
            path=path,
            size_bytes=size_bytes,
            transfer_syntax_uid=identity.transfer_syntax_uid,
            received_at=self._clock(),
            source=source,
            duplicate=duplicate,
            replaced=replaced,
            header=header,
        )
