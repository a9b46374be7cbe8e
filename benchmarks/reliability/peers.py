"""The peers: Orthanc on fixed ports (stopped and started again on the same storage), dcmtk's
storescu as the modality, and ``statlane serve`` as a separate process killed by PID.

Orthanc keeps its ports across an outage so the service's destination stays valid; the service
binds free ports on each start and writes them to a ports file.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

from benchmarks.report import progress

ROOT = Path(__file__).resolve().parents[2]
_STARTED = time.monotonic()
SERVE = (sys.executable, "-m", "serving.cli", "serve")


def say(message: str) -> None:
    """Progress on stderr with the seconds since the benchmark started."""
    progress(f"{time.monotonic() - _STARTED:6.1f} s  {message}")


def dcmtk(name: str) -> Path:
    """A dcmtk tool (never pynetdicom's same-named app in the virtual environment)."""
    for folder in ("/usr/bin", "/usr/local/bin", "/opt/homebrew/bin"):
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise SystemExit(f"dcmtk's {name} not found; install dcmtk (apt-get install dcmtk)")


@dataclass
class Sent:
    """One storescu run: which files the modality got a Success response for.

    Attributes:
        acknowledged: SOP files answered with Success, in order.
        returncode: storescu's exit status.
        seconds: Wall time of the association, seconds.
    """

    acknowledged: list[Path] = field(default_factory=list)
    returncode: int = -1
    seconds: float = 0.0


def storescu(
    port: int,
    files: list[Path],
    *,
    calling_ae: str = "MODALITY",
    on_ack: Callable[[int], None] | None = None,
) -> Sent:
    """Send ``files`` on one association and record which were acknowledged (Success);
    ``on_ack`` is called with the count so far after each Success response."""
    command = [str(dcmtk("storescu")), "-v", "-aet", calling_ae, "-aec", "STATLANE", "-to", "20"]
    command += ["127.0.0.1", str(port), *map(str, files)]
    started = time.monotonic()
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, TCP_NODELAY="1"),
    )
    assert process.stderr is not None
    sent = Sent()
    current: Path | None = None
    for line in process.stderr:
        if "Sending file:" in line:
            current = Path(line.split("Sending file:", 1)[1].strip())
        elif "Received Store Response" in line and "Success" in line and current is not None:
            sent.acknowledged.append(current)
            current = None
            if on_ack is not None:
                on_ack(len(sent.acknowledged))
    sent.returncode = process.wait()
    sent.seconds = time.monotonic() - started
    return sent


def echoscu(port: int) -> tuple[bool, float]:
    """A C-ECHO from the modality's address; (success, seconds)."""
    command = [str(dcmtk("echoscu")), "-aet", "MODALITY", "-aec", "STATLANE", "-to", "10"]
    started = time.monotonic()
    done = subprocess.run(
        [*command, "127.0.0.1", str(port)], capture_output=True, timeout=30, check=False
    )
    return done.returncode == 0, time.monotonic() - started


def http_get(url: str, timeout_s: float = 30.0) -> bytes:
    """GET ``url`` and return the body."""
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        body: bytes = response.read()
        return body


