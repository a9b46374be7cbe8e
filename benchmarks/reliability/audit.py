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
from serving.delivery.outbox import Outbox
from serving.jobstore import JobStore, TaskState
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


def job_state(store: JobStore, study_uid: str) -> tuple[int, int, int]:
    """(tasks, not-terminal tasks and items, dead items) of one study."""
    tasks = store.tasks(study_uid=study_uid)
    ids = {t.task_id for t in tasks}
    items = [i for i in Outbox(store).items() if i.task_id in ids]
    open_count = sum(t.state not in TERMINAL_TASKS for t in tasks)
    open_count += sum(i.state not in TERMINAL_ITEMS for i in items)
    return len(tasks), open_count, sum(i.state is OutboxState.DEAD for i in items)


def judge(pacs: Pacs, store: JobStore, study_uid: str, acknowledged: set[str]) -> Verdict:
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
    tasks, open_count, dead = job_state(store, study_uid)
    stuck = open_count + int(bool(acknowledged) and tasks == 0)
    return Verdict(study_uid, len(acknowledged), len(copies), lost, duplicated, stale, stuck, dead)


def settle(
    pacs: Pacs, var_dir: Path, studies: dict[str, set[str]], timeout_s: float
) -> tuple[list[Verdict], float]:
    """Wait until every study is clean (or ``timeout_s`` seconds pass); the verdicts then and
    the seconds waited."""
    started = time.monotonic()
    while True:
        store = open_store(var_dir)
        try:
            verdicts = [judge(pacs, store, uid, ack) for uid, ack in studies.items()]
        finally:
            store.close()
        waited = time.monotonic() - started
        if all(v.clean() for v in verdicts) or waited > timeout_s:
            return verdicts, waited
        time.sleep(0.5)
