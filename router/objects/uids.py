"""Deterministic UIDs for result objects, so a re-run never duplicates an object at the PACS.

Every UID is ``2.25.<integer>``, the integer being the first 128 bits of a SHA-256 digest of
(study, model ``name@version``, the input digest, what the UID names). The input digest
(:func:`router.result.input_digest`) names what the model read: the sorted SOP Instance UIDs
of the source instances and the model version. The same task re-run on the same input (a crash
retry, a re-run after a late instance of another series) yields the same UIDs, so nothing new
reaches the PACS; a re-run on more input (late instances of the series read) or with another
model version yields new SOP Instance and Series Instance UIDs, because a PACS keeps the first
object it received under a UID and would never show the corrected one. Tracking UIDs name a
finding across versions and do not depend on the input.
"""

from __future__ import annotations

import hashlib
from typing import Final, Literal

KINDS: Final = ("sr", "gsps", "sc", "seg")
"""Result object kinds, in the order they are built."""

Part = Literal["instance", "series"]

_NAMESPACE: Final = "statlane/router/objects/v1"


def _uid_of(*parts: str) -> str:
    digest = hashlib.sha256("\x1f".join((_NAMESPACE, *parts)).encode("utf-8")).hexdigest()
    return f"2.25.{int(digest[:32], 16)}"  # 128 bits, like a UUID: at most 44 of 64 characters


def model_ident(name: str, version: str) -> str:
    """The model identity that UIDs are derived from, ``"name@version"``."""
    return f"{name}@{version}"


def object_uid(
    study_uid: str, model: str, kind: str, part: Part = "instance", *, inputs: str
) -> str:
    """SOP Instance UID (``part="instance"``) or Series Instance UID of one result object.

    Args:
        study_uid: Study Instance UID of the source study.
        model: Model identity ``"name@version"`` (see :func:`model_ident`).
        kind: One of :data:`KINDS` (``"sr"``, ``"gsps"``, ``"sc"``, ``"seg"``).
        part: ``"instance"`` or ``"series"``.
        inputs: The result's input digest (``AIResult.input_digest``): each version of a
            result gets its own objects in its own series.

    Raises:
        ValueError: Unknown kind or part, or an empty study UID, model or input digest.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown result object kind {kind!r}; expected one of {KINDS}")
    if part not in ("instance", "series"):
        raise ValueError(f"unknown UID part {part!r}; expected 'instance' or 'series'")
    if not study_uid or not model or not inputs:
        raise ValueError("a result object UID needs a study UID, a model identity and inputs")
    return _uid_of(study_uid, model, inputs, kind, part)


def tracking_uid(study_uid: str, model: str, finding: str) -> str:
    """Tracking Unique Identifier of one finding of one study by one model version.

    The same UID appears in the SR measurement group, the GSPS graphic and the SEG segment of
    that finding, so a viewer can tie them together.
    """
    if not study_uid or not model or not finding:
        raise ValueError("a tracking UID needs a study UID, a model identity and a finding name")
    return _uid_of(study_uid, model, "tracking", finding)


def dimension_organization_uid(sop_instance_uid: str) -> str:
    """Dimension Organization UID of a multi-frame object, derived from its SOP Instance UID."""
    if not sop_instance_uid:
        raise ValueError("a dimension organization UID needs the object's SOP Instance UID")
    return _uid_of(sop_instance_uid, "dimension-organization")
