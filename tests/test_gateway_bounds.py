"""Bounded before trusted: hostile or broken connections cost every listener little and briefly.

The DICOM tests run on the path the environment selects (``make pytest-standard-dimse`` runs
this file again with ``STATLANE_DICOM_FAST_PATH=0``).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from serving.config import ConfigError, load_config
from serving.gateway.admission import ASSOCIATE_RQ_MAX_BYTES, check_associate_header
from serving.gateway.dimse import DicomGateway
from serving.gateway.mllp import MllpServer
from serving.gateway.reactor import MAX_PDU_BYTES, pdu_length_limit
from serving.gateway.spool import Spool
from serving.gateway.stow import StowServer
from tests.peers import require_dcmtk

FOUR_GIB = 4 * 1024**3 - 1  # the largest length a PDU header can declare


@contextlib.contextmanager
def dicom_gateway(tmp_path: Path, **limits: float) -> Iterator[DicomGateway]:
    """A gateway on a free port accepting any caller, with ``limits`` as keyword arguments."""
    gateway = DicomGateway(
        Spool(tmp_path / "spool", min_free_bytes=0),
        ae_title="STATLANE",
        host="127.0.0.1",
        port=0,
        **limits,  # type: ignore[arg-type]
    )
    with gateway:
        yield gateway


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """True if the server closes ``sock`` (EOF or reset) within ``seconds``."""
    sock.settimeout(seconds)
    try:
        return sock.recv(65536) == b""  # a reply first (say an A-ABORT) would not count
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def echo(port: int, timeout_s: float = 10.0) -> subprocess.CompletedProcess[str]:
    """dcmtk echoscu against the gateway."""
    arguments = ["-aet", "MODALITY", "-aec", "STATLANE", "-to", "5", "127.0.0.1", str(port)]
    return subprocess.run(
        [str(require_dcmtk("echoscu")), *arguments],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


# -- DICOM ------------------------------------------------------------------------------------


@pytest.mark.parametrize("pdu_type", [0x01, 0x04])
def test_a_header_declaring_4_gib_before_association_is_closed_without_allocating(
    tmp_path: Path, pdu_type: int
) -> None:
    process = psutil.Process()
    with dicom_gateway(tmp_path) as gateway:
        before = process.memory_info().rss
        peers = [connect(gateway.port) for _ in range(2)]
        for peer in peers:
            peer.sendall(bytes([pdu_type, 0]) + FOUR_GIB.to_bytes(4, "big"))
        started = time.monotonic()
        assert all(closed_within(peer, 2.0) for peer in peers)
        assert time.monotonic() - started < 2.0
        grown = process.memory_info().rss - before
        for peer in peers:
            peer.close()
    assert grown < 16 * 1024**2, f"RSS grew by {grown} bytes"


def test_sixteen_silent_connections_do_not_lock_out_a_modality(tmp_path: Path) -> None:
    with dicom_gateway(tmp_path, maximum_associations=16, max_connections_per_address=64) as gw:
        silent = [connect(gw.port) for _ in range(20)]
        try:
            started = time.monotonic()
            result = echo(gw.port)
            assert result.returncode == 0, result.stdout + result.stderr
            assert time.monotonic() - started < 3.0
        finally:
            for peer in silent:
                peer.close()


def test_a_connection_that_does_not_associate_in_time_is_closed(tmp_path: Path) -> None:
    with dicom_gateway(tmp_path, association_timeout_s=0.5) as gateway:
        silent = connect(gateway.port)
        trickling = connect(gateway.port)
        # A valid A-ASSOCIATE-RQ header, then the body never completes.
        trickling.sendall(b"\x01\x00" + (200).to_bytes(4, "big") + b"\x00\x01")
        started = time.monotonic()
        assert closed_within(silent, 3.0)
        assert closed_within(trickling, 3.0)
        assert time.monotonic() - started < 3.0
        silent.close()
        trickling.close()


def test_connections_per_address_are_limited(tmp_path: Path) -> None:
    with dicom_gateway(tmp_path, max_connections_per_address=2) as gateway:
        held = [connect(gateway.port) for _ in range(2)]
        extra = connect(gateway.port)
        assert closed_within(extra, 1.0)  # closed at accept, long before the 5 s deadline
        extra.close()
        for peer in held:
            peer.close()
        deadline = time.monotonic() + 5.0  # the server notices the closes on its threads
        while (result := echo(gateway.port)).returncode != 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert result.returncode == 0, result.stdout + result.stderr


def test_the_association_limit_still_holds_for_accepted_callers(tmp_path: Path) -> None:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    with dicom_gateway(tmp_path, maximum_associations=1) as gateway:
        ae = AE(ae_title="HOLDER")
        ae.add_requested_context(Verification)
        held = ae.associate("127.0.0.1", gateway.port, ae_title="STATLANE")
        try:
            assert held.is_established
            result = echo(gateway.port)
            assert result.returncode != 0  # rejected: local limit exceeded
        finally:
            held.release()
        deadline = time.monotonic() + 5.0
        while (result := echo(gateway.port)).returncode != 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert result.returncode == 0, result.stdout + result.stderr


def test_first_header_check() -> None:
    assert check_associate_header(b"\x01\x00" + (1000).to_bytes(4, "big")) is None
    big = b"\x01\x00" + (ASSOCIATE_RQ_MAX_BYTES + 1).to_bytes(4, "big")
    assert check_associate_header(big) is not None
    assert check_associate_header(b"\x04\x00\x00\x00\x00\x10") is not None
    assert check_associate_header(b"\x01\x00") is not None


def test_pdu_limit_follows_the_state_and_the_advertised_length() -> None:
    assert pdu_length_limit("Sta2", 0) == ASSOCIATE_RQ_MAX_BYTES
    assert pdu_length_limit("Sta6", 16384) == 16384
    assert pdu_length_limit("Sta6", 0) == MAX_PDU_BYTES
    assert pdu_length_limit("Sta6", 2 * MAX_PDU_BYTES) == MAX_PDU_BYTES


def test_the_fast_path_aborts_a_pdu_above_the_advertised_maximum(tmp_path: Path) -> None:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    with dicom_gateway(tmp_path, maximum_pdu_bytes=16384) as gateway:
        if not gateway.fast_path:
            pytest.skip("pynetdicom's standard server does not bound PDUs after association")
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", gateway.port, ae_title="STATLANE")
        assert assoc.is_established
        assert assoc.acceptor.maximum_length == 16384
        sock = assoc.dul.socket.socket  # type: ignore[union-attr]
        assert sock is not None
        sock.sendall(b"\x04\x00" + (16385).to_bytes(4, "big"))
        deadline = time.monotonic() + 5.0
        while not assoc.is_aborted and time.monotonic() < deadline:
            time.sleep(0.05)
        assert assoc.is_aborted


# -- HTTP -------------------------------------------------------------------------------------


@pytest.fixture
def stow(tmp_path: Path) -> Iterator[StowServer]:
    server = StowServer(
        Spool(tmp_path / "spool", min_free_bytes=0),
        host="127.0.0.1",
        port=0,
        header_timeout_s=0.5,
        idle_timeout_s=1.0,
    )
    with server:
        yield server


def test_http_silent_connection_is_closed_after_the_header_timeout(stow: StowServer) -> None:
    peer = connect(stow.port)
    started = time.monotonic()
    assert closed_within(peer, 3.0)
    assert 0.3 < time.monotonic() - started < 3.0
    peer.close()


def test_http_slow_loris_request_line_is_closed(stow: StowServer) -> None:
    peer = connect(stow.port)
    started = time.monotonic()
    closed = False
    for byte in b"GET /dicomweb/studies HTTP/1.1\r\nHost: x\r\n":
        try:
            peer.sendall(bytes([byte]))
        except OSError:
            closed = True
            break
        time.sleep(0.1)  # each byte well inside any per-read timeout
        if time.monotonic() - started > 3.0:
            break
    assert closed or closed_within(peer, 1.0)
    assert time.monotonic() - started < 3.0
    peer.close()


def test_http_a_prompt_request_is_still_served_and_kept_alive(stow: StowServer) -> None:
    peer = connect(stow.port)
    request = b"GET /dicomweb/nothing HTTP/1.1\r\nHost: x\r\n\r\n"
    for pause_s in (0.0, 0.7):  # the second past the header timeout, inside the idle timeout
        time.sleep(pause_s)
        peer.sendall(request)
        answer = b""
        while not answer.endswith(b"not found\n"):
            answer += peer.recv(4096)
        assert answer.startswith(b"HTTP/1.1 404")
    assert closed_within(peer, 3.0)  # idle after that
    peer.close()


# -- MLLP -------------------------------------------------------------------------------------


@pytest.fixture
def mllp() -> Iterator[MllpServer]:
    with MllpServer(
        lambda text: text, host="127.0.0.1", port=0, idle_timeout_s=30.0, frame_timeout_s=0.5
    ) as server:
        yield server


def test_mllp_silent_connection_is_closed_after_the_frame_timeout(mllp: MllpServer) -> None:
    peer = connect(mllp.port)
    started = time.monotonic()
    assert closed_within(peer, 3.0)
    assert time.monotonic() - started < 3.0
    peer.close()


def test_mllp_unframed_trickle_is_closed_after_the_frame_timeout(mllp: MllpServer) -> None:
    peer = connect(mllp.port)
    started = time.monotonic()
    closed = False
    while time.monotonic() - started < 3.0:
        try:
            peer.sendall(b"MSH|")  # never a start block
        except OSError:
            closed = True
            break
        peer.settimeout(0.1)
        try:
            if peer.recv(4096) == b"":
                closed = True
                break
        except TimeoutError:
            continue
        except ConnectionResetError:
            closed = True
            break
    assert closed
    assert time.monotonic() - started < 3.0
    peer.close()


# -- configuration ----------------------------------------------------------------------------


def test_bound_keys_are_read_and_validated(tmp_path: Path) -> None:
    path = tmp_path / "statlane.yaml"
    path.write_text(
        "dicom:\n  association_timeout_s: 3\n  idle_timeout_s: 30\n"
        "  max_connections_per_address: 4\n  maximum_pdu_bytes: 1048576\n"
        "http:\n  header_timeout_s: 5\n  idle_timeout_s: 20\n"
        "hl7:\n  idle_timeout_s: 100\n  frame_timeout_s: 4\n"
    )
    config = load_config(path)
    assert config.dicom.max_connections_per_address == 4
    assert config.http.header_timeout_s == 5
    assert config.hl7.frame_timeout_s == 4
    for text, where in [
        ("dicom:\n  association_timeout_s: 0\n", ":2: dicom.association_timeout_s"),
        ("dicom:\n  max_connections_per_address: 0\n", ":2: dicom.max_connections_per_address"),
        ("dicom:\n  maximum_pdu_bytes: 999999999\n", ":2: dicom.maximum_pdu_bytes"),
        ("http:\n  header_timeout_s: -1\n", ":2: http.header_timeout_s"),
        ("hl7:\n  frame_timeout_s: 0\n", ":2: hl7.frame_timeout_s"),
    ]:
        path.write_text(text)
        with pytest.raises(ConfigError, match=where):
            load_config(path)
