"""A real Orthanc PACS (Debian package, with its DICOMweb plugin) started by the tests.

``orthanc_server(tmp_path, modalities={...})`` starts Orthanc on free ports with its storage
under ``tmp_path`` and yields an :class:`OrthancPeer` with its ports and a tiny REST helper.
Missing Orthanc skips on a laptop and fails when ``STATLANE_REQUIRE_PEERS=1``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.peers import require_executable

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def free_port() -> int:
    """A TCP port that was free a moment ago on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class OrthancPeer:
    """A running Orthanc: AE title, DICOM and HTTP ports on 127.0.0.1."""

    aet: str
    dicom_port: int
    http_port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        """Base URL of the REST API."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """Base URL of the DICOMweb plugin (QIDO-RS / STOW-RS / WADO-RS)."""
        return f"{self.url}/dicom-web"

    def get(self, path: str) -> Any:
        """GET ``path`` and decode the JSON answer."""
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.loads(response.read() or b"null")

    def post(self, path: str, body: Any) -> Any:
        """POST ``body`` as JSON (or raw bytes) to ``path`` and decode the JSON answer."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method="POST")
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read() or b"null")

    def instances(self) -> list[str]:
        """Orthanc ids of every stored instance."""
        result: list[str] = self.get("/instances")
        return result


@contextlib.contextmanager
def orthanc_server(
    workdir: Path,
    *,
    aet: str = "ORTHANC",
    modalities: Mapping[str, tuple[str, str, int]] | None = None,
    dicomweb: bool = True,
    timeout_s: float = 30.0,
) -> Iterator[OrthancPeer]:
    """Start Orthanc under ``workdir``; stop it on exit.

    Args:
        workdir: Storage, index and configuration live here.
        aet: Orthanc's own AE title.
        modalities: Known remote AEs by symbolic name: ``name -> (AET, host, port)``; Orthanc
            answers C-FIND/C-MOVE and sends C-STORE only to these.
        dicomweb: Load the DICOMweb plugin.
        timeout_s: How long to wait for the REST API to answer, seconds.
    """
    binary = require_executable("Orthanc", "apt-get install orthanc orthanc-dicomweb")
    if dicomweb and not DICOMWEB_PLUGIN.exists():
        require_executable("__orthanc_dicomweb_plugin__", "apt-get install orthanc-dicomweb")
    workdir.mkdir(parents=True, exist_ok=True)
    peer_config: dict[str, Any] = {
        "Name": "statlane-test-pacs",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        "DicomAet": aet,
        "RemoteAccessAllowed": True,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "UnknownSopClassAccepted": True,
        "DicomModalities": {k: list(v) for k, v in (modalities or {}).items()},
        "StableAge": 1,
        "HttpTimeout": 60,
        "Plugins": [str(DICOMWEB_PLUGIN)] if dicomweb else [],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "StudiesMetadata": "Full"},
    }
    config_path = workdir / "orthanc.json"
    env = dict(os.environ, TCP_NODELAY="1")
    for attempt in range(1, START_ATTEMPTS + 1):
        # A port free a moment ago can be taken before Orthanc binds it: then Orthanc exits
        # at once, and it starts again on fresh ports.
        peer_config["HttpPort"], peer_config["DicomPort"] = free_ports(2)
        config_path.write_text(json.dumps(peer_config, indent=2))
        log = (workdir / "orthanc.log").open("wb")
        process = subprocess.Popen(
            [str(binary), str(config_path)], stdout=log, stderr=subprocess.STDOUT, env=env
        )
        peer = OrthancPeer(aet, peer_config["DicomPort"], peer_config["HttpPort"], process)
        try:
            if _answers(peer, timeout_s):
                break
        except BaseException:
            stop_orthanc(process, log)
            raise
        stop_orthanc(process, log)
        if attempt == START_ATTEMPTS:
            raise RuntimeError(
                f"Orthanc exited with {process.returncode} {START_ATTEMPTS} times: "
                f"see {workdir / 'orthanc.log'}"
            )
    try:
        yield peer
    finally:
        stop_orthanc(process, log)


START_ATTEMPTS = 3
"""How many times Orthanc is started on fresh ports before its start counts as failed."""


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports that were free a moment ago on loopback."""
    with contextlib.ExitStack() as stack:
        probes = [stack.enter_context(socket.socket()) for _ in range(count)]
        for probe in probes:
            probe.bind(("127.0.0.1", 0))  # all held at once: never the same port twice
        return [int(probe.getsockname()[1]) for probe in probes]


def _answers(peer: OrthancPeer, timeout_s: float) -> bool:
    """True once Orthanc's REST API answers; False if it exited first (e.g. a port taken).

    Raises ``RuntimeError`` if it neither answers nor exits within ``timeout_s`` seconds.
    """
    deadline = time.monotonic() + timeout_s
    while peer.process.poll() is None:
        try:
            peer.get("/system")
            return True
        except (urllib.error.URLError, ConnectionError, OSError):
            if time.monotonic() > deadline:
                raise RuntimeError(f"Orthanc did not answer within {timeout_s} s") from None
            time.sleep(0.1)
    return False


def stop_orthanc(process: subprocess.Popen[bytes], log: Any) -> None:
    """Terminate Orthanc (kill it after 10 s) and close its log."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    log.close()
