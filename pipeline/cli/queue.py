"""`poststelle queue`: the deferred deliveries, read from the ledger, and bringing them forward.

Like Postfix's `postqueue -p` and `postqueue -f`: the list shows every delivery whose latest state
is `deferred`; `retry` publishes their `routed` copies again right away. The scheduled retry that
is still waiting is then stale (the ledger shows a newer attempt) and the retry service drops it.
"""
from __future__ import annotations

import argparse
import asyncio
import sys

from pipeline.bus import Topics, make_producer
from pipeline.cli.common import settings_of
from pipeline.cli.table import format_table
from pipeline.settings import Settings
from pipeline.state.ledger import Ledger
from schemas.events import Deferred, encode_event

__all__ = ["add_parsers", "deferred_deliveries", "retry_now", "queue_rows"]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    queue = sub.add_parser("queue", help="deferred deliveries (like postqueue -p / -f)")
    queue.add_argument("action", nargs="?", choices=["list", "retry"], default="list")
    queue.add_argument("ids", nargs="*", metavar="MESSAGE_ID")
    queue.add_argument("--all", action="store_true", help="with retry: every deferred delivery")
    queue.set_defaults(func=cmd_queue)


def cmd_queue(args: argparse.Namespace) -> int:
    """List deferred deliveries, or (`queue retry ID|--all`) try them now."""
    settings = settings_of(args)
    if args.action == "retry":
        if not args.all and not args.ids:
            print("poststelle queue retry: name message ids or --all", file=sys.stderr)
            return 2
        chosen = asyncio.run(retry_now(settings, None if args.all else set(args.ids)))
        print(f"{len(chosen)} deferred deliveries sent for an immediate attempt")
        return 0
    columns, rows = queue_rows(asyncio.run(deferred_deliveries(settings)))
    print(format_table(columns, rows) if rows else "queue is empty")
    return 0


async def deferred_deliveries(settings: Settings) -> list[Deferred]:
    ledger = Ledger(settings.kafka, Topics.from_settings(settings).ledger, "queue")
    try:
        await ledger.start()
        return sorted(ledger.deferred(), key=lambda d: (d.next_attempt_time, d.message_id, d.recipient))
    finally:
        await ledger.close()


async def retry_now(settings: Settings, message_ids: set[str] | None) -> list[Deferred]:
    """Publish the deferred deliveries of `message_ids` (all when None) for an immediate attempt."""
    topics = Topics.from_settings(settings)
    chosen = [d for d in await deferred_deliveries(settings)
              if d.routed is not None and (message_ids is None or d.message_id in message_ids)]
    producer = make_producer(settings.kafka, "queue")
    await producer.start()
    try:
        for deferred in chosen:
            await producer.send_and_wait(topics.routed(deferred.destination), encode_event(deferred.routed),
                                         key=deferred.message_id.encode())
    finally:
        await producer.stop()
    return chosen


def queue_rows(deferred: list[Deferred]) -> tuple[list[str], list[list]]:
    columns = ["message_id", "recipient", "destination", "attempts", "next_attempt", "last_reply"]
    rows = [[d.message_id, d.recipient, d.destination, d.attempt, d.next_attempt_time,
             f"{d.reply.code} {d.reply.enhanced} {d.reply.text}".replace("  ", " ")] for d in deferred]
    return columns, rows
