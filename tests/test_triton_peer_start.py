"""The Triton peer launcher: a failed or stuck start is retried on fresh ports, then reported."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks import triton_peer
from benchmarks.triton_peer import TritonPeerUnavailable


def _fake_python(tmp_path: Path, body: str) -> Path:
    """An 'interpreter' that runs ``body`` with $2 = the spec file (ignores the serve script)."""
    script = tmp_path / "fake-python"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return script


def test_a_failed_first_start_is_retried_on_fresh_ports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = _fake_python(
        tmp_path,
        'case "$2" in *-1.json) echo "port taken" >&2; exit 3;; esac\necho READY\nexec sleep 60',
    )
    monkeypatch.setenv("STATLANE_TRITON_PYTHON", str(fake))
    with triton_peer.triton_server([], tmp_path, timeout_s=10.0) as peer:
        assert peer.grpc_url.startswith("127.0.0.1:")
    assert "port taken" in (tmp_path / "triton-1.log").read_text()
    assert (tmp_path / "triton-spec-2.json").is_file()


def test_a_start_that_never_gets_ready_is_reported_with_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = _fake_python(tmp_path, 'echo "still loading" >&2\nexec sleep 60')
    monkeypatch.setenv("STATLANE_TRITON_PYTHON", str(fake))
    with (
        pytest.raises(TritonPeerUnavailable, match="not ready after") as failed,
        triton_peer.triton_server([], tmp_path, timeout_s=1.5, attempts=2),
    ):
        pass
    assert str(failed.value).count("still loading") == 2
    assert os.path.exists(tmp_path / "triton-2.log")
