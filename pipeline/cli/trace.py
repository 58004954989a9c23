"""`poststelle trace`: "why was this held, and what happened to it since?", from the event log.

    poststelle trace 0191a0b0-...                      by message id (the id in the 250 reply, in notices)
    poststelle trace '<prize-1@ext.test>'              by the Message-ID header (with or without <>)
    poststelle trace --recipient lena@school.test --since 2h [--until 2026-12-03T12:00]
    ... [--details] [--json] [--from-log]

Prints each message's steps (time, component, what happened) from `pipeline.state.timeline`;
`--details` adds what an administrator needs under each step, `--json` prints everything for
scripts. The events come from the analytics store (see docs/decisions/0004-trace.md); it lags the
log by about a second, so a message that is still moving may miss its last step. `--from-log` reads
the topics themselves instead (complete, and slower the longer the log). Exit 0 when something was
found, 1 when not (or the store did not answer), 2 for a bad argument.
"""
from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
import time
from typing import Any

import orjson
from aiokafka.errors import KafkaError

from pipeline.cli.common import settings_of
from pipeline.clients.analytics import QueryError
from pipeline.settings import ConfigError, Settings, parse_duration
from pipeline.state.timeline import Timeline
from pipeline.state.timeline_source import MAX_MESSAGES, AnalyticsSource, EventSource, LogSource, TraceRequest, trace

__all__ = ["add_parsers", "analytics_source", "format_timeline", "parse_time"]

DEFAULT_SINCE = "1d"  # with --recipient and no --since
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("trace", help="a message's timeline: SMTP checks, stages, delivery, quarantine")
    parser.add_argument("id", nargs="?", default="", help="a message id, or a Message-ID header ('<...>')")
    parser.add_argument("--recipient", default="", help="the messages to this address (with --since/--until)")
    parser.add_argument("--since", default="", help=f"from: 2h, 7d (ago) or an ISO time (default {DEFAULT_SINCE})")
    parser.add_argument("--until", default="", help="up to: 2h, 7d (ago) or an ISO time (default now)")
    parser.add_argument("--details", action="store_true", help="each step's details (for administrators)")
    parser.add_argument("--json", action="store_true", help="print the timelines as JSON")
    parser.add_argument("--from-log", action="store_true", help="read the topics instead of the analytics store")
    parser.set_defaults(func=cmd_trace)


def parse_time(text: str, now: float | None = None) -> float:
    """Seconds since the epoch of "2h" / "7d" (that long ago) or an ISO date or time (UTC unless it says)."""
    now = time.time() if now is None else now
    try:
        return now - parse_duration("time", text)
    except ConfigError:
        pass
    try:
        moment = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"expected a duration such as 2h or 7d, or an ISO time, got {text!r}") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)).timestamp()


def request_of(args: argparse.Namespace) -> TraceRequest:
    if args.recipient:
        if args.id:
            raise ValueError("give a message id or --recipient, not both")
        return TraceRequest(recipient=args.recipient, since=parse_time(args.since or DEFAULT_SINCE),
                            until=parse_time(args.until) if args.until else 0.0)
    if not args.id:
        raise ValueError("give a message id, a Message-ID header ('<...>') or --recipient ADDRESS")
    if _UUID.match(args.id) or ("@" not in args.id and not args.id.startswith("<")):
        return TraceRequest(message_id=args.id)
    return TraceRequest(header=args.id)


def analytics_source(settings: Settings) -> AnalyticsSource:
    """The analytics store as `poststelle sql` reaches it (a server, the running sink, or the files)."""
    from consumers.sinks.analytics import run_sql

    return AnalyticsSource(lambda sql: run_sql(settings, sql), settings.sinks.analytics.database)


def _when(iso: str) -> str:
    return iso.replace("T", " ").rstrip("Z")


def _detail_lines(details: dict[str, Any], indent: str) -> list[str]:
    lines = []
    for key, value in details.items():
        if value in ("", [], {}, None):
            continue
        text = value if isinstance(value, str) else orjson.dumps(value, default=str).decode()
        lines.append(f"{indent}{key}: {text}")
    return lines


def format_timeline(timeline: Timeline, details: bool = False) -> str:
    """The heading, then one aligned line per step (time, component, summary), details indented below."""
    heading = f"message {timeline.message_id}"
    if timeline.sender or timeline.recipients:
        heading += f": from <{timeline.sender}> to {', '.join(timeline.recipients)}"
    if timeline.subject:
        heading += f', "{timeline.subject}"'
    if timeline.copies:
        heading += f" (released as {', '.join(timeline.copies)})"
    width = max((len(step.component) for step in timeline.steps), default=0)
    lines = [heading]
    for step in timeline.steps:
        lines.append(f"  {_when(step.time):23}  {step.component:{width}}  {step.summary}")
        if details:
            lines.extend(_detail_lines(step.details, " " * (2 + 23 + 2 + width + 2)))
    return "\n".join(lines)


def cmd_trace(args: argparse.Namespace) -> int:
    try:
        request = request_of(args)
    except ValueError as exc:
        print(f"poststelle trace: {exc}", file=sys.stderr)
        return 2
    settings = settings_of(args)
    try:
        source: EventSource = _log_source(settings) if args.from_log else analytics_source(settings)
        timelines = trace(source, request)
    except (QueryError, OSError, RuntimeError, KafkaError) as exc:
        where = "the topics could not be read" if args.from_log else "the analytics store did not answer"
        print(f"poststelle trace: {where}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(orjson.dumps({"timelines": [t.as_dict() for t in timelines]}).decode())
    elif timelines:
        print("\n\n".join(format_timeline(t, args.details) for t in timelines))
    if len(timelines) >= MAX_MESSAGES and not request.message_id:
        print(f"poststelle trace: only the newest {MAX_MESSAGES} messages found are shown; narrow --since/--until",
              file=sys.stderr)
    if not timelines:
        print("poststelle trace: nothing found (the analytics store lags the log by about a second)", file=sys.stderr)
    return 0 if timelines else 1


def _log_source(settings: Settings) -> LogSource:
    import asyncio

    return asyncio.run(LogSource.read(settings))
