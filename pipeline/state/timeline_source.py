"""Where a timeline's events come from: the analytics store (the default), or the topics themselves.

`AnalyticsSource` asks the analytics store's ``events`` table, which holds every event with its full
JSON ``payload``: a few small queries per message, by message id (bloom-filter index) and by type and
time (the sorting key). It lags the log by the sink's batch (about a second). `LogSource` reads every
event topic from the beginning: always complete, but a full read whose cost grows with the retention.
docs/decisions/0004-trace.md has the measurements behind the default.

Both answer the same two questions: which messages does a request mean (`find`), and which events
may belong to one message (`pool`, a superset: `timeline.build_timeline` picks from it by the same
`Leads` the queries here follow).
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from pipeline.bus import Topics, read_topic
from pipeline.clients.analytics import query_analytics
from pipeline.clients.analytics import sql_string as _lit
from pipeline.settings import Settings
from pipeline.state.timeline import Leads, Timeline, build_timeline, leads_of
from schemas.codec import DecodeError
from schemas.events import (
    Event,
    Held,
    QuarantineAction,
    Quarantined,
    Received,
    Rejected,
    decode_event,
    epoch_from_iso,
    iso_from_epoch,
)

__all__ = ["TraceRequest", "EventSource", "AnalyticsSource", "LogSource", "trace", "message_timeline", "Query",
           "GREYLIST_LOOKBACK", "MAX_MESSAGES"]

Query = Callable[[str], tuple[list[str], list[list]]]
GREYLIST_LOOKBACK = 2 * 86_400.0  # seconds before acceptance searched for greylisted attempts (> retry window)
MAX_MESSAGES = 50  # messages one request may trace: the newest of those found
_COPY_ROUNDS = 5  # released copies of released copies: a bound, not an expectation
_FOUND_BY = ("received", "delivered", "deferred", "bounced", "quarantined", "held", "rejected")


@dataclass(frozen=True, slots=True)
class TraceRequest:
    """What to trace: a message id, a Message-ID header, or a recipient within a time range."""

    message_id: str = ""
    header: str = ""  # the Message-ID header, with or without <>
    recipient: str = ""
    since: float = 0.0  # seconds since the epoch
    until: float = 0.0  # 0: now


class EventSource(Protocol):
    def find(self, request: TraceRequest) -> list[str]: ...

    def pool(self, message_id: str) -> list[Event]: ...


def _decode(payload: str | bytes | None) -> Event | None:
    try:
        return decode_event(payload or b"")
    except DecodeError:
        return None  # a type this code does not know (newer), or a broken record: no step


def _list(values) -> str:
    return "[" + ", ".join(_lit(v) for v in sorted(values)) + "]"


def _dt(seconds: float) -> str:
    return f"toDateTime64({_lit(iso_from_epoch(seconds).rstrip('Z').replace('T', ' '))}, 3, 'UTC')"


def _header(value: str) -> str:
    value = value.strip()
    return value if value.startswith("<") else f"<{value}>"


class AnalyticsSource:
    """Events from the analytics store, through `query` (`pipeline.clients.analytics.query_analytics`, or
    the command line's `run_sql`, which may also open the files)."""

    def __init__(self, query: Query, database: str = "poststelle") -> None:
        self._query = query
        self._db = database

    @classmethod
    def from_settings(cls, settings: Settings) -> "AnalyticsSource":
        """On the configured store through `query_analytics` (a server, or the running sink's endpoint;
        never the files): what a service such as the portal uses. Blocking: from asyncio, call `find`
        and `pool` in a thread (`asyncio.to_thread`)."""
        return cls(lambda sql: query_analytics(settings, sql), settings.sinks.analytics.database)

    def _payloads(self, where: str) -> list[Event]:
        _, rows = self._query(f"SELECT payload FROM {self._db}.events WHERE {where} ORDER BY time, id")
        return [e for e in (_decode(row[0]) for row in rows) if e is not None]

    def find(self, request: TraceRequest) -> list[str]:
        if request.message_id:
            return [request.message_id]
        if request.header:
            header = _lit(_header(request.header))  # a substring search first: cheaper than parsing each payload
            where = (f"type = 'received' AND position(payload, {header}) > 0 "
                     f"AND JSONExtractString(payload, 'headers', 'message_id_header') = {header}")
        else:
            address = request.recipient.strip().lower()
            where = (f"type IN {_list(_FOUND_BY)} AND time >= {_dt(request.since)}"
                     + (f" AND time <= {_dt(request.until)}" if request.until else "")
                     + f" AND (lower(recipient) = {_lit(address)} OR has(arrayMap(x -> lower(x), recipients), "
                       f"{_lit(address)}))")
        _, rows = self._query(f"SELECT message_id FROM {self._db}.events WHERE {where} AND message_id != '' "
                              f"GROUP BY message_id ORDER BY min(time) DESC LIMIT {MAX_MESSAGES}")
        found = [row[0] for row in reversed(rows)]  # the newest MAX_MESSAGES, oldest first
        if not found:
            return []
        _, rows = self._query(f"SELECT JSONExtractString(payload, 'released_as') AS copy, any(message_id) "
                              f"FROM {self._db}.events WHERE type = 'quarantine_action' AND copy IN {_list(found)} "
                              f"AND copy != message_id GROUP BY copy")
        return _originals(found, {row[0]: row[1] for row in rows})

    def pool(self, message_id: str) -> list[Event]:
        events: dict[str, Event] = {}
        todo, done = {message_id}, set()
        for _ in range(_COPY_ROUNDS):
            if not todo:
                break
            found = self._payloads(f"message_id IN {_list(todo)}")
            events.update((e.id, e) for e in found)
            done |= todo
            leads = [leads_of(mid, found) for mid in todo]
            for lead in leads:
                events.update((e.id, e) for e in self._related(lead))
            todo = {copy for lead in leads for copy in lead.released_as} - done
        return list(events.values())

    def _related(self, leads: Leads) -> list[Event]:
        """The session and greylisting events of the accepting transaction; the quarantine's actions and
        digests of its entries (by entry id, also those written without the message id)."""
        found: list[Event] = []
        received = leads.received
        if received is not None:
            at = epoch_from_iso(received.time)
            triplet = (f"check_name = 'greylist' AND client_ip = {_lit(received.client.ip)} AND sender = "
                       f"{_lit(received.envelope.mail_from)} AND recipient IN {_list(received.envelope.rcpt_to)}")
            found += self._payloads(
                f"type IN ('smtp_connect', 'smtp_check', 'smtp_reject') AND time >= {_dt(at - GREYLIST_LOOKBACK)}"
                f" AND time <= {_dt(at + 1)} AND (session_id = {_lit(received.session_id)} OR ({triplet}))")
        if leads.entries:
            mentions = " OR ".join(f"position(payload, {_lit(entry)}) > 0" for entry in sorted(leads.entries))
            found += self._payloads(f"type IN ('quarantine_action', 'digest_sent') AND ({mentions})")
        return found


class LogSource:
    """Every event of every event topic, read once from the beginning (complete, and as slow as the log
    is long): for when the analytics store is not there, and to check it against."""

    def __init__(self, events: list[Event]) -> None:
        self.events = events

    @classmethod
    async def read(cls, settings: Settings) -> "LogSource":
        topics = Topics.from_settings(settings).event_topics()
        batches = await asyncio.gather(*(read_topic(settings.kafka, t, "trace-reader") for t in topics))
        return cls([e for batch in batches for e in (_decode(r.value) for r in batch) if e is not None])

    def find(self, request: TraceRequest) -> list[str]:
        if request.message_id:
            return [request.message_id]
        found: dict[str, str] = {}
        for e in sorted(self.events, key=lambda e: (e.time, e.id)):
            if not e.message_id or e.message_id in found:
                continue
            if request.header and isinstance(e, Received) and e.headers.message_id_header == _header(request.header):
                found[e.message_id] = e.time
            elif request.recipient and e.type in _FOUND_BY and _matches(e, request):  # type: ignore[attr-defined]
                found[e.message_id] = e.time
        copies = {e.released_as: e.message_id for e in self.events
                  if isinstance(e, QuarantineAction) and e.released_as and e.released_as != e.message_id}
        return _originals(list(found)[-MAX_MESSAGES:], copies)  # the newest MAX_MESSAGES, oldest first

    def pool(self, message_id: str) -> list[Event]:
        return self.events


def _originals(found: list[str], original_of: dict[str, str]) -> list[str]:
    """The messages found, a released copy replaced by the message it is a copy of (its timeline has both)."""
    return list(dict.fromkeys(original_of.get(mid, mid) for mid in found))


def _matches(e: Event, request: TraceRequest) -> bool:
    at = epoch_from_iso(e.time)
    if at < request.since or (request.until and at > request.until):
        return False
    address = request.recipient.strip().lower()
    if isinstance(e, Received):
        return address in (r.lower() for r in e.envelope.rcpt_to)
    if isinstance(e, (Quarantined, Held, Rejected)):
        return address in (r.lower() for r in e.recipients)
    return getattr(e, "recipient", "").lower() == address


def message_timeline(source: EventSource, message_id: str) -> Timeline:
    """One message's timeline (a quarantine entry's: its `message_id`)."""
    return build_timeline(message_id, source.pool(message_id))


def trace(source: EventSource, request: TraceRequest) -> list[Timeline]:
    """The timelines of the messages `request` means, oldest first ([] when it means none)."""
    timelines = []
    for message_id in source.find(request):
        timeline = message_timeline(source, message_id)
        if timeline.steps:
            timelines.append(timeline)
    return timelines

