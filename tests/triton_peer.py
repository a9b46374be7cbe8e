"""A real Triton server for tests: skipped on a laptop without it, a failure in CI."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from benchmarks import triton_peer
from benchmarks.triton_peer import TritonPeer, TritonPeerUnavailable
from tests.peers import peers_required


def require_triton() -> None:
    """Skip (laptop) or fail (CI) the calling test when the Triton peer is not installed."""
    try:
        triton_peer.triton_python()
    except TritonPeerUnavailable as missing:
        if peers_required():
            pytest.fail(f"{missing} (STATLANE_REQUIRE_PEERS=1)")
        pytest.skip(str(missing))


@contextmanager
def triton_server(models: list[dict[str, Any]], workdir: Path) -> Iterator[TritonPeer]:
    """Serve ``models`` until the block ends (see ``benchmarks/triton_serve.py``)."""
    require_triton()
    try:
        with triton_peer.triton_server(models, workdir) as peer:
            yield peer
    except TritonPeerUnavailable as failed:
        pytest.fail(str(failed))
