"""Run ``statlane serve`` in-process for tests, and send it studies with dcmtk's storescu."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from serving.config import ServiceConfig
from serving.service.app import Service
from tests.peers import require_dcmtk

FAST_QUIET = {"stat": 0.3, "urgent": 0.3, "routine": 0.3}


def service_config(tmp: Path, **overrides: Any) -> ServiceConfig:
    """A configuration on free ports with everything under ``tmp`` and short quiet periods."""
    raw: dict[str, Any] = {
        "var_dir": tmp / "var",
        "dicom": {"port": 0},
        "http": {"host": "127.0.0.1", "port": 0},
        "hl7": {"host": "127.0.0.1", "port": 0},
        "assembly": {"quiet_period_s": FAST_QUIET},
        "destinations": {"local-folder": {"type": "folder", "path": str(tmp / "delivered")}},
        "runtime": {"device": "cpu", "preprocess_workers": 1},
    }
    raw.update(overrides)
    return ServiceConfig.model_validate(raw)


@contextlib.contextmanager
def running_service(config: ServiceConfig, **kwargs: Any) -> Iterator[Service]:
    """A started service, stopped on exit."""
    service = Service(config, **kwargs)
    service.start()
    try:
        yield service
    finally:
        service.stop()


def storescu(
    port: int,
    files: Sequence[Path],
    *,
    calling_ae: str = "MODALITY",
    called_ae: str = "STATLANE",
    extra: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """Send ``files`` with dcmtk's storescu in one association."""
    binary = require_dcmtk("storescu")
    env = dict(os.environ, TCP_NODELAY="1")
    return subprocess.run(
        [
            str(binary),
            "-aet",
            calling_ae,
            "-aec",
            called_ae,
            *extra,
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def wait_for(
    predicate: Callable[[], Any], timeout_s: float = 120.0, what: str = "condition"
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.1)
