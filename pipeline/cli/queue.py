"""`poststelle queue`: the deferred deliveries, read from the ledger; bringing them forward; deleting them.

Like Postfix's `postqueue -p`, `postqueue -f` and `postsuper -d`: the list shows every delivery
whose latest state is `deferred`; `retry` publishes their `routed` copies again right away (the
scheduled retry that is still waiting is then stale: the ledger shows a newer attempt, and the
retry service drops it); `delete` writes a `discarded` state for each to the ledger and the event to
the delivery topic (for analytics and `poststelle trace`): the retry service drops the waiting
retry, no sink tries it again, and no DSN goes to the sender. A copy the retry service handed to a
sink before the deletion may still be tried once.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Iterable

from pipeline.bus import Topics, make_producer
from pipeline.cli.common import cli_actor, settings_of
from pipeline.cli.table import format_table
from pipeline.settings import Settings
from pipeline.state.ledger import Ledger
from schemas.events import Deferred, Discarded, encode_event

__all__ = ["add_parsers", "deferred_deliveries", "retry_now", "delete_deferred", "queue_rows", "select"]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    queue = sub.add_parser("queue", help="deferred deliveries (like postqueue -p / -f, postsuper -d)")
    queue.add_argument("action", nargs="?", choices=["list", "retry", "delete"], default="list")
    queue.add_argument("ids", nargs="*", metavar="MESSAGE_ID")
    queue.add_argument("--all", action="store_true", help="with retry or delete: every deferred delivery")
    queue.add_argument("--from", dest="sender", metavar="SENDER",
                       help="only the deliveries of mail from this envelope sender (\"\": the null sender)")
    queue.add_argument("--by", default="", help="with delete: who deletes, and why (default: cli:<login>@<host>)")
    queue.set_defaults(func=cmd_queue)


def cmd_queue(args: argparse.Namespace) -> int:
    """List deferred deliveries, or (`queue retry ID|--all`) try them now, or (`queue delete ID|--all`) drop them."""
    settings = settings_of(args)
    chosen_ids = set(args.ids) if args.ids else None
    if args.action in ("retry", "delete"):
        if not args.all and not args.ids and args.sender is None:
            print(f"poststelle queue {args.action}: name message ids, --from SENDER or --all", file=sys.stderr)
            return 2
        if args.action == "delete":
            deleted = asyncio.run(delete_deferred(settings, chosen_ids, args.by or cli_actor(), args.sender))
            print(f"{len(deleted)} deferred deliveries deleted (no DSN to their senders)")
            return 0
        chosen = asyncio.run(retry_now(settings, chosen_ids, args.sender))
        print(f"{len(chosen)} deferred deliveries sent for an immediate attempt")
        return 0
    columns, rows = queue_rows(select(asyncio.run(deferred_deliveries(settings)), chosen_ids, args.sender))
    filtered = chosen_ids is not None or args.sender is not None
    print(format_table(columns, rows) if rows else "no deferred delivery matches" if filtered else "queue is empty")
    return 0


async def deferred_deliveries(settings: Settings) -> list[Deferred]:
    ledger = Ledger(settings.kafka, Topics.from_settings(settings).ledger, "queue")
    try:
        await ledger.start()
        return sorted(ledger.deferred(), key=lambda d: (d.next_attempt_time, d.message_id, d.recipient))
    finally:
        await ledger.close()


def _sender(deferred: Deferred) -> str:
    return deferred.routed.message.envelope.mail_from if deferred.routed is not None else ""


def select(deferred: Iterable[Deferred], message_ids: set[str] | None, sender: str | None = None) -> list[Deferred]:
    """The deferred deliveries of `message_ids` (None: any) whose envelope sender is `sender` (None: any;
    "": the null sender), compared without case."""
    wanted = None if sender is None else sender.strip().strip("<>").lower()
    return [d for d in deferred if (message_ids is None or d.message_id in message_ids)
            and (wanted is None or _sender(d).lower() == wanted)]


async def retry_now(settings: Settings, message_ids: set[str] | None, sender: str | None = None) -> list[Deferred]:
    """Publish the deferred deliveries of `message_ids` (all when None) from `sender` (any when None)
    for an immediate attempt."""
    topics = Topics.from_settings(settings)
    chosen = [d for d in select(await deferred_deliveries(settings), message_ids, sender) if d.routed is not None]
    producer = make_producer(settings.kafka, "queue")
    await producer.start()
    try:
        for deferred in chosen:
            await producer.send_and_wait(topics.routed(deferred.destination), encode_event(deferred.routed),
                                         key=deferred.message_id.encode())
    finally:
        await producer.stop()
    return chosen


async def delete_deferred(settings: Settings, message_ids: set[str] | None, by: str,
                          sender: str | None = None) -> list[Discarded]:
    """Take the deferred deliveries of `message_ids` (all when None) from `sender` (any when None) out of
    the queue: a `discarded` ledger state first (from then on the retry service drops their retries),
    then the event."""
    topics = Topics.from_settings(settings)
    ledger = Ledger(settings.kafka, topics.ledger, "queue")
    producer = make_producer(settings.kafka, "queue")
    deleted: list[Discarded] = []
    try:
        await ledger.start()
        await producer.start()
        for deferred in sorted(select(ledger.deferred(), message_ids, sender),
                               key=lambda d: (d.message_id, d.recipient, d.destination)):
            event = Discarded(message_id=deferred.message_id, destination=deferred.destination,
                              recipient=deferred.recipient, attempt=deferred.attempt, by=by)
            await ledger.record(event)
            await producer.send_and_wait(topics.delivery, encode_event(event), key=deferred.message_id.encode())
            deleted.append(event)
    finally:
        await producer.stop()
        await ledger.close()
    return deleted


def queue_rows(deferred: list[Deferred]) -> tuple[list[str], list[list]]:
    columns = ["message_id", "sender", "recipient", "destination", "attempts", "next_attempt", "last_reply"]
    rows = [[d.message_id, _sender(d) or "<>", d.recipient, d.destination, d.attempt, d.next_attempt_time,
             f"{d.reply.code} {d.reply.enhanced} {d.reply.text}".replace("  ", " ")] for d in deferred]
    return columns, rows
