"""DICOM result objects of one AI result: SR, GSPS, Secondary Capture and SEG (highdicom).

Every object joins the source study (same patient, study and accession) in a new series per
kind and result version, with SOP Instance UIDs derived from (study, model version, input
digest, kind): a re-run on the same input repeats its objects exactly (nothing new at the
PACS), a re-run on more images makes new ones, and the new SR names the one it replaces.
Whether an object may be *delivered* (see ``router.result.Mode``) is the outbox's decision;
building one touches nothing clinical.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from pydicom import Dataset

from router.objects.common import ObjectNotApplicable, ResultObjectError
from router.objects.gsps import build_gsps
from router.objects.sc import build_sc
from router.objects.seg import build_seg
from router.objects.sr import build_sr
from router.objects.uids import KINDS, object_uid
from router.result import AIResult

__all__ = [
    "BUILDERS",
    "KINDS",
    "ObjectNotApplicable",
    "ResultObject",
    "ResultObjectError",
    "build_gsps",
    "build_object",
    "build_objects",
    "build_sc",
    "build_seg",
    "build_sr",
    "object_uid",
    "write_objects",
]


@dataclass(frozen=True)
class ResultObject:
    """One built result object.

    Attributes:
        kind: ``"sr"``, ``"gsps"``, ``"sc"`` or ``"seg"``.
        dataset: The DICOM dataset, ready to be written or sent.
    """

    kind: str
    dataset: Dataset

    @property
    def sop_instance_uid(self) -> str:
        """The object's SOP Instance UID."""
        return str(self.dataset.SOPInstanceUID)


#: Result object kind -> its builder (None: the kind does not apply to the result).
BUILDERS: dict[str, Callable[[AIResult], Dataset | None]] = {
    "sr": build_sr,
    "gsps": build_gsps,
    "sc": build_sc,
    "seg": build_seg,
}


def build_object(result: AIResult, kind: str) -> ResultObject | None:
    """The ``kind`` object of ``result``; None when it does not apply (nothing to show).

    Raises:
        ObjectNotApplicable: The kind does not apply for a reason worth auditing (e.g. a SEG
            on a source without Frame of Reference UID).
        ResultObjectError: The result cannot be turned into a valid object (message names the
            study by UID and the problem).
        ValueError: ``kind`` is unknown.
    """
    if kind not in BUILDERS:
        raise ValueError(f"unknown result object kind {kind!r}; expected {KINDS}")
    dataset = BUILDERS[kind](result)
    return ResultObject(kind, dataset) if dataset is not None else None


def build_objects(result: AIResult, kinds: Iterable[str] = KINDS) -> list[ResultObject]:
    """Every object of ``kinds`` that applies to ``result``, in :data:`KINDS` order.

    The SR always; GSPS and SC when a present finding has a key image; SEG when the mask
    (label map) holds a label of a present finding, one segment per such label, on a source
    a SEG can reference (a kind that is not applicable is left out; :func:`build_object` says
    why). ``kinds`` lets a caller build the SR first and send it while the others are built.

    Raises:
        ResultObjectError: The result cannot be turned into a valid object (message names the
            study by UID and the problem).
        ValueError: ``kinds`` names an unknown kind.
    """
    wanted = set(kinds)
    unknown = wanted - set(KINDS)
    if unknown:
        raise ValueError(f"unknown result object kinds {sorted(unknown)}; expected {KINDS}")
    built = []
    for kind in KINDS:
        if kind in wanted:
            try:
                obj = build_object(result, kind)
            except ObjectNotApplicable:
                continue
            if obj is not None:
                built.append(obj)
    return built


def write_objects(objects: Iterable[ResultObject], folder: Path | str) -> list[Path]:
    """Write each object to ``folder/<SOP Instance UID>.dcm`` atomically; return the paths.

    Each file is written under a temporary name in ``folder``, flushed to disk and renamed, so
    a reader never sees half an object and a re-run replaces the file in place.
    """
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    paths = []
    for obj in objects:
        path = target / f"{obj.sop_instance_uid}.dcm"
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=target)
        try:
            with os.fdopen(handle, "wb") as stream:
                obj.dataset.save_as(stream, enforce_file_format=True)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, path)
        except BaseException:  # any exit, even an interrupt, removes the temporary file
            Path(temporary).unlink(missing_ok=True)
            raise
        paths.append(path)
    _sync_folder(target)
    return paths


def _sync_folder(folder: Path) -> None:
    """Make the renames durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
