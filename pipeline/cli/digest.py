"""`poststelle digest send [--user ADDRESS] [--dry-run]`: the quarantine digests, now.

Reads the quarantine and the users' settings once and sends what the digest service would send at
its next run, except that weekly users are not held back for their weekday: every user whose digest
is not `off` gets one listing their entries no digest listed yet. `--user` sends to that one user,
whatever their setting (an operator asked for it). `--dry-run` prints who would get which entries
and sends nothing. Each digest is one Kafka transaction, as in the service, so a digest sent here is
not sent again by the service.
"""
from __future__ import annotations

import argparse
import asyncio
import sys

from consumers.services.digest import DigestSender
from pipeline.blobstore import FileBlobStore
from pipeline.cli.common import settings_of
from pipeline.links import link_key
from pipeline.producers import TransactionalProducer
from pipeline.settings import Settings
from pipeline.state.quarantine import read_quarantine_state
from pipeline.state.users import SettingError, UserSettings, normalize_user

__all__ = ["add_parsers"]

USERS_TIMEOUT = 30.0  # seconds to replay the users topic


def add_parsers(sub: argparse._SubParsersAction) -> None:
    digest = sub.add_parser("digest", help="the quarantine digests: send them now")
    actions = digest.add_subparsers(dest="action", required=True)
    send = actions.add_parser("send", help="mail each user the quarantine entries no digest listed yet")
    send.add_argument("--user", default=None, metavar="ADDRESS", help="only this user (whatever their setting)")
    send.add_argument("--dry-run", action="store_true", help="print who would get which entries; send nothing")
    send.set_defaults(func=cmd_digest)


def cmd_digest(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    try:
        user = normalize_user(args.user) if args.user else None
    except SettingError as exc:
        print(f"poststelle digest send: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_send(settings, user, args.dry_run))


async def _send(settings: Settings, user: str | None, dry_run: bool) -> int:
    state = await read_quarantine_state(settings)
    users = UserSettings.from_settings(settings, client_id="digest-cli-users")
    producer = TransactionalProducer(settings.kafka, f"{settings.kafka.topic_prefix}.digest.cli")
    try:
        if not await users.start(USERS_TIMEOUT):
            print("poststelle digest send: the users' settings could not be read from Kafka", file=sys.stderr)
            return 1
        sender = DigestSender(settings, state, users, producer, FileBlobStore(settings.home / "blobs"),
                              link_key(settings))
        planned = await sender.plan(day=None, only=user)
        if not planned:
            print("no digest to send: no user has new entries" + (f" ({user})" if user else ""))
            return 0
        failed = 0
        for digest in planned:
            print(f"{digest.user} ({digest.language}, {digest.frequency}): {len(digest.entries)} "
                  f"entr{'y' if len(digest.entries) == 1 else 'ies'}")
            for entry in digest.entries:
                print(f"  {entry.id}  {entry.time[:19]}  {entry.sender or '<>'}  {entry.subject[:60]!r}")
            if dry_run:
                continue
            try:
                sent = await sender.send(digest)
                print(f"  sent as {sent.digest_message_id}")
            except Exception as exc:  # the broker, the blob store: say so, go on with the next user
                failed += 1
                print(f"  NOT sent: {exc}", file=sys.stderr)
        return 1 if failed else 0
    finally:
        await producer.stop()
        await users.close()
