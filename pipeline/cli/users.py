"""`poststelle user show|set|reset`: one user's own settings (see `pipeline.state.users`).

    poststelle user show anna.schmidt@school.test [--json]
    poststelle user set anna.schmidt@school.test quarantine=on tag_probable=40 allow_senders+=@partner.example
    poststelle user reset anna.schmidt@school.test [tag_probable ...]

`show` prints the effective value of every setting and where it came from (self-set, the directory,
the site), `set` changes the user's own values (`key=value`; `key+=` / `key-=` add to or remove
from the sender lists, starting from the effective list) and `reset` drops them (every one without
keys), so the directory's or the site's value applies again. Values are checked before anything is
written (exit 2 with the reason, e.g. a threshold outside `[users.limits]`); `set` and `reset`
return once the broker has the change (acks=all), and `show` the result. Kafka or the directory
not answering is exit 1. With a directory, an alias edits its person's settings, and an address no
entry has is refused.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import orjson
from aiokafka.errors import KafkaError

from pipeline.bus import ensure_topics
from pipeline.cli.common import cli_actor, settings_of
from pipeline.cli.table import format_table
from pipeline.settings import THRESHOLDS, USER_SETTINGS, Settings
from pipeline.state.users import (
    TABLE,
    Change,
    Explained,
    SettingError,
    Source,
    UserSettings,
    UserSettingsUnavailable,
    apply_changes,
    normalize_user,
    parse_change,
    write_settings,
)
from schemas.events import UserPrefValues, UserSettingsChanged, encode_event

__all__ = ["add_parsers", "run_user_command"]

REPLAY_TIMEOUT = 30.0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add `user` with its actions to the `poststelle` parser."""
    user = sub.add_parser("user", help="a user's own settings: quarantine, spam thresholds, sender lists")
    actions = user.add_subparsers(dest="action", required=True)
    show = actions.add_parser("show", help="the effective settings and where each comes from")
    change = actions.add_parser("set", help="set the user's own values: key=value, key+=..., key-=...")
    reset = actions.add_parser("reset", help="drop the user's own values (all without keys)")
    for parser in (show, change, reset):
        parser.add_argument("address")
        parser.set_defaults(func=cmd_user)
    show.add_argument("--json", action="store_true", help="print them as JSON")
    change.add_argument("assignments", nargs="+", metavar="key=value", help=f"keys: {', '.join(USER_SETTINGS)}")
    reset.add_argument("keys", nargs="*", metavar="key")
    for parser in (change, reset):
        parser.add_argument("--by", default="", help="who changes it (default: cli:<login>@<host>)")


def cmd_user(args: argparse.Namespace) -> int:
    return run_user_command(settings_of(args), args)


def run_user_command(settings: Settings, args: argparse.Namespace) -> int:
    """Validate first (exit 2 with the reason), then talk to Kafka and the directory (exit 1 when they fail)."""
    try:
        address = normalize_user(args.address)
        domain = address.rpartition("@")[2]
        if domain not in settings.ingress.local_domains:
            local = ", ".join(settings.ingress.local_domains)
            raise SettingError(f"{address}: {domain} is not a local domain ({local})")
        changes = _changes(settings, args)
        return asyncio.run(_run(settings, args, address, changes))
    except SettingError as exc:
        print(f"poststelle user {args.action}: {exc}", file=sys.stderr)
        return 2
    except (ConnectionError, OSError, TimeoutError, KafkaError, UserSettingsUnavailable) as exc:
        print(f"poststelle user {args.action}: {exc}", file=sys.stderr)
        return 1


def _changes(settings: Settings, args: argparse.Namespace) -> list[Change]:
    if args.action == "set":
        return [parse_change(text, settings.users) for text in args.assignments]
    if args.action == "reset":
        unknown = [key for key in args.keys if key not in USER_SETTINGS]
        if unknown:
            raise SettingError(f"unknown setting {unknown[0]!r} (known: {', '.join(USER_SETTINGS)})")
        return [Change(key, "reset") for key in dict.fromkeys(args.keys or USER_SETTINGS)]
    return []


async def _run(settings: Settings, args: argparse.Namespace, address: str, changes: list[Change]) -> int:
    await ensure_topics(settings, timeout=REPLAY_TIMEOUT)
    store = UserSettings.from_settings(settings, client_id="users-cli")
    try:
        if not await store.start(REPLAY_TIMEOUT):
            raise ConnectionError(f"could not read the user settings from Kafka at {settings.kafka.bootstrap} "
                                  f"within {REPLAY_TIMEOUT:.0f}s")
        explained = await store.explain(address)
        if args.action == "show":
            print(_json(explained) if args.json else _text(explained))
            return 0
        if explained.in_directory is False:
            raise SettingError(f"{address}: no person or group in the directory has this address")
        own = explained.last.settings if explained.last is not None else UserPrefValues()
        if args.action == "reset":  # only what the user had set is reset (and recorded as changed)
            changes = [c for c in changes if getattr(own, c.key) is not None]
            if not changes:
                print(f"{explained.key}: nothing of its own to reset")
                return 0
        values = apply_changes(own, explained.prefs, changes, settings.users)
        event = UserSettingsChanged(address=explained.key, settings=values, by=args.by or cli_actor(),
                                    changed=list(dict.fromkeys(c.key for c in changes)))
        assert store.transport is not None
        await write_settings(store.transport, event)
        store.apply(TABLE, event.address, encode_event(event))
        print(f"{'changed' if args.action == 'set' else 'reset'}: {', '.join(event.changed)}")
        print(_text(await store.explain(address)))
        return 0
    finally:
        await store.close()


# ---- output -------------------------------------------------------------------------------------


def _value(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None and key in THRESHOLDS:
        return "site"
    if isinstance(value, float):
        return f"{value:g} %"
    if isinstance(value, tuple):
        return ", ".join(value) if value else "(none)"
    return str(value)


def _origin(source: Source) -> str:
    text = {"self": "self-set by", "ldap": "directory:", "site": "site:"}[source.origin] + f" {source.detail}"
    if source.clamped_from is not None:
        text += f" ({source.clamped_from:g} %, moved into the site's limits)"
    if source.passed_over:
        text += f" (passed over: {'; '.join(source.passed_over)})"
    return text


def _text(explained: Explained) -> str:
    heading = explained.key
    if explained.key != explained.address:
        heading = f"{explained.address}: an alias of {explained.key}, whose settings these are"
    elif explained.in_directory is False:
        heading += " (not in the directory)"
    rows = [[key, _value(key, getattr(explained.prefs, key)), _origin(explained.sources[key])]
            for key in USER_SETTINGS]
    lines = [heading, format_table(["setting", "value", "from"], rows).rsplit("\n", 1)[0]]
    if explained.last is not None:
        lines.append(f"last change: {explained.last.time} by {explained.last.by or 'someone'} "
                     f"({', '.join(explained.last.changed) or 'nothing'})")
    return "\n".join(lines)


def _json(explained: Explained) -> str:
    last = explained.last
    return orjson.dumps({
        "address": explained.address,
        "user": explained.key,
        "in_directory": explained.in_directory,
        "settings": {key: getattr(explained.prefs, key) for key in USER_SETTINGS},
        "sources": {key: {"origin": s.origin, "detail": s.detail, "clamped_from": s.clamped_from,
                          "passed_over": list(s.passed_over)} for key, s in explained.sources.items()},
        "last_change": None if last is None else {"time": last.time, "by": last.by, "changed": last.changed},
    }).decode()
