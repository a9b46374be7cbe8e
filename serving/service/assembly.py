"""Study assembly: when is a study complete enough to infer on?

A pure state machine (times are seconds on an injected monotonic clock, passed in by the caller):

- every stored instance is ``add``-ed to its series and study;
- a series is complete when its expected instance count is known and reached
  (ImagesInAcquisition, or a count from the order), or when the association that carried it was
  released and no instance arrived for the study's quiet period (short for stat work, longer for
  routine), or, as a safety net, when no instance arrived for ``idle_timeout_s`` even though the
  association is still open;
- a study is complete when every series of it is complete; ``due(now)`` hands complete studies
  out exactly once per generation;
- an instance arriving after its study was handed out is *late*: the caller decides (re-run as
  the next generation, or ignore and audit) and calls :meth:`reopen` for a re-run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum


class Arrival(StrEnum):
    """What ``add`` made of an instance."""

    NEW = "new"
    DUPLICATE = "duplicate"  # same SOP Instance UID seen before in this generation
    LATE = "late"  # its study was already handed out


@dataclass
class SeriesState:
    """Progress of one series (instance paths by SOP Instance UID, in arrival order)."""

    series_uid: str
    study_uid: str
    modality: str
    instances: dict[str, str] = field(default_factory=dict)
    expected: int | None = None
    last_at: float = 0.0

    @property
    def count(self) -> int:
        """Instances received."""
        return len(self.instances)

    @property
    def reached_expected(self) -> bool:
        """The expected count is known and reached."""
        return self.expected is not None and self.count >= self.expected


@dataclass
class StudyState:
    """Progress of one study."""

    study_uid: str
    series: dict[str, SeriesState] = field(default_factory=dict)
    first_at: float = 0.0
    last_at: float = 0.0
    released_at: float | None = None
    handed_out: bool = False
    generation: int = 0
    late: int = 0

    @property
    def instance_count(self) -> int:
        """Instances received in this generation."""
        return sum(s.count for s in self.series.values())


@dataclass(frozen=True)
class CompleteStudy:
    """A study handed out for routing.

    Attributes:
        study_uid: Study Instance UID.
        generation: 0 for the first hand-out, +1 for every re-run after late instances.
        series: Series UID → instance paths in arrival order.
        reason: Why it is complete: ``expected-count``, ``quiet-period`` or ``idle-timeout``.
        waited_s: From the last instance to the hand-out, seconds.
    """

    study_uid: str
    generation: int
    series: dict[str, list[str]]
    reason: str
    waited_s: float


class StudyAssembler:
    """Tracks studies until complete.

    Args:
        quiet_period_s: Quiet period for a study (seconds), e.g. short when a rule makes it stat;
            called with the study's state whenever its completion is checked.
        idle_timeout_s: Completion without a release once nothing arrived for this long, seconds.
    """

    def __init__(
        self,
        quiet_period_s: Callable[[StudyState], float],
        *,
        idle_timeout_s: float = 120.0,
    ) -> None:
        self.quiet_period_s = quiet_period_s
        self.idle_timeout_s = idle_timeout_s
        self._studies: dict[str, StudyState] = {}

    def add(
        self,
        *,
        study_uid: str,
        series_uid: str,
        sop_uid: str,
        path: str,
        modality: str,
        now: float,
        expected: int | None = None,
    ) -> Arrival:
        """Record one stored instance; ``expected`` is the series' instance count if known."""
        study = self._studies.get(study_uid)
        if study is None:
            study = self._studies[study_uid] = StudyState(study_uid, first_at=now)
        series = study.series.get(series_uid)
        if series is None:
            series = study.series[series_uid] = SeriesState(series_uid, study_uid, modality)
        if sop_uid in series.instances:
            return Arrival.DUPLICATE
        series.instances[sop_uid] = path
        series.last_at = now
        if expected is not None and expected > 0:
            series.expected = expected
        study.last_at = now
        if study.handed_out:
            study.late += 1
            return Arrival.LATE
        return Arrival.NEW

    def released(self, study_uid: str, now: float) -> None:
        """The association that carried instances of ``study_uid`` ended (released or aborted)."""
        study = self._studies.get(study_uid)
        if study is not None:
            study.released_at = now

    def reopen(self, study_uid: str) -> int:
        """Re-run a handed-out study after late instances; returns the new generation."""
        study = self._studies[study_uid]
        study.handed_out = False
        study.generation += 1
        return study.generation

    def forget(self, study_uid: str) -> None:
        """Drop a study's in-memory state (quarantined, or long finished)."""
        self._studies.pop(study_uid, None)

    def study(self, study_uid: str) -> StudyState | None:
        """The in-memory state of a study, if tracked."""
        return self._studies.get(study_uid)

    def due(self, now: float, only: Callable[[str], bool] | None = None) -> list[CompleteStudy]:
        """Studies complete at ``now`` that were not handed out yet (each returned once).

        ``only``: consider just the studies whose UID it accepts (the others stay tracked).
        """
        ready = []
        for study in self._studies.values():
            if study.handed_out or not study.series:
                continue
            if only is not None and not only(study.study_uid):
                continue
            reason = self._complete_reason(study, now)
            if reason is None:
                continue
            study.handed_out = True
            ready.append(
                CompleteStudy(
                    study.study_uid,
                    study.generation,
                    {uid: list(s.instances.values()) for uid, s in study.series.items()},
                    reason,
                    max(now - study.last_at, 0.0),
                )
            )
        return ready

    def next_check_s(self, now: float, only: Callable[[str], bool] | None = None) -> float | None:
        """When ``due`` may next return something (absolute seconds), or None if nothing waits;
        ``only`` as for :meth:`due`."""
        times = []
        for study in self._studies.values():
            if study.handed_out or not study.series:
                continue
            if only is not None and not only(study.study_uid):
                continue
            if study.released_at is not None:
                times.append(study.last_at + self.quiet_period_s(study))
            times.append(study.last_at + self.idle_timeout_s)
        return min(times) if times else None

    def _complete_reason(self, study: StudyState, now: float) -> str | None:
        if all(s.reached_expected for s in study.series.values()):
            return "expected-count"
        quiet = now - study.last_at
        released_after_last = study.released_at is not None and study.released_at >= study.last_at
        if released_after_last and quiet >= self.quiet_period_s(study):
            return "quiet-period"
        if quiet >= self.idle_timeout_s:
            return "idle-timeout"
        return None
