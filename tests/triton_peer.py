"""Start a real Triton server (``benchmarks/triton_serve.py`` under ``.venv-triton``) for tests.

The server's interpreter is ``$STATLANE_TRITON_PYTHON`` or ``.venv-triton/bin/python`` in the
repository (``make test`` creates it). Missing: skipped on a laptop, a failure in CI.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.peers import peers_required

ROOT = Path(__file__).resolve().parent.parent
SERVE = ROOT / "benchmarks" / "triton_serve.py"


@dataclass(frozen=True)
class TritonPeer:
    """A running server: its gRPC and HTTP addresses."""

    grpc_url: str
    http_url: str


def triton_python() -> Path:
    """The interpreter with nvidia-pytriton installed, or skip/fail the calling test."""
    candidate = Path(os.environ.get("STATLANE_TRITON_PYTHON", ROOT / ".venv-triton/bin/python"))
    if candidate.is_file():
        return candidate
    message = f"no Triton peer interpreter at {candidate}; run `make triton-venv`"
    if peers_required():
        pytest.fail(message + " (STATLANE_REQUIRE_PEERS=1)")
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def triton_server(
    models: list[dict[str, Any]], workdir: Path, timeout_s: float = 120.0
) -> Iterator[TritonPeer]:
    """Serve ``models`` (spec entries, see ``triton_serve.py``) until the block ends."""
    python = triton_python()
    ports = {"http_port": _free_port(), "grpc_port": _free_port(), "metrics_port": _free_port()}
    spec = workdir / "triton-spec.json"
    spec.write_text(json.dumps({**ports, "models": models}))
    log = (workdir / "triton.log").open("w")
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
            line = process.stdout.readline()
            if line.strip() == "READY":
                break
            if (not line and process.poll() is not None) or time.monotonic() > deadline:
                log.flush()
                tail = (workdir / "triton.log").read_text()[-3000:]
                pytest.fail(f"Triton did not start (exit {process.poll()}):\n{tail}")
        yield TritonPeer(f"127.0.0.1:{ports['grpc_port']}", f"127.0.0.1:{ports['http_port']}")
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
