"""`poststelle quarantine`: the operator's side of the quarantine (`pipeline.state.quarantine`).

    poststelle quarantine list [--recipient A] [--category spam|attachment|virus|dmarc|rejected|other]
                               [--reason TEXT] [--status open|held|requested|released|deleted|expired|all]
                               [--older-than 7d] [--json]
    poststelle quarantine show ENTRY [--details] [--json]     the entry, and its message's timeline
    poststelle quarantine release ENTRY [--learn-ham] [--allow-sender]
    poststelle quarantine approve ENTRY                        release a requested (or approval-only) entry
    poststelle quarantine delete ENTRY
    poststelle quarantine get MESSAGE_ID [PART] -o FILE        the held bytes (a part decoded, or the message)

ENTRY is an entry id (as `list` prints it; a unique prefix of 6 or more characters will do) or the
id of a message held for one recipient only. Operators act as administrators: a release of a
category that needs approval goes through. Every action is a `quarantine_action` event with
``by = cli:<login>@<host>``, written through `pipeline.state.quarantine_actions.QuarantineActions`,
the same code the portal and the digest links use; a refusal (already released, unknown entry)
is exit 1 with the reason.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

import orjson
from aiokafka.errors import KafkaError

from pipeline.blobstore import BlobNotFound, FileBlobStore
from pipeline.cli.common import cli_actor, settings_of
from pipeline.cli.table import print_rows
from pipeline.clients.analytics import QueryError
from pipeline.producers import TransactionalProducer
from pipeline.settings import ConfigError, Settings, parse_duration
from pipeline.state.quarantine import (
    Entry,
    QuarantineError,
    QuarantineState,
    QuarantineView,
    extract,
    find_entry,
    read_quarantine,
    read_quarantine_state,
)
from pipeline.state.quarantine_actions import ActionRefused, QuarantineActions
from pipeline.state.users import UserSettings

__all__ = ["add_parsers", "entry_rows", "find"]

STATUSES = ("open", "held", "requested", "released", "deleted", "expired", "all")
CATEGORIES = ("spam", "attachment", "virus", "dmarc", "rejected", "other")
REPLAY_TIMEOUT = 30.0
# the first columns as `quarantine list` printed them before entries existed (scripts read them by position)
COLUMNS = ["time", "message_id", "type", "stage", "part", "filename", "reason", "recipient",
           "entry", "category", "status", "score", "sender", "subject"]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    quarantine = sub.add_parser("quarantine", help="the quarantine: list, show, release, approve, delete, get")
    quarantine.set_defaults(func=cmd_list, recipient="", category="", reason="", status="open", older_than="",
                            json=False)
    actions = quarantine.add_subparsers(dest="action")
    listing = actions.add_parser("list", help="entries, newest first (open ones unless --status says)")
    listing.add_argument("--recipient", default="", help="only this recipient's entries")
    listing.add_argument("--category", default="", choices=CATEGORIES, help="only entries held for this")
    listing.add_argument("--reason", default="", help="only entries whose reason contains this text")
    listing.add_argument("--status", default="open", choices=STATUSES, help="open: held or requested (default)")
    listing.add_argument("--older-than", default="", help="only entries held longer than this (e.g. 7d)")
    listing.add_argument("--json", action="store_true", help="print {columns, rows} as JSON")
    listing.set_defaults(func=cmd_list)
    show = actions.add_parser("show", help="one entry and its message's timeline")
    show.add_argument("entry")
    show.add_argument("--details", action="store_true", help="the timeline's details (for administrators)")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_show)
    for name, text in (("release", "deliver it to its recipient after all"),
                       ("approve", "release a requested entry (or one only an administrator may release)"),
                       ("delete", "remove it from the quarantine")):
        act = actions.add_parser(name, help=text)
        act.add_argument("entry")
        act.set_defaults(func=cmd_act)
        if name == "release":
            act.add_argument("--learn-ham", action="store_true", help="also learn it as wanted mail (ham)")
            act.add_argument("--allow-sender", action="store_true", help="also put the sender on the allow list")
    get = actions.add_parser("get", help="the held bytes: a part (decoded) or the whole message")
    get.add_argument("message_id")
    get.add_argument("part", nargs="?", default="", help="MIME part number (default: the whole message)")
    get.add_argument("-o", "--output", required=True, help="write to FILE ('-': stdout)")
    get.set_defaults(func=cmd_get)


# -- reading ----------------------------------------------------------------------------------------


def entry_rows(entries: list[Entry]) -> tuple[list[str], list[list]]:
    rows = [[e.time, e.message_id, e.event.type, e.stage, e.part, e.filename, e.reason, e.recipient,
             e.id, e.category, e.status, e.score, e.sender, e.subject] for e in entries]
    return COLUMNS, rows


def find(state: QuarantineState, ref: str) -> Entry:
    """The entry `ref` names: its id, a unique prefix of it (6+), or a message held for one recipient."""
    ref = ref.strip()
    if ref in state.entries:
        return state.entries[ref]
    matches = [e for e in state.entries.values() if e.message_id == ref]
    if not matches and len(ref) >= 6:
        matches = [e for e in state.entries.values() if e.id.startswith(ref.lower())]
    if len(matches) == 1:
        return matches[0]
    if matches:
        listed = ", ".join(f"{e.id} ({e.recipient}{', part ' + e.part if e.part else ''})" for e in matches)
        raise QuarantineError(f"{ref} names several entries: {listed}")
    raise QuarantineError(f"{ref}: no such entry in the quarantine")


def cmd_list(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    try:
        older = parse_duration("--older-than", args.older_than) if args.older_than else None
    except ConfigError as exc:
        print(f"poststelle quarantine list: {exc}", file=sys.stderr)
        return 2
    state = asyncio.run(read_quarantine_state(settings))
    entries = state.search(recipient=args.recipient or None, category=args.category or None,
                           status=None if args.status == "all" else args.status, older_than=older, now=time.time())
    entries = [e for e in entries if args.reason.lower() in e.reason.lower()]
    print_rows(*entry_rows(entries), args.json, "no entries")
    return 0


def _entry_fields(entry: Entry) -> dict[str, Any]:
    return {"entry": entry.id, "message_id": entry.message_id, "recipient": entry.recipient, "kind": entry.kind,
            "category": entry.category, "stage": entry.stage, "reason": entry.reason, "score": entry.score,
            "sender": entry.sender, "from": entry.header_from, "subject": entry.subject, "size": entry.size,
            "part": entry.part, "filename": entry.filename, "held": entry.time, "expires": entry.expires,
            "status": entry.status, "needs_approval": entry.needs_approval, "released_as": entry.released_as,
            "actions": [{"time": a.time, "action": a.action, "by": a.by} for a in entry.actions]}


def cmd_show(args: argparse.Namespace) -> int:
    from pipeline.cli.trace import analytics_source, format_timeline
    from pipeline.state.timeline_source import message_timeline

    settings = settings_of(args)
    try:
        entry = find(asyncio.run(read_quarantine_state(settings)), args.entry)
    except QuarantineError as exc:
        print(f"poststelle quarantine show: {exc}", file=sys.stderr)
        return 1
    fields = _entry_fields(entry)
    try:
        timeline = message_timeline(analytics_source(settings), entry.message_id)
    except (QueryError, OSError, RuntimeError) as exc:  # the entry is worth showing without its timeline
        print(f"poststelle quarantine show: no timeline: {exc}", file=sys.stderr)
        timeline = None
    if args.json:
        print(orjson.dumps({**fields, "timeline": timeline.as_dict() if timeline else None}, default=str).decode())
        return 0
    width = max(len(k) for k in fields)
    for key, value in fields.items():
        if key == "actions":
            value = "; ".join(f"{a['time']} {a['action']} by {a['by']}" for a in value) or "none"
        if value not in ("", None):
            print(f"{key:{width}}  {value}")
    if timeline is not None:
        print()
        print(format_timeline(timeline, args.details))
    return 0


# -- acting -----------------------------------------------------------------------------------------


def cmd_act(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    try:
        action = asyncio.run(_act(settings, args))
    except (QuarantineError, ActionRefused) as exc:
        print(f"poststelle quarantine {args.action}: {exc}", file=sys.stderr)
        return 1
    except (ConnectionError, OSError, TimeoutError, KafkaError) as exc:
        print(f"poststelle quarantine {args.action}: Kafka did not answer: {exc}", file=sys.stderr)
        return 1
    copy = f"; delivered on as message {action.released_as}" if action.released_as else ""
    print(f"{action.entry}: {action.action} for {action.recipient} by {action.by}{copy}")
    return 0


async def _act(settings: Settings, args: argparse.Namespace):
    view = QuarantineView(settings, "quarantine-cli")
    producer: TransactionalProducer | None = None
    users: UserSettings | None = None
    try:
        if not await view.start(REPLAY_TIMEOUT):
            raise ConnectionError(f"could not read the quarantine from Kafka within {REPLAY_TIMEOUT:.0f}s")
        entry = find(view.state, args.entry)
        producer = TransactionalProducer(settings.kafka, f"quarantine-cli-{entry.id}")
        learner = None
        if getattr(args, "learn_ham", False):
            from pipeline.cli.spam import ham_learner  # the spam stage's tokenizer: only when asked

            learner = ham_learner(settings)
        if getattr(args, "allow_sender", False):
            users = UserSettings.from_settings(settings, client_id="quarantine-cli-users")
            if not await users.start(REPLAY_TIMEOUT):
                raise ConnectionError(f"could not read the user settings within {REPLAY_TIMEOUT:.0f}s")
        actions = QuarantineActions(settings, view, producer, FileBlobStore(settings.home / "blobs"),
                                    users=users, learn_ham=learner)
        by = cli_actor()
        if args.action == "release":
            return await actions.release(entry.id, by, learn_ham=args.learn_ham, allow_sender=args.allow_sender,
                                         admin=True)
        if args.action == "approve":
            return await actions.approve(entry.id, by)
        return await actions.delete(entry.id, by)
    finally:
        if producer is not None:
            await producer.stop()
        if users is not None:
            await users.close()
        await view.close()


def cmd_get(args: argparse.Namespace) -> int:
    """`get MESSAGE_ID [PART] -o FILE`: the held part's decoded bytes, or the raw message."""
    settings = settings_of(args)
    entries = asyncio.run(read_quarantine(settings))
    try:
        entry = find_entry(entries, args.message_id, args.part)
        data = extract(FileBlobStore(settings.home / "blobs"), entry, args.part)
    except (QuarantineError, BlobNotFound) as exc:
        print(f"poststelle quarantine get: {exc}", file=sys.stderr)
        return 1
    if args.output == "-":
        sys.stdout.buffer.write(data)
    else:
        with open(args.output, "wb") as fh:
            fh.write(data)
        print(f"{len(data)} bytes written to {args.output}", file=sys.stderr)
    return 0
