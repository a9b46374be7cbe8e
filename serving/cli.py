"""The ``statlane`` command line: one entry point, one sub-command module per verb."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import pydicom.config

from serving.commands import (
    config,
    demo,
    infer,
    inspect,
    models,
    outbox,
    rules,
    serve,
    simulate,
    synth,
)

_COMMANDS = (synth, inspect, demo, models, infer, simulate, rules, config, outbox, serve)


def build_parser() -> argparse.ArgumentParser:
    """Return the parser with every sub-command registered."""
    parser = argparse.ArgumentParser(
        prog="statlane",
        description="Latency-first inference back end for radiology AI.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in _COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit status (0 ok, 1 failed, 2 usage error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # The JPEG 2000 encoder logs one INFO line per tile; keep progress output readable.
    logging.getLogger("openjpeg").setLevel(logging.WARNING)
    # highdicom logs every copied module and pynetdicom every PDU at INFO: keep progress legible.
    for chatty in ("highdicom", "pynetdicom"):
        logging.getLogger(chatty).setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    # pydicom's validation warnings quote the offending value, which may be patient identity:
    # values are still parsed, but never echoed into logs.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
