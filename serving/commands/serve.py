"""``statlane serve``: the whole service in one process, on embedded defaults or statlane.yaml."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from serving.config import ConfigError, load_config

log = logging.getLogger(__name__)


def write_ports_file(path: Path, ports: dict[str, int | None]) -> None:
    """Write the bound TCP ports to ``path`` as JSON, atomically.

    The JSON goes to a sibling temporary file that is then renamed over ``path``, so a
    process polling for ``path`` sees either no file or the whole document, never an
    empty or half-written one.
    """
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(json.dumps(ports))
    os.replace(partial, path)


def add_parser(subparsers: Any) -> None:
    """Register ``statlane serve``."""
    parser = subparsers.add_parser(
        "serve",
        help="run the service: DICOM/DICOMweb/HL7 in, inference, results out",
        description="Run statlane as a service. Without --config it uses the embedded defaults: "
        "job store and spool under ./var, DICOM on 11112, REST and STOW-RS on 8080, HL7 MLLP "
        "on 2575, ONNX Runtime, the bundled models, results in var/results.",
    )
    parser.add_argument("--config", type=Path, default=None, help="statlane.yaml")
    parser.add_argument("--var-dir", type=Path, default=None, help="override var_dir")
    parser.add_argument("--dicom-port", type=int, default=None, help="override dicom.port")
    parser.add_argument("--http-port", type=int, default=None, help="override http.port")
    parser.add_argument("--hl7-port", type=int, default=None, help="override hl7.port")
    parser.add_argument(
        "--ports-file", type=Path, default=None, help="write the bound ports here (JSON) once up"
    )
    parser.set_defaults(func=run)


def _overrides(args: argparse.Namespace, raw: dict[str, Any]) -> dict[str, Any]:
    if args.var_dir is not None:
        raw["var_dir"] = args.var_dir
    for key, value in (
        ("dicom", args.dicom_port),
        ("http", args.http_port),
        ("hl7", args.hl7_port),
    ):
        if value is not None:
            raw[key] = {**raw.get(key, {}), "port": value}
    return raw


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; 1 when the configuration or a listener fails."""
    from serving.config import ServiceConfig
    from serving.service.app import Service
    from serving.service.heap import settle_heap

    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 1
    config = ServiceConfig.model_validate(_overrides(args, config.model_dump(exclude_unset=True)))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        service = Service(config)
        ports = service.start()
    except OSError as error:
        print(f"statlane serve: cannot listen ({error.strerror or error})", file=sys.stderr)
        return 1
    settled = settle_heap()
    log.info("start-up heap frozen: %d objects", settled.frozen)
    if args.ports_file is not None:
        write_ports_file(
            args.ports_file, {"dicom": ports.dicom, "http": ports.http, "hl7": ports.hl7}
        )
    print(
        f"statlane serving: DICOM {config.dicom.ae_title}@{ports.dicom}, "
        f"HTTP {ports.http} (GET /worklist, /metrics; STOW-RS /dicomweb/studies), HL7 {ports.hl7}",
        flush=True,
    )
    stop.wait()
    service.stop()
    return 0
