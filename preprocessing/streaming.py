"""Streaming assembly: decode slices as they arrive, stack them when the series is complete.

The gateway hands each received instance to :meth:`SeriesAssembler.add`, which decodes its
frames at once (rescale applied) and keeps them in memory, so by the time the last slice lands
only sorting, checking and one copy into the volume buffer remain. :meth:`SeriesAssembler.volume`
ends in :func:`preprocessing.series.build_volume`, the same code as batch loading, so the voxels
and affine equal :func:`preprocessing.series.load_series` on the same instances.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import pydicom

from preprocessing.errors import (
    IncompleteSeriesError,
    LoaderFault,
    MixedSeriesError,
    PreprocessingError,
    UnreadableInstanceError,
    UnsupportedSeriesError,
)
from preprocessing.geometry import StackPlan, plan_frames
from preprocessing.instance import Frame, frames_of, read_dataset
from preprocessing.series import check_identity, identity_of, stack_frames
from preprocessing.volume import Volume

_T = TypeVar("_T")


class SeriesAssembler:
    """Collects the instances of one series, decoding each on arrival.

    Args:
        series_uid: The series to accept; ``None`` adopts the series of the first instance.
        expected_count: Number of instances that make the series complete, if known.
        tolerance_mm: Allowed deviation of slice positions from a regular grid, millimetres.
        on_frames: Called with the decoded frames of each newly accepted instance (not for a
            repeated one), after the assembler has stored them; lets a caller start per-slice
            work while the rest of the series is still arriving. It should not raise: an
            exception reaches the caller of :meth:`add` although the instance was kept.
    """

    def __init__(
        self,
        series_uid: str | None = None,
        *,
        expected_count: int | None = None,
        tolerance_mm: float = 0.05,
        on_frames: Callable[[Sequence[Frame]], None] | None = None,
    ) -> None:
        self.series_uid = series_uid
        self.expected_count = expected_count
        self.tolerance_mm = tolerance_mm
        self.on_frames = on_frames
        self._frames: dict[str, list[Frame]] = {}
        self._first: tuple[str, pydicom.Dataset] | None = None
        self._identity: tuple[str | None, ...] | None = None
        self._received = 0

    @property
    def count(self) -> int:
        """Distinct instances (SOP Instance UIDs) received so far."""
        return len(self._frames)

    @property
    def is_complete(self) -> bool:
        """True when ``expected_count`` is known and reached."""
        return self.expected_count is not None and self.count >= self.expected_count

    def add(self, source: Path | str | bytes | pydicom.Dataset) -> None:
        """Read one instance and decode its frames now; a repeated SOP Instance UID is ignored.

        Raises:
            MixedSeriesError: The instance belongs to another series or study.
            IdentityMismatchError: It disagrees with earlier instances on patient identity.
            PreprocessingError: It is unreadable or cannot be decoded.
        """
        self._received += 1
        where = f"instance #{self._received}"
        try:
            self._add(read_dataset(source, where), where)
        except PreprocessingError:
            raise
        except Exception as exc:  # a last line of defence: callers only ever see typed errors
            raise LoaderFault(
                f"{where}: unexpected {type(exc).__name__} while reading",
                series_uid=self.series_uid,
            ) from exc

    def _add(self, ds: pydicom.Dataset, where: str) -> None:
        series_uid = ds.get("SeriesInstanceUID")
        series_uid = str(series_uid) if series_uid not in (None, "") else None
        if series_uid is None:
            raise UnreadableInstanceError(f"{where}: no SeriesInstanceUID")
        if self.series_uid is None:
            self.series_uid = series_uid
        elif series_uid != self.series_uid:
            raise MixedSeriesError(
                f"instance of series {series_uid} given to the assembler of this series",
                series_uid=self.series_uid,
            )
        sop_uid = str(ds.get("SOPInstanceUID", "") or "")
        if sop_uid and sop_uid in self._frames:
            return
        identity = identity_of(ds, where)
        if self._first is not None and self._identity is not None:
            if identity[1] is not None and identity[1] != self._identity[1]:
                raise MixedSeriesError(
                    f"instance of study {identity[1]} given to a series of study "
                    f"{self._identity[1]}",
                    series_uid=self.series_uid,
                )
            check_identity([self._first, (where, ds)])
        frames = [frame.decoded() for frame in frames_of(ds, where)]
        self._frames[frames[0].sop_uid] = frames
        if self._first is None:
            # Keep only the identifying header, not the pixel data, for later comparisons.
            header = pydicom.Dataset()
            for keyword in ("SOPInstanceUID", "SeriesInstanceUID", "PatientID",
                            "StudyInstanceUID", "AccessionNumber"):  # fmt: skip
                if keyword in ds:
                    setattr(header, keyword, ds.get(keyword))
            self._first = (where, header)
            self._identity = identity
        if self.on_frames is not None:
            self.on_frames(frames)

    def frames(self) -> list[Frame]:
        """The decoded frames received so far: instances in arrival order, frames in order."""
        return [frame for group in self._frames.values() for frame in group]

    def plan(self) -> tuple[list[Frame], StackPlan]:
        """Check the geometry of the complete series without stacking it (no voxel is copied).

        Returns:
            :meth:`frames` and their :class:`~preprocessing.geometry.StackPlan` (slice order and
            affine), exactly as :meth:`volume` and :func:`load_series` compute them.

        Raises:
            IncompleteSeriesError: ``expected_count`` is known and not yet reached.
            PreprocessingError: Geometric defects, as in :func:`load_series`.
        """
        if self.expected_count is not None and self.count < self.expected_count:
            raise IncompleteSeriesError(
                f"{self.count} of {self.expected_count} instances received",
                series_uid=self.series_uid,
            )
        if self.series_uid is None or not self._frames:
            raise UnsupportedSeriesError("no instances received", series_uid=self.series_uid)
        frames = self.frames()
        return frames, self._guarded(lambda: plan_frames(frames, self._uid, self.tolerance_mm))

    def volume(self) -> Volume:
        """Sort the decoded frames, check the geometry and stack them (no file is re-read).

        Raises:
            IncompleteSeriesError: ``expected_count`` is known and not yet reached.
            PreprocessingError: Geometric defects, as in :func:`load_series`.
        """
        frames, plan = self.plan()
        return self._guarded(lambda: stack_frames(frames, plan, self._uid, self.tolerance_mm))

    @property
    def _uid(self) -> str:
        assert self.series_uid is not None
        return self.series_uid

    def _guarded(self, work: Callable[[], _T]) -> _T:
        """Run ``work``; callers only ever see typed errors (a last line of defence)."""
        try:
            return work()
        except PreprocessingError:
            raise
        except Exception as exc:  # a last line of defence: callers only ever see typed errors
            raise LoaderFault(
                f"unexpected {type(exc).__name__} while stacking", series_uid=self.series_uid
            ) from exc
