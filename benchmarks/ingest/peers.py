"""dcmtk on the sending side and the SCP processes: finding the tools, readiness, one transfer."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

DCMTK_DIRS = ("/usr/bin", "/usr/local/bin", "/opt/homebrew/bin")


def dcmtk(name: str) -> str:
    """Path of dcmtk tool ``name``: never pynetdicom's same-named app from the venv."""
    for folder in DCMTK_DIRS:
        path = Path(folder) / name
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    raise SystemExit(f"dcmtk {name!r} not found in {', '.join(DCMTK_DIRS)}; apt-get install dcmtk")


def _dcmtk_env() -> dict[str, str]:
    return dict(os.environ, TCP_NODELAY="1")  # or every C-STORE stalls ~40 ms (Nagle)


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def echo(port: int, called_ae: str, server: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    """C-ECHO until the SCP answers (readiness and warm-up); fail after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    cmd = [dcmtk("echoscu"), "-aet", "BENCH", "-aec", called_ae, "127.0.0.1", str(port)]
    while subprocess.run(cmd, capture_output=True, env=_dcmtk_env(), check=False).returncode:
        if server.poll() is not None:
            raise SystemExit(f"{called_ae} exited with {server.returncode} before answering")
        if time.monotonic() > deadline:
            raise SystemExit(f"{called_ae} did not answer C-ECHO within {timeout_s:.0f} s")
        time.sleep(0.1)


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far, all its threads (None off Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Transfer:
    """One storescu run: wall seconds from start to exit, exit time (UTC), server CPU seconds."""

    seconds: float
    exited: datetime
    server_cpu_s: float | None


def send(port: int, called_ae: str, files: Sequence[Path], server_pid: int) -> Transfer:
    """Send ``files`` in one storescu association; measure wall time and the server's CPU."""
    cmd = [dcmtk("storescu"), "-aet", "MODALITY", "-aec", called_ae, "127.0.0.1", str(port)]
    cpu_before = process_cpu_s(server_pid)
    start = time.perf_counter()
    done = subprocess.run(
        [*cmd, *map(str, files)], capture_output=True, text=True, env=_dcmtk_env(), check=False
    )
    elapsed, exited = time.perf_counter() - start, datetime.now(UTC)
    cpu_after = process_cpu_s(server_pid)
    if done.returncode != 0 or "E:" in done.stderr:
        tail = done.stderr[-3000:]
        raise SystemExit(f"storescu -> {called_ae} failed ({done.returncode}):\n{tail}")
    cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    return Transfer(elapsed, exited, cpu)


@contextlib.contextmanager
def server_process(cmd: list[str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``cmd`` (output to ``log_path``); SIGTERM on exit, SIGKILL after 30 s."""
    with log_path.open("wb") as log:
        server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_dcmtk_env())
        try:
            yield server
        finally:
            if server.poll() is None:
                server.send_signal(signal.SIGTERM)
                try:
                    server.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait()
