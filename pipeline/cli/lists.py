"""`poststelle list add|remove|show`: the site's own block and allow lists (see `pipeline.state.sitelists`).

    poststelle list add block domain spam.test --comment "phishing wave 2026-11"
    poststelle list add allow cidr 192.0.2.0/24
    poststelle list remove block domain spam.test
    poststelle list show [block|allow]

Entries are validated and normalised before anything is written (exit 2 with the reason); `add`
and `remove` return once the broker has the record (acks=all), and the blocklist stage applies
it within about a second. `remove` of an entry that is not on the list is an error (exit 1).
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys

from pipeline.bus import ensure_topics
from pipeline.cli.common import settings_of
from pipeline.settings import Settings
from pipeline.state.sitelists import (
    KINDS,
    LISTS,
    Entry,
    EntryError,
    SiteLists,
    kafka_transport,
    parse_entry,
    remove_entry,
    write_entry,
)

__all__ = ["add_parsers", "run_list_command"]

REPLAY_TIMEOUT = 30.0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add `list` with its actions to the `poststelle` parser."""
    lists = sub.add_parser("list", help="the site's own block and allow lists")
    actions = lists.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="add an entry (or replace its comment)")
    remove = actions.add_parser("remove", help="remove an entry")
    for parser in (add, remove):
        parser.add_argument("list_name", choices=LISTS, metavar="block|allow")
        parser.add_argument("kind", choices=KINDS, metavar="|".join(KINDS))
        parser.add_argument("value")
    add.add_argument("--comment", default="", help="why the entry is there (shown by `list show`)")
    show = actions.add_parser("show", help="print the entries")
    show.add_argument("list_name", nargs="?", choices=LISTS, metavar="block|allow")
    for parser in (add, remove, show):
        parser.set_defaults(func=cmd_list)


def _format(entries: list[Entry]) -> str:
    if not entries:
        return "(no entries)"
    lines = []
    for e in entries:
        added = dt.datetime.fromtimestamp(e.added, dt.timezone.utc).strftime("%Y-%m-%d %H:%M") if e.added else "-"
        lines.append(f"{e.list:5}  {e.kind:7}  {e.value:40}  {added}  {e.comment}".rstrip())
    return "\n".join(lines)


async def _replayed(settings: Settings) -> SiteLists:
    lists = SiteLists(kafka_transport(settings, client_id="sitelists-cli"))
    if not await lists.start(REPLAY_TIMEOUT):
        await lists.close()
        raise ConnectionError(f"could not read the lists from Kafka at {settings.kafka.bootstrap} "
                              f"within {REPLAY_TIMEOUT:.0f}s")
    return lists


async def _run(settings: Settings, args: argparse.Namespace, entry: Entry | None) -> int:
    await ensure_topics(settings, timeout=REPLAY_TIMEOUT)
    lists = await _replayed(settings)
    try:
        if args.action == "show":
            names = [args.list_name] if args.list_name else list(LISTS)
            print(_format([e for name in names for e in lists.entries(name)]))
            return 0
        assert entry is not None and lists.transport is not None
        if args.action == "add":
            await write_entry(lists.transport, entry)
            print(f"added to the {entry.list} list: {entry.kind} {entry.value}")
            return 0
        if lists.get(entry.list, entry.kind, entry.value) is None:
            print(f"poststelle list: {entry.kind} {entry.value} is not on the {entry.list} list", file=sys.stderr)
            return 1
        await remove_entry(lists.transport, entry.list, entry.kind, entry.value)
        print(f"removed from the {entry.list} list: {entry.kind} {entry.value}")
        return 0
    finally:
        await lists.close()


def cmd_list(args: argparse.Namespace) -> int:
    return run_list_command(settings_of(args), args)


def run_list_command(settings: Settings, args: argparse.Namespace) -> int:
    """Validate first (exit 2 with the reason), then talk to Kafka (exit 1 when that fails)."""
    entry = None
    if args.action in ("add", "remove"):
        try:
            entry = parse_entry(args.list_name, args.kind, args.value, getattr(args, "comment", ""))
        except EntryError as exc:
            print(f"poststelle list: invalid {args.kind} entry: {exc}", file=sys.stderr)
            return 2
    try:
        return asyncio.run(_run(settings, args, entry))
    except (ConnectionError, OSError, TimeoutError) as exc:
        print(f"poststelle list: {exc}", file=sys.stderr)
        return 1
