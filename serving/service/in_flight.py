"""What the coordinator keeps in memory about a study between its first instance and its route.

One :class:`StudyInFlight` per study, created by the first recorded instance and removed by
:meth:`StudiesInFlight.forget` on every exit: routed (with or without tasks), quarantined,
routing failed, or an instance ignored as late. Nothing else about a study is kept in the
coordinator's memory; everything durable is in the job store.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pydicom

from router.rules import Decision, StudyFacts, StudyFactsBuilder
from router.vocabulary import OrderContext


@dataclass
class StudyInFlight:
    """One study's in-memory state while it arrives and until it is routed.

    Attributes:
        study_uid: Study Instance UID.
        calling_ae: AE title of the peer that sent its first recorded instance ("" unknown).
        headers: SOP Instance UID → header (pixel data not read), in arrival order: identity
            checks, rules and the results thread read them instead of the files.
        facts: The rule facts, built incrementally: each header is folded in once, at the
            first decision point after it arrived (:meth:`study_facts`), never by the ingest
            thread (reading a fresh header's elements costs ~0.4 ms of interpreter time that
            the receiving association needs).
        stat: Whether the rules make the study stat, judged once from its first instances;
            None until judged.
        quiet: ``(instances, seconds)``: the quiet period judged for that many instances (the
            assembler asks at every check; the rules run again only when instances arrived).
    """

    study_uid: str
    calling_ae: str = ""
    headers: dict[str, pydicom.Dataset] = field(default_factory=dict)
    facts: StudyFactsBuilder = field(default_factory=StudyFactsBuilder)
    stat: bool | None = None
    quiet: tuple[int, float] | None = None
    _folded: int = 0
    _decision: tuple[tuple[int, OrderContext | None], Decision] | None = None
    # Guards the facts and the decision: the ingest thread (stat judgement), the loops (quiet
    # period, routing) may ask at once, while the ingest thread keeps adding headers.
    _guard: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    def add(self, sop_uid: str, header: pydicom.Dataset) -> None:
        """Keep one more instance's header (a SOP Instance UID seen before keeps its place).

        Called with the coordinator's lock held, like every other change of ``headers``.
        """
        self.headers[sop_uid] = header

    @property
    def count(self) -> int:
        """Instances kept."""
        return len(self.headers)

    def study_facts(self, order: OrderContext | None) -> StudyFacts:
        """The rule facts of every instance kept so far (headers not folded in yet are now).

        Raises:
            FactsError: The headers do not describe one readable study.
        """
        with self._guard:
            self._fold()
            return self.facts.facts(self.calling_ae, order)

    def decide(
        self,
        order: OrderContext | None,
        evaluate: Callable[[StudyFacts, OrderContext | None], Decision],
    ) -> Decision:
        """The routing decision for the instances and the order known now.

        ``evaluate`` runs the rules on the facts; it is called only when the instances or the
        order changed since the last decision, so the quiet-period check at the release and
        the routing moments later share one evaluation. An error from ``evaluate`` (or from the
        facts) propagates and nothing is remembered.
        """
        with self._guard:
            self._fold()
            key = (self._folded, order)
            if self._decision is not None and self._decision[0] == key:
                return self._decision[1]
            decision = evaluate(self.facts.facts(self.calling_ae, order), order)
            self._decision = (key, decision)
            return decision

    def _fold(self) -> None:
        """Fold the headers that arrived since the last fold into the facts (guard held)."""
        if self._folded >= len(self.headers):
            return
        # One C-level copy: atomic under the GIL while the ingest thread may add headers.
        pending = list(itertools.islice(self.headers.values(), self._folded, None))
        for header in pending:
            self.facts.add(header)
        self._folded += len(pending)


class StudiesInFlight:
    """The studies in flight, by Study Instance UID (the caller holds the coordinator's lock)."""

    def __init__(self) -> None:
        self._studies: dict[str, StudyInFlight] = {}

    def get(self, study_uid: str) -> StudyInFlight | None:
        """The study's state, if in flight."""
        return self._studies.get(study_uid)

    def open(self, study_uid: str, calling_ae: str) -> StudyInFlight:
        """The study's state, created for its first recorded instance."""
        study = self._studies.get(study_uid)
        if study is None:
            study = self._studies[study_uid] = StudyInFlight(study_uid, calling_ae)
        return study

    def forget(self, study_uid: str) -> None:
        """Drop everything kept about the study (it left: routed, quarantined, failed...)."""
        self._studies.pop(study_uid, None)

    def __contains__(self, study_uid: object) -> bool:
        return study_uid in self._studies

    def __len__(self) -> int:
        return len(self._studies)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._studies))