class Pacs:
    """Orthanc (Debian package) on fixed loopback ports with its storage under ``workdir``.

    Args:
        workdir: Storage, index, configuration and log.
        ports: HTTP and DICOM ports, kept across :meth:`stop` and :meth:`start`.
    """

    def __init__(self, workdir: Path, ports: tuple[int, int]) -> None:
        if shutil.which("Orthanc") is None:
            raise SystemExit("Orthanc not found; install it (apt-get install orthanc)")
        self.workdir = workdir
        self.http_port, self.dicom_port = ports
        self.process: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "statlane-bench-pacs",
            "StorageDirectory": str(workdir / "storage"),
            "IndexDirectory": str(workdir / "index"),
            "DicomAet": "ORTHANC",
            "RemoteAccessAllowed": True,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "UnknownSopClassAccepted": True,
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "StableAge": 1,
            "Plugins": [],
        }
        (workdir / "orthanc.json").write_text(json.dumps(config, indent=2))

    @property
    def url(self) -> str:
        """Base URL of the REST API."""
        return f"http://127.0.0.1:{self.http_port}"

    def get(self, path: str) -> Any:
        """GET ``path`` and decode the JSON answer."""
        return json.loads(http_get(self.url + path) or b"null")

    def post(self, path: str, body: bytes) -> Any:
        """POST raw ``body`` to ``path`` and decode the JSON answer."""
        request = urllib.request.Request(self.url + path, data=body, method="POST")
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read() or b"null")

    def start(self, timeout_s: float = 60.0) -> float:
        """Start Orthanc and wait until its REST API answers; returns that moment (monotonic)."""
        log = (self.workdir / "orthanc.log").open("ab")
        self.process = subprocess.Popen(
            ["Orthanc", str(self.workdir / "orthanc.json")],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, TCP_NODELAY="1"),
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited: see {self.workdir / 'orthanc.log'}")
            try:
                self.get("/system")
                return time.monotonic()
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Orthanc did not answer in {timeout_s} s") from None
                time.sleep(0.1)

    def crash(self) -> None:
        """Kill Orthanc (SIGKILL): the PACS goes down at once, as in a crash."""
        if self.process is None:
            return
        self.process.kill()
        self.process.wait()
        self.process = None

    def stop(self) -> None:
        """Stop Orthanc (SIGTERM, SIGKILL after 15 s); a no-op when it is not running."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


def write_config(workdir: Path, pacs: Pacs, quiet_s: float, bound_s: float | None) -> Path:
    """The service configuration: default rules sending to Orthanc, free ports, default outbox
    policy (24 h retry window, 5 s probes), quiet periods of ``quiet_s`` seconds, and the
    listeners' association, header and frame timeouts at ``bound_s`` seconds (None: defaults)."""
    rules = yaml.safe_load((ROOT / "router" / "rules" / "default.yaml").read_text())
    rules["defaults"]["destinations"] = ["pacs"]
    (workdir / "rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
    config = {
        "var_dir": str(workdir / "var"),
        "rules": str(workdir / "rules.yaml"),
        "dicom": {"host": "127.0.0.1", "port": 0, **_bound("association_timeout_s", bound_s)},
        "http": {"host": "127.0.0.1", "port": 0, **_bound("header_timeout_s", bound_s)},
        "hl7": {"host": "127.0.0.1", "port": 0, **_bound("frame_timeout_s", bound_s)},
        "assembly": {"quiet_period_s": {c: quiet_s for c in ("stat", "urgent", "routine")}},
        "runtime": {"device": "cpu", "preprocess_workers": 1},
        "destinations": {
            "pacs": {
                "type": "dicom",
                "ae_title": "ORTHANC",
                "host": "127.0.0.1",
                "port": pacs.dicom_port,
            }
        },
    }
    path = workdir / "statlane.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _bound(key: str, seconds: float | None) -> dict[str, float]:
    return {} if seconds is None else {key: seconds}


class Serve:
    """``statlane serve`` as its own process on one var dir, killed with SIGKILL by PID.

    Args:
        workdir: Holds the configuration, the ports file and the service log.
        config: The configuration file.
    """

    def __init__(self, workdir: Path, config: Path) -> None:
        self.workdir = workdir
        self.config = config
        self.process: subprocess.Popen[bytes] | None = None
        self.ports: dict[str, int] = {}
        self.starts = 0

    @property
    def pid(self) -> int:
        """The running service's process id."""
        assert self.process is not None
        return self.process.pid

    def start(self, timeout_s: float = 120.0) -> float:
        """Start the service and wait for its ports file; returns the start time in seconds."""
        ports_file = self.workdir / "ports.json"
        ports_file.unlink(missing_ok=True)
        log = (self.workdir / "serve.log").open("ab")
        started = time.monotonic()
        self.process = subprocess.Popen(
            [*SERVE, "--config", str(self.config), "--ports-file", str(ports_file)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=dict(os.environ, TCP_NODELAY="1"),
        )
        log.close()
        self.starts += 1
        deadline = started + timeout_s
        while not ports_file.exists():
            if self.process.poll() is not None:
                raise RuntimeError(f"statlane serve exited: see {self.workdir / 'serve.log'}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"statlane serve did not start in {timeout_s} s")
            time.sleep(0.05)
        time.sleep(0.05)  # the file is written whole, but give the writer its close
        self.ports = json.loads(ports_file.read_text())
        return time.monotonic() - started

    def kill(self) -> None:
        """SIGKILL by PID, then reap it."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process = None

    def stop(self) -> None:
        """SIGTERM (SIGKILL after 30 s); a no-op when it is not running."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def rss_bytes(self) -> int:
        """Resident set size of the service and its children, bytes (0 if not running)."""
        if self.process is None:
            return 0
        try:
            main = psutil.Process(self.process.pid)
            total = int(main.memory_info().rss)
            for child in main.children(recursive=True):
                try:
                    total += int(child.memory_info().rss)
                except psutil.Error:
                    continue
            return total
        except psutil.Error:
            return 0

    def metric(self, name: str) -> float:
        """The sum over labels of one Prometheus metric from ``/metrics``."""
        text = http_get(f"http://127.0.0.1:{self.ports['http']}/metrics").decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
                total += float(line.rsplit(" ", 1)[1])
        return total
