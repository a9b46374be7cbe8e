"""``statlane outbox``: see what is waiting to be delivered, and revive dead deliveries.

``statlane outbox list [--state S]`` prints one row per item (id, destination, kind, state,
attempts, next attempt, last error); ``statlane outbox retry ID`` or ``--dead`` moves dead items
back to pending, due now. The job store is ``--db``, else ``$STATLANE_DB``, else the default.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from serving.delivery.outbox import Outbox, OutboxItem
from serving.jobstore import DEFAULT_URL, JobStore, JobStoreError, OutboxState

_ERROR_WIDTH = 60  # characters of the last error shown per row


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``statlane outbox list`` and ``statlane outbox retry``."""
    parser = subparsers.add_parser("outbox", help="list deliveries and retry dead ones")
    actions = parser.add_subparsers(dest="outbox_action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="one row per outbox item")
    listing.add_argument("--state", choices=[s.value for s in OutboxState], help="only this state")
    retry = actions.add_parser("retry", help="move dead items back to pending")
    retry.add_argument("item_id", nargs="?", type=int, metavar="ID", help="the item to retry")
    retry.add_argument("--dead", action="store_true", help="retry every dead item")
    for action in (listing, retry):
        action.add_argument(
            "--db", default=None, help=f"job store URL (default: $STATLANE_DB or {DEFAULT_URL})"
        )
    parser.set_defaults(func=run)


def database_url(given: str | None) -> str:
    """``--db`` if given, else ``$STATLANE_DB``, else the default SQLite file."""
    return given or os.environ.get("STATLANE_DB") or DEFAULT_URL


def run(args: argparse.Namespace) -> int:
    """Run one outbox action; 0 done, 1 failed (unknown or not-dead item, no store), 2 usage."""
    if args.outbox_action == "retry" and (args.item_id is None) == (not args.dead):
        print("statlane outbox retry: give an item ID or --dead, not both", file=sys.stderr)
        return 2
    url = database_url(args.db)
    try:
        _require_existing_sqlite(url)
        store = JobStore(url, clock=lambda: datetime.now(UTC))
    except (ValueError, ArgumentError, SQLAlchemyError) as error:
        print(f"statlane outbox: {error}", file=sys.stderr)
        return 1
    try:
        outbox = Outbox(store)
        if args.outbox_action == "list":
            state = OutboxState(args.state) if args.state else None
            print_items(outbox.items(state))
            return 0
        revived = outbox.retry(args.item_id, all_dead=args.dead)
        print(f"{len(revived)} item(s) moved back to pending: {_ids(revived)}")
        return 0
    except JobStoreError as error:
        print(f"statlane outbox: {error}", file=sys.stderr)
        return 1
    finally:
        store.close()


def print_items(items: list[OutboxItem]) -> None:
    """Print the items as a fixed-width table (times in UTC, ISO 8601 to the second)."""
    print(
        f"{'id':>6} {'destination':<16} {'kind':<8} {'state':<9} {'tries':>5} "
        f"{'next attempt (UTC)':<20} last error"
    )
    for item in items:
        waiting = item.state == OutboxState.PENDING
        next_at = item.next_attempt_at.strftime("%Y-%m-%dT%H:%M:%S") if waiting else "-"
        error = (item.last_error or "").replace("\n", " ")
        if len(error) > _ERROR_WIDTH:
            error = error[: _ERROR_WIDTH - 3] + "..."
        print(
            f"{item.id:>6} {item.destination[:16]:<16} {item.kind.value:<8} "
            f"{item.state.value:<9} {item.attempts:>5} {next_at:<20} {error}"
        )
    if not items:
        print("(no items)")


def _require_existing_sqlite(url: str) -> None:
    """Refuse to create an empty SQLite store: the operator mistyped the path."""
    parsed = make_url(url)
    database = parsed.database or ""
    is_file = parsed.get_backend_name() == "sqlite" and database not in ("", ":memory:")
    if is_file and not Path(database).exists():
        raise ValueError(f"no job store at {database} (set --db or $STATLANE_DB)")


def _ids(items: list[OutboxItem]) -> str:
    return ", ".join(str(item.id) for item in items) or "none"
