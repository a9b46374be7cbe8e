"""Start and stop a real Triton server (``triton_serve.py`` under ``.venv-triton``).

Shared by the integration tests and the scheduling benchmark. The server's interpreter is
``$STATLANE_TRITON_PYTHON`` or ``.venv-triton/bin/python`` in the repository (``make
triton-venv`` creates it).
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SERVE = ROOT / "benchmarks" / "triton_serve.py"


class TritonPeerUnavailable(RuntimeError):
    """No interpreter with nvidia-pytriton, or the server did not start."""


@dataclass(frozen=True)
class TritonPeer:
    """A running server: its gRPC and HTTP addresses."""

    grpc_url: str
    http_url: str


def triton_python() -> Path:
    """The interpreter with nvidia-pytriton installed.

    Raises:
        TritonPeerUnavailable: It does not exist (says how to create it).
    """
    candidate = Path(os.environ.get("STATLANE_TRITON_PYTHON", ROOT / ".venv-triton/bin/python"))
    if not candidate.is_file():
        raise TritonPeerUnavailable(
            f"no Triton peer interpreter at {candidate}; run `make triton-venv`"
        )
    return candidate


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports (all held open while choosing, so none repeats)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@contextmanager
def triton_server(
    models: list[dict[str, Any]],
    workdir: Path,
    timeout_s: float = 150.0,
    attempts: int = 2,
) -> Iterator[TritonPeer]:
    """Serve ``models`` (spec entries, see ``triton_serve.py``) until the block ends.

    A start that fails or stays unready for ``timeout_s`` seconds (a port taken between
    choosing and binding it, a cold first start on a loaded machine) is retried on fresh
    ports, up to ``attempts`` starts in all.

    Raises:
        TritonPeerUnavailable: No interpreter, or no start became ready in time.
    """
    python = triton_python()
    failures: list[str] = []
    for attempt in range(1, attempts + 1):
        process, peer, failure = _start(python, models, workdir, timeout_s, attempt)
        try:
            if peer is not None:
                yield peer
                return
            failures.append(failure)
        finally:
            _stop(process)
    raise TritonPeerUnavailable("\n".join(failures))


def _start(
    python: Path, models: list[dict[str, Any]], workdir: Path, timeout_s: float, attempt: int
) -> tuple[subprocess.Popen[str], TritonPeer | None, str]:
    """Launch one server; return it with its addresses once READY, or with why it is not."""
    http_port, grpc_port, metrics_port = _free_ports(3)
    spec = workdir / f"triton-spec-{attempt}.json"
    spec.write_text(
        json.dumps(
            {
                "http_port": http_port,
                "grpc_port": grpc_port,
                "metrics_port": metrics_port,
                "models": models,
            }
        )
    )
    log_path = workdir / f"triton-{attempt}.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [str(python), str(SERVE), str(spec)],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            cwd=workdir,
        )
    started = time.monotonic()
    assert process.stdout is not None
    while True:
        # Never block past the deadline on a server that neither prints nor exits.
        ready, _, _ = select.select([process.stdout], [], [], 1.0)
        line = process.stdout.readline() if ready else ""
        if line.strip() == "READY":
            return process, TritonPeer(f"127.0.0.1:{grpc_port}", f"127.0.0.1:{http_port}"), ""
        exited = not line and process.poll() is not None
        waited_s = time.monotonic() - started
        if exited or waited_s > timeout_s:
            tail = log_path.read_text(errors="replace")[-3000:]
            state = f"exit {process.poll()}" if exited else f"not ready after {waited_s:.0f} s"
            return process, None, f"Triton start {attempt} failed ({state}):\n{tail}"


def _stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
