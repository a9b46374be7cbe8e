"""``statlane config check FILE``: validate a service configuration and say where it is wrong."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from serving.config import ConfigError, load_config
from serving.delivery.config import DestinationConfig


def add_parser(subparsers: Any) -> None:
    """Register ``statlane config``."""
    parser = subparsers.add_parser("config", help="check a statlane.yaml configuration")
    verbs = parser.add_subparsers(dest="config_command", metavar="VERB", required=True)
    check = verbs.add_parser("check", help="validate FILE; errors name file:line: key")
    check.add_argument("file", type=Path)
    check.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Validate ``args.file``; 0 when valid, 1 with the located errors on stderr."""
    try:
        config = load_config(args.file)
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 1
    problems = destination_problems(config.destinations)
    if problems:
        for problem in problems:
            print(f"{args.file}: {problem}", file=sys.stderr)
        return 1
    if config.outbox.max_attempts is not None:  # still valid, but it defeats the retry window
        print(
            f"{args.file}: warning: outbox.max_attempts is deprecated: items die after "
            f"{config.outbox.max_attempts} failed attempts instead of retrying for "
            "outbox.retry_window_s; remove it",
            file=sys.stderr,
        )
    print(f"{args.file}: ok ({len(config.destinations)} destinations, job store {config.db_url})")
    return 0


def destination_problems(destinations: Mapping[str, DestinationConfig]) -> list[str]:
    """Destinations that cannot be built (a value the destination refuses), one line each."""
    from serving.delivery.config import build_destination

    problems = []
    for name, config in destinations.items():
        try:
            build_destination(config, name)
        except (ValueError, TypeError) as error:
            problems.append(f"destinations.{name}: {error}")
    return problems
