"""`poststelle deadletter list | show | replay`: records a consumer could not handle (Mailman's unshunt).

    poststelle deadletter list [--all] [--json]   the dead letters not yet replayed (--all: every one)
    poststelle deadletter show ID                 one dead letter: where it came from, why, the record
    poststelle deadletter replay ID [--force]     put the record back on its source topic

A dead letter is named by the id of its `deadlettered` event, or by a prefix of it that is unique.
`replay` writes the original record (same key, same bytes) to the topic it came from, where its
consumer group reads it again, and then records a `deadletter_replayed` event, so `list` stops
showing it and a second replay needs `--force`. Fix the cause first (a stage's bug, a broken
configuration): a record replayed unchanged into the same fault is simply dead-lettered again.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass

import orjson

from pipeline.blobstore import BlobNotFound, FileBlobStore
from pipeline.bus import Topics, make_producer, read_topic
from pipeline.cli.common import settings_of
from pipeline.cli.table import print_rows
from pipeline.deadletter import original_value
from pipeline.settings import Settings
from schemas.events import Deadlettered, DeadletterReplayed, DecodeError, decode_event, encode_event

__all__ = ["add_parsers", "DeadLetter", "read_deadletters", "find", "replay"]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("deadletter", help="records a consumer could not handle: list, show, replay")
    actions = parser.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="the dead letters not yet replayed")
    listing.add_argument("--all", action="store_true", help="also those already replayed")
    listing.add_argument("--json", action="store_true", help="print {columns, rows} as JSON")
    show = actions.add_parser("show", help="one dead letter and its record")
    replay_parser = actions.add_parser("replay", help="put the record back on its source topic")
    replay_parser.add_argument("--force", action="store_true", help="replay a dead letter replayed before")
    for action in (show, replay_parser):
        action.add_argument("id", help="the dead letter's id (or a unique prefix)")
    for action in (listing, show, replay_parser):
        action.set_defaults(func=cmd_deadletter)


@dataclass(slots=True)
class DeadLetter:
    event: Deadlettered
    replays: list[DeadletterReplayed]


async def read_deadletters(settings: Settings) -> list[DeadLetter]:
    """Every dead letter on the topic, oldest first, with the replays recorded for it."""
    records = await read_topic(settings.kafka, Topics.from_settings(settings).deadletter, "deadletter-reader")
    letters: dict[str, DeadLetter] = {}
    replays: list[DeadletterReplayed] = []
    for record in records:
        try:
            event = decode_event(record.value or b"", expect=(Deadlettered, DeadletterReplayed))
        except DecodeError:
            continue  # not ours to judge: the topic is for people
        if isinstance(event, Deadlettered):
            letters[event.id] = DeadLetter(event, [])
        else:
            replays.append(event)  # type: ignore[arg-type]
    for replayed in replays:
        if replayed.deadletter_id in letters:
            letters[replayed.deadletter_id].replays.append(replayed)
    return sorted(letters.values(), key=lambda d: d.event.time)


def find(letters: list[DeadLetter], wanted: str) -> DeadLetter:
    """The dead letter whose id is `wanted` or starts with it (LookupError when none or several)."""
    exact = [d for d in letters if d.event.id == wanted]
    found = exact or [d for d in letters if d.event.id.startswith(wanted)]
    if len(found) != 1:
        raise LookupError(f"no dead letter {wanted!r}" if not found else f"{wanted!r} names {len(found)} dead letters")
    return found[0]


async def replay(settings: Settings, letter: DeadLetter) -> DeadletterReplayed:
    """Write the record back to its source topic, then record that it was (both acknowledged by the broker)."""
    event = letter.event
    value = original_value(event, FileBlobStore(settings.home / "blobs"))
    producer = make_producer(settings.kafka, "deadletter-replay")
    await producer.start()
    try:
        sent = await producer.send_and_wait(event.source_topic, value, key=event.key.encode() if event.key else None)
        replayed = DeadletterReplayed(message_id=event.message_id, deadletter_id=event.id,
                                      source_topic=event.source_topic, partition=sent.partition, offset=sent.offset)
        await producer.send_and_wait(Topics.from_settings(settings).deadletter, encode_event(replayed),
                                     key=event.key.encode() if event.key else None)
        return replayed
    finally:
        await producer.stop()


def _rows(letters: list[DeadLetter]) -> tuple[list[str], list[list]]:
    columns = ["id", "time", "consumer", "from", "reason", "message_id", "error", "replayed"]
    rows = [[d.event.id, d.event.time, d.event.consumer,
             f"{d.event.source_topic}[{d.event.partition}]@{d.event.offset}", d.event.reason, d.event.message_id,
             " ".join(d.event.error.split())[:80], len(d.replays)] for d in letters]
    return columns, rows


def _show(letter: DeadLetter, settings: Settings) -> str:
    e = letter.event
    lines = [f"dead letter {e.id} ({e.time})",
             f"  consumer:   {e.consumer}",
             f"  record:     {e.source_topic}[{e.partition}]@{e.offset}, key {e.key or '-'}",
             f"  message:    {e.message_id or '-'}",
             f"  reason:     {e.reason}",
             f"  error:      {e.error}",
             f"  replayed:   {', '.join(f'{r.time} to [{r.partition}]@{r.offset}' for r in letter.replays) or 'no'}"]
    try:
        value = original_value(e, FileBlobStore(settings.home / "blobs"))
    except (ValueError, BlobNotFound) as exc:
        return "\n".join([*lines, f"  record value not available: {exc}", f"  excerpt: {e.payload[:2000]}"])
    try:
        text = orjson.dumps(orjson.loads(value), option=orjson.OPT_INDENT_2).decode()
    except orjson.JSONDecodeError:
        text = value.decode("utf-8", "replace")
    return "\n".join([*lines, f"  record value ({len(value)} bytes):", text])


def cmd_deadletter(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    letters = asyncio.run(read_deadletters(settings))
    if args.action == "list":
        shown = letters if args.all else [d for d in letters if not d.replays]
        columns, rows = _rows(shown)
        print_rows(columns, rows, args.json, "no dead letters")
        return 0
    try:
        letter = find(letters, args.id)
    except LookupError as exc:
        print(f"poststelle deadletter: {exc}", file=sys.stderr)
        return 1
    if args.action == "show":
        print(_show(letter, settings))
        return 0
    if letter.replays and not args.force:
        print(f"poststelle deadletter: {letter.event.id} was replayed before ({letter.replays[-1].time}); "
              "use --force to replay it again", file=sys.stderr)
        return 1
    try:
        replayed = asyncio.run(replay(settings, letter))
    except (ValueError, BlobNotFound) as exc:
        print(f"poststelle deadletter: {exc}", file=sys.stderr)
        return 1
    print(f"replayed {letter.event.id} to {replayed.source_topic}[{replayed.partition}]@{replayed.offset}")
    return 0
