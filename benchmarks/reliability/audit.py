"""What a trial is judged by: Orthanc's SRs per study, and the job store's tasks and outbox.

For one study with a set of acknowledged SOP Instance UIDs:

- **lost**: an instance was acknowledged but the study has no SR in Orthanc;
- **duplicated**: two different SR SOP Instance UIDs for the same input version (the same
  evidence set); the same SOP UID delivered twice is fine, Orthanc keeps one copy;
- **stale**: Orthanc's newest SR (Content Date/Time) does not reference every acknowledged
  instance;
- **stuck**: a task or outbox item of the study not terminal when the wait ends.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pydicom

from benchmarks.reliability.peers import Pacs
from serving.delivery.outbox import Outbox, OutboxItem
from serving.jobstore import JobStore, TaskRow, TaskState
from serving.jobstore.states import OutboxState

TERMINAL_TASKS = {TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED}
TERMINAL_ITEMS = {OutboxState.DELIVERED, OutboxState.DEAD}


@dataclass(frozen=True)
class SrCopy:
    """One SR stored in Orthanc: its SOP Instance UID, content time and evidence."""

    sop_uid: str
    content: str
    evidence: frozenset[str]


def srs_in_orthanc(pacs: Pacs, study_uid: str) -> list[SrCopy]:
    """Every SR of ``study_uid`` stored in Orthanc, with the instances it references."""
    found = pacs.post("/tools/lookup", study_uid.encode())
    copies: list[SrCopy] = []
    for hit in found or []:
        if hit.get("Type") != "Study":
            continue
        for series in pacs.get(f"/studies/{hit['ID']}/series"):
            if series["MainDicomTags"].get("Modality") != "SR":
                continue
            for instance in series["Instances"]:
                raw = pacs_file(pacs, instance)
                ds = pydicom.dcmread(io.BytesIO(raw))
                evidence = set()
                for seq in (
                    "CurrentRequestedProcedureEvidenceSequence",
                    "PertinentOtherEvidenceSequence",
                ):
                    for study in ds.get(seq, []):
                        for ref_series in study.get("ReferencedSeriesSequence", []):
                            for ref in ref_series.get("ReferencedSOPSequence", []):
                                evidence.add(str(ref.ReferencedSOPInstanceUID))
                content = f"{ds.get('ContentDate', '')}{ds.get('ContentTime', '')}"
                copies.append(SrCopy(str(ds.SOPInstanceUID), content, frozenset(evidence)))
    return copies


def pacs_file(pacs: Pacs, instance_id: str) -> bytes:
    """The stored DICOM file of one Orthanc instance."""
    from benchmarks.reliability.peers import http_get

    return http_get(f"{pacs.url}/instances/{instance_id}/file")


@dataclass
class Verdict:
    """The outcome for one study (counts are 0 or more per study)."""

    study_uid: str
    acknowledged: int
    srs: int
    lost: int
    duplicated: int
    stale: int
    stuck: int
    dead: int

    def clean(self) -> bool:
        """No loss, duplicate, stale result or stuck item."""
        return not (self.lost or self.duplicated or self.stale or self.stuck)


def open_store(var_dir: Path) -> JobStore:
    """The service's job store, opened beside the running service."""
    return JobStore(f"sqlite:///{var_dir / 'statlane.db'}", clock=lambda: datetime.now(UTC))


@dataclass(frozen=True)
class JobView:
    """The job store at one moment: tasks of each study, outbox items of each task."""

    tasks: dict[str, list[TaskRow]]
    items: dict[str, list[OutboxItem]]

    @classmethod
    def read(cls, var_dir: Path) -> JobView:
        """Read every task and outbox item once (cheap next to one query per study)."""
        store = open_store(var_dir)
        try:
            tasks: dict[str, list[TaskRow]] = {}
            for task in store.tasks():
                tasks.setdefault(task.study_instance_uid, []).append(task)
            items: dict[str, list[OutboxItem]] = {}
            for item in Outbox(store).items():
                items.setdefault(item.task_id, []).append(item)
        finally:
            store.close()
        return cls(tasks, items)

    def state(self, study_uid: str) -> tuple[int, int, int]:
        """(tasks, not-terminal tasks and items, dead items) of one study."""
        tasks = self.tasks.get(study_uid, [])
        items = [i for t in tasks for i in self.items.get(t.task_id, [])]
        open_count = sum(t.state not in TERMINAL_TASKS for t in tasks)
        open_count += sum(i.state not in TERMINAL_ITEMS for i in items)
        return len(tasks), open_count, sum(i.state is OutboxState.DEAD for i in items)

    def quiet(self, studies: dict[str, set[str]]) -> bool:
        """Every study has tasks, and they and their items are terminal."""
        for uid in studies:
            tasks, open_count, _ = self.state(uid)
            if tasks == 0 or open_count:
                return False
        return True


def judge(pacs: Pacs, view: JobView, study_uid: str, acknowledged: set[str]) -> Verdict:
    """The verdict for one study now."""
    copies = srs_in_orthanc(pacs, study_uid)
    by_version: dict[frozenset[str], set[str]] = {}
    for copy in copies:
        by_version.setdefault(copy.evidence, set()).add(copy.sop_uid)
    duplicated = sum(len(uids) - 1 for uids in by_version.values())
    lost = int(bool(acknowledged) and not copies)
    stale = 0
    if copies:
        newest = max(copies, key=lambda c: (c.content, len(c.evidence)))
        stale = int(not acknowledged <= newest.evidence)
    tasks, open_count, dead = view.state(study_uid)
    stuck = open_count + int(bool(acknowledged) and tasks == 0)
    return Verdict(study_uid, len(acknowledged), len(copies), lost, duplicated, stale, stuck, dead)


def settle(
    pacs: Pacs, var_dir: Path, studies: dict[str, set[str]], timeout_s: float
) -> tuple[list[Verdict], float]:
    """Wait until every study is clean (or ``timeout_s`` seconds pass); the verdicts then and
    the seconds waited."""
    started = time.monotonic()
    while True:
        view = JobView.read(var_dir)
        waited = time.monotonic() - started
        if not view.quiet(studies) and waited <= timeout_s:
            time.sleep(0.5)  # Orthanc is asked only once the job store is quiet
            continue
        verdicts = [judge(pacs, view, uid, ack) for uid, ack in studies.items()]
        waited = time.monotonic() - started
        if all(v.clean() for v in verdicts) or waited > timeout_s:
            return verdicts, waited
        time.sleep(0.5)
