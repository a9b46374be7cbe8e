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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def triton_server(
    models: list[dict[str, Any]], workdir: Path, timeout_s: float = 120.0
) -> Iterator[TritonPeer]:
    """Serve ``models`` (spec entries, see ``triton_serve.py``) until the block ends.

    Raises:
        TritonPeerUnavailable: No interpreter, or the server did not become ready in time.
    """
    python = triton_python()
    ports = {"http_port": _free_port(), "grpc_port": _free_port(), "metrics_port": _free_port()}
    spec = workdir / "triton-spec.json"
    spec.write_text(json.dumps({**ports, "models": models}))
    log_path = workdir / "triton.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [str(python), str(SERVE), str(spec)],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            cwd=workdir,
        )
        try:
            deadline = time.monotonic() + timeout_s
            assert process.stdout is not None
            while True:
                # Never block past the deadline on a server that neither prints nor exits.
                ready, _, _ = select.select([process.stdout], [], [], 1.0)
                line = process.stdout.readline() if ready else ""
                if line.strip() == "READY":
                    break
                exited = not line and process.poll() is not None
                if exited or time.monotonic() > deadline:
                    log.flush()
                    tail = log_path.read_text()[-3000:]
                    raise TritonPeerUnavailable(
                        f"Triton did not start (exit {process.poll()}):\n{tail}"
                    )
            yield TritonPeer(f"127.0.0.1:{ports['grpc_port']}", f"127.0.0.1:{ports['http_port']}")
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
