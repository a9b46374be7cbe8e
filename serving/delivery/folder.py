"""A local folder destination: the default for ``statlane serve`` with no configuration.

Each payload becomes one file, written atomically (temporary file, fsync, rename, fsync of the
folder) so a reader never sees half a file and a crash never leaves one. The file name never
comes from PHI: a DICOM instance is named by its SOP Instance UID (checked to be a UID; result
UIDs are deterministic, so a re-run overwrites instead of duplicating), anything else by the
SHA-256 of its content.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import tempfile
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from router.vocabulary import DeliveryKind
from serving.delivery.base import DeliveryError, Payload

UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
EXTENSIONS: dict[DeliveryKind, str] = {
    DeliveryKind.SR: ".dcm",
    DeliveryKind.GSPS: ".dcm",
    DeliveryKind.SC: ".dcm",
    DeliveryKind.SEG: ".dcm",
    DeliveryKind.HL7: ".hl7",
    DeliveryKind.FHIR: ".fhir.json",
    DeliveryKind.WEBHOOK: ".json",
    DeliveryKind.WORKLIST: ".json",
}
"""File name suffix per payload kind."""
# Errors that clear without anyone changing the configuration.
TRANSIENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EAGAIN, errno.EBUSY})


def is_uid(value: str) -> bool:
    """A DICOM UID: dotted decimal components without leading zeros, at most 64 characters."""
    return 0 < len(value) <= 64 and UID_PATTERN.match(value) is not None


class FolderDestination:
    """Write each payload as one file under ``root`` (created if missing).

    Args:
        root: The folder.
        name: Destination name; ``folder:<root>`` by default.
    """

    def __init__(self, root: Path, name: str = "") -> None:
        self.root = Path(root)
        self.name = name or f"folder:{self.root}"

    def probe(self) -> None:
        """The folder exists (created if missing) and is writable; ``DeliveryError`` if not."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DeliveryError(True, f"{self.name}: cannot create the folder ({exc})") from exc
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise DeliveryError(True, f"{self.name}: the folder is not writable")

    def deliver(self, payload: Payload) -> None:
        """Write the payload atomically."""
        self.write(payload)

    def write(self, payload: Payload) -> Path:
        """Write the payload atomically and return the file's path."""
        try:
            data = payload.data()
        except OSError as exc:
            raise DeliveryError(False, f"{self.name}: cannot read the payload ({exc})") from exc
        target = self.root / (self._key(payload, data) + EXTENSIONS[payload.kind])
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            write_atomically(target, data)
        except OSError as exc:
            raise DeliveryError(
                exc.errno in TRANSIENT_ERRNOS, f"{self.name}: cannot write {target.name} ({exc})"
            ) from exc
        return target

    def _key(self, payload: Payload, data: bytes) -> str:
        if payload.kind.is_dicom:
            uid = self._sop_instance_uid(data)
            if is_uid(uid):
                return uid
        return hashlib.sha256(data).hexdigest()

    def _sop_instance_uid(self, data: bytes) -> str:
        try:
            ds = dcmread(io.BytesIO(data), stop_before_pixels=True)
            return str(ds.get("SOPInstanceUID", ""))
        except (OSError, InvalidDicomError) as exc:
            raise DeliveryError(False, f"{self.name}: not a readable DICOM file ({exc})") from exc


def write_atomically(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` so that it appears whole or not at all, durably."""
    fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, target)
    # whatever stopped the write (even an interrupt) leaves no temporary file; re-raised
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)
