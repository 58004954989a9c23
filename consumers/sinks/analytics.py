"""The analytics sink: every event into ClickHouse, and the query path behind `poststelle sql`.

One row per event in the table ``events`` (common columns flattened from each event type, plus the
full event JSON in ``payload``). The store is the embedded chDB engine under ``<home>/clickhouse``
by default, or a ClickHouse server when ``[sinks.analytics] url`` is set; both are driven through
the same clickhouse-connect client API.

Guarantees and their mechanics:

- **At least once into ClickHouse, counted once.** Offsets are committed only after the batch is
  inserted. Inserts are idempotent: a batch is deduplicated by event id, and ids already in the
  table are dropped before inserting, so a replay (crash before commit, rebalance, a reset consumer
  group) does not double-count, even without ``FINAL``. The table is a ``ReplacingMergeTree`` whose
  sorting key contains ``id``, which also collapses the rare duplicate two concurrent writers could
  race in (only possible against a server, during a rebalance).
- **Analytics never blocks the pipeline.** It is its own consumer group; an undecodable record is
  logged, counted and skipped.
- **One engine per process.** chDB lets exactly one process open a data directory, so the sink owns
  the engine and answers ad-hoc SQL over a loopback HTTP endpoint (`QueryServer`); `run_sql` posts
  there and opens the directory itself only when nothing listens. All engine calls are blocking and
  run on one dedicated worker thread (`AsyncAnalyticsStore`).
- **Ad-hoc SQL is read-only** (``readonly=2``), time-bounded and row-bounded (`QUERY_LIMITS`, set
  on a second client session of its own, so nothing an analyst sends touches the writer's session;
  ``SET`` is refused since it would outlive the request, a ``SETTINGS`` clause works).

The schema is versioned: `MIGRATIONS` are applied in order and recorded in ``schema_migrations``.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import http.client
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import clickhouse_connect
import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import Error as ClickHouseError

from pipeline.bus import Topics, make_consumer
from pipeline.settings import AnalyticsSinkSettings, Settings
from schemas.events import (
    Bounced,
    DeadletterReplayed,
    Deadlettered,
    DecodeError,
    Deferred,
    Delivered,
    DeliveryAttempt,
    Event,
    Held,
    Quarantined,
    Received,
    Rejected,
    Reply,
    Routed,
    SmtpCheck,
    SmtpConnect,
    SmtpReject,
    StageResult,
    decode_event,
    encode_event,
)
from schemas.ids import id_time_ms

__all__ = [
    "Migration",
    "MIGRATIONS",
    "EVENT_COLUMNS",
    "Origin",
    "QueryError",
    "StoreBusyError",
    "AnalyticsStore",
    "AsyncAnalyticsStore",
    "SinkStats",
    "QueryServer",
    "event_row",
    "store_target",
    "run_analytics_sink",
    "run_sql",
    "post_query",
    "dumps_result",
    "event_time",
    "MAX_QUERY_BYTES",
    "QUERY_LIMITS",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_QUERY_BYTES = 1_048_576  # request body limit of the query server
MAX_HEADER_BYTES = 65_536
REQUEST_TIMEOUT = 30.0  # seconds to receive a whole request
# ad-hoc SQL: read-only (settings may change, except readonly), bounded in time and result size
QUERY_LIMITS: dict[str, Any] = {
    "readonly": 2,
    "max_execution_time": 60,
    "max_result_rows": 100_000,
    "result_overflow_mode": "throw",
}
HTTP_CLIENT_TIMEOUT = 120.0
ID_LOOKUP_CHUNK = 5_000  # ids per "already stored?" query
INSERT_RETRY_INITIAL = 0.5
INSERT_RETRY_MAX = 30.0

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SET_STATEMENT = re.compile(r"^\s*SET\s", re.IGNORECASE)
_MIN_TIME = dt.datetime(1900, 1, 1, tzinfo=dt.timezone.utc)  # DateTime64 range
_MAX_TIME = dt.datetime(2299, 12, 31, tzinfo=dt.timezone.utc)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


class QueryError(Exception):
    """ClickHouse refused an ad-hoc query; the message is ClickHouse's own."""


class StoreBusyError(RuntimeError):
    """The embedded store is held by another process and no query server answers for it."""


# ---- schema ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema version: statements applied in order, each safe to re-run (IF NOT EXISTS)."""

    version: int
    description: str
    statements: tuple[str, ...]


# name, ClickHouse type, in the order of the table; `ingested_at` is filled by its default
_COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "String"),
    ("type", "LowCardinality(String)"),
    ("schema_version", "UInt16"),
    ("message_id", "String"),
    ("time", "DateTime64(3, 'UTC')"),
    ("stage", "LowCardinality(String)"),
    ("verdict", "LowCardinality(String)"),
    ("score", "Float64"),
    ("duration_ms", "Float64"),
    ("destination", "LowCardinality(String)"),
    ("sender", "String"),
    ("recipient", "String"),
    ("recipients", "Array(String)"),
    ("client_ip", "String"),
    ("session_id", "String"),
    ("size", "UInt64"),
    ("attempt", "UInt32"),
    ("reply_code", "UInt16"),
    ("reply_enhanced", "LowCardinality(String)"),
    ("reply_text", "String"),
    ("reason", "String"),
    ("check_name", "LowCardinality(String)"),
    ("reason_code", "LowCardinality(String)"),
    ("phase", "LowCardinality(String)"),
    ("payload", "String CODEC(ZSTD(3))"),
    ("kafka_topic", "LowCardinality(String)"),
    ("kafka_partition", "Int32"),
    ("kafka_offset", "Int64"),
)
EVENT_COLUMNS: tuple[str, ...] = tuple(name for name, _ in _COLUMNS)

_EVENTS_DDL = (
    "CREATE TABLE IF NOT EXISTS {db}.events\n(\n"
    + "".join(f"    {name} {ctype},\n" for name, ctype in _COLUMNS)
    + "    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3, 'UTC'),\n"
    "    INDEX idx_id id TYPE bloom_filter(0.001) GRANULARITY 1,\n"
    "    INDEX idx_message_id message_id TYPE bloom_filter(0.01) GRANULARITY 4\n"
    ")\n"
    "ENGINE = ReplacingMergeTree\n"
    "PARTITION BY toYYYYMM(time)\n"
    "ORDER BY (type, time, id)"
)

_VIEWS = (
    """CREATE VIEW IF NOT EXISTS {db}.rejections_by_reason AS
SELECT toDate(time) AS day, type,
       if(type = 'smtp_reject', check_name, stage) AS source,
       if(type = 'smtp_reject', reason_code, reason) AS cause,
       count() AS events
FROM {db}.events WHERE type IN ('rejected', 'smtp_reject')
GROUP BY day, type, source, cause""",
    """CREATE VIEW IF NOT EXISTS {db}.stage_verdicts AS
SELECT toDate(time) AS day, stage, verdict, count() AS messages,
       round(avg(score), 3) AS avg_score, round(quantile(0.95)(duration_ms), 1) AS p95_ms
FROM {db}.events WHERE type = 'stage_result'
GROUP BY day, stage, verdict""",
    """CREATE VIEW IF NOT EXISTS {db}.delivery_outcomes AS
SELECT toDate(time) AS day, destination, type AS outcome, count() AS recipients
FROM {db}.events WHERE type IN ('delivered', 'deferred', 'bounced')
GROUP BY day, destination, outcome""",
    """CREATE VIEW IF NOT EXISTS {db}.daily_volume AS
SELECT toDate(time) AS day, count() AS messages, sum(size) AS bytes,
       uniqExact(client_ip) AS clients
FROM {db}.events WHERE type = 'received'
GROUP BY day""",
)

_SMTP_VIEWS = (
    # the breakdown a site reports: "80 % DNSBL, 14 % FCrDNS, 5 % unknown recipient, 1 % greylisting"
    """CREATE VIEW IF NOT EXISTS {db}.smtp_rejections AS
SELECT day, check_name, reason_code, refusals,
       round(100 * refusals / sum(refusals) OVER (PARTITION BY day), 1) AS pct
FROM (SELECT toDate(time) AS day, check_name, reason_code, count() AS refusals
      FROM {db}.events WHERE type = 'smtp_reject' GROUP BY day, check_name, reason_code)""",
    # greylisting: how much mail was delayed, and how much of it came back and passed
    """CREATE VIEW IF NOT EXISTS {db}.greylisting AS
SELECT day, decisions, delayed, passed_after_retry, whitelisted,
       round(100 * delayed / decisions, 1) AS delayed_pct,
       round(100 * passed_after_retry / greatest(delayed, 1), 1) AS passed_after_retry_pct
FROM (SELECT toDate(time) AS day, count() AS decisions,
             countIf(verdict = 'delayed') AS delayed,
             countIf(verdict = 'passed_after_retry') AS passed_after_retry,
             countIf(verdict IN ('whitelisted', 'auto_whitelisted')) AS whitelisted
      FROM {db}.events WHERE type = 'smtp_check' AND check_name = 'greylist' GROUP BY day)""",
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "events table", (_EVENTS_DDL,)),
    Migration(2, "analyst views", _VIEWS),
    Migration(3, "SMTP-time decisions: rejections by reason, greylisting", _SMTP_VIEWS),
)

_MIGRATIONS_DDL = (
    "CREATE TABLE IF NOT EXISTS {db}.schema_migrations\n"
    "(version UInt32, description String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3, 'UTC'))\n"
    "ENGINE = ReplacingMergeTree ORDER BY version"
)


# ---- events → rows -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a row's event was read from (for a person tracing a row back to the log)."""

    topic: str = ""
    partition: int = -1
    offset: int = -1


def _clamp(value: int, low: int, high: int) -> int:
    """Keep an integer inside its column's range, so a strange value can never fail a batch."""
    return max(low, min(high, value))


def _reply(reply: Reply) -> dict[str, Any]:
    return {
        "reply_code": _clamp(reply.code, 0, 65_535),
        "reply_enhanced": reply.enhanced,
        "reply_text": reply.text,
    }


def _from_message(message: Received) -> dict[str, Any]:
    """Columns every message event shares with the `received` event it carries."""
    return {
        "sender": message.envelope.mail_from,
        "recipients": list(message.envelope.rcpt_to),
        "client_ip": message.client.ip,
        "session_id": message.session_id,
        "size": _clamp(message.blob.size, 0, 2**63 - 1),
    }


def _received(e: Received) -> dict[str, Any]:
    return _from_message(e)


def _stage_result(e: StageResult) -> dict[str, Any]:
    return {
        **_from_message(e.message),
        "stage": e.result.stage,
        "verdict": str(e.result.verdict),
        "score": e.result.score,
        "duration_ms": e.result.duration_ms,
    }


def _routed(e: Routed) -> dict[str, Any]:
    return {
        **_from_message(e.message),
        "destination": e.destination,
        "recipients": list(e.recipients),
        "attempt": _clamp(e.attempt, 0, 2**32 - 1),
    }


def _delivery(e: DeliveryAttempt | Delivered | Deferred | Bounced) -> dict[str, Any]:
    row = {
        "destination": e.destination,
        "recipient": e.recipient,
        "attempt": _clamp(e.attempt, 0, 2**32 - 1),
        **_reply(e.reply),
    }
    if isinstance(e, DeliveryAttempt):
        row["duration_ms"] = e.duration_ms
    if isinstance(e, Bounced):
        row.update(reason=e.reason, sender=e.mail_from)
    return row


def _verdict(e: Rejected | Quarantined) -> dict[str, Any]:
    return {**_from_message(e.message), "stage": e.stage, "reason": e.reason, "recipients": list(e.recipients)}


def _held(e: Held) -> dict[str, Any]:
    reason = f"part {e.part} ({e.filename}): {'; '.join(e.reasons)}"
    return {**_from_message(e.message), "stage": e.stage, "reason": reason, "recipients": list(e.recipients)}


def _deadlettered(e: Deadlettered) -> dict[str, Any]:
    return {"stage": e.consumer, "reason": e.reason}


def _deadletter_replayed(e: DeadletterReplayed) -> dict[str, Any]:
    return {"reason": f"replayed {e.deadletter_id}"}


def _smtp_connect(e: SmtpConnect) -> dict[str, Any]:
    return {"session_id": e.session_id, "client_ip": e.client_ip}


def _smtp_decision(e: SmtpReject | SmtpCheck) -> dict[str, Any]:
    """The columns an ingress check's refusal and its other results share."""
    return {
        "session_id": e.session_id,
        "client_ip": e.client_ip,
        "phase": e.phase,
        "check_name": e.check,
        "sender": e.sender,
        "recipient": e.recipient,
    }


def _smtp_reject(e: SmtpReject) -> dict[str, Any]:
    return {**_smtp_decision(e), "reason_code": e.reason_code, **_reply(e.reply)}


def _smtp_check(e: SmtpCheck) -> dict[str, Any]:
    return {**_smtp_decision(e), "verdict": e.result}


_FLATTEN: dict[type[Event], Callable[[Any], dict[str, Any]]] = {
    Received: _received,
    StageResult: _stage_result,
    Routed: _routed,
    DeliveryAttempt: _delivery,
    Delivered: _delivery,
    Deferred: _delivery,
    Bounced: _delivery,
    Quarantined: _verdict,
    Held: _held,
    Rejected: _verdict,
    Deadlettered: _deadlettered,
    DeadletterReplayed: _deadletter_replayed,
    SmtpConnect: _smtp_connect,
    SmtpReject: _smtp_reject,
    SmtpCheck: _smtp_check,
}

_DEFAULTS: dict[str, Any] = {
    "stage": "",
    "verdict": "",
    "score": 0.0,
    "duration_ms": 0.0,
    "destination": "",
    "sender": "",
    "recipient": "",
    "recipients": [],
    "client_ip": "",
    "session_id": "",
    "size": 0,
    "attempt": 0,
    "reply_code": 0,
    "reply_enhanced": "",
    "reply_text": "",
    "reason": "",
    "check_name": "",
    "reason_code": "",
    "phase": "",
}


def event_time(event: Event) -> dt.datetime:
    """The event's time as an aware UTC datetime in milliseconds, deterministic for a given event.

    An unparsable or out-of-range `time` falls back to the time in the (UUIDv7) id, then to the
    epoch, never to "now": a replayed event must produce the same row.
    """
    try:
        parsed = dt.datetime.fromisoformat(event.time)
        parsed = parsed.astimezone(dt.timezone.utc) if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)
    except (ValueError, OverflowError):
        try:
            parsed = _EPOCH + dt.timedelta(milliseconds=id_time_ms(event.id))
        except (ValueError, OverflowError):
            parsed = _EPOCH
    if not _MIN_TIME <= parsed <= _MAX_TIME:
        parsed = _EPOCH
    return parsed.replace(microsecond=parsed.microsecond // 1000 * 1000)


def event_row(event: Event, origin: Origin | None = None) -> list[Any]:
    """The `events` row of one event, in `EVENT_COLUMNS` order."""
    origin = origin or Origin()
    values = {
        **_DEFAULTS,
        **_FLATTEN[type(event)](event),
        "id": event.id,
        "type": event.type,  # type: ignore[attr-defined]
        "schema_version": _clamp(event.schema_version, 0, 65_535),
        "message_id": event.message_id,
        "time": event_time(event),
        "payload": encode_event(event).decode(),
        "kafka_topic": origin.topic,
        "kafka_partition": _clamp(origin.partition, -1, 2**31 - 1),
        "kafka_offset": origin.offset,
    }
    return [values[name] for name in EVENT_COLUMNS]


# ---- the store ---------------------------------------------------------------------------------


def store_target(settings: Settings) -> str:
    """The clickhouse-connect DSN: the server URL, or ``chdb:///<home>/clickhouse``."""
    url = settings.sinks.analytics.url
    if url:
        return url
    return f"chdb://{(settings.home / 'clickhouse').resolve()}"


def _connect(target: str, database: str | None, settings: dict[str, Any] | None = None) -> Client:
    """A client (its own session) for the target; datetimes come back timezone-aware (UTC)."""
    if target.startswith("chdb:"):
        path = Path(target.removeprefix("chdb://"))
        path.mkdir(parents=True, exist_ok=True)
        # the path as such, not inside a DSN: a home with "?" or "#" in it must not parse as a URL
        client = clickhouse_connect.get_client(interface="chdb", path=str(path), tz_mode="aware", settings=settings)
    else:
        client = clickhouse_connect.get_client(dsn=target, tz_mode="aware", settings=settings)
    if database:
        client.database = database
    return client


def _sql_text(sql: str) -> str:
    """An ad-hoc statement without surrounding blanks and trailing semicolons."""
    return sql.strip().rstrip(";").rstrip()


class AnalyticsStore:
    """The `events` table behind a clickhouse-connect client (blocking; see AsyncAnalyticsStore).

    Writes, migrations and id look-ups share one client; ad-hoc SQL runs on a second client (its own
    session) under `QUERY_LIMITS`.
    """

    def __init__(self, client: Client, target: str, database: str) -> None:
        self._client = client
        self._target = target
        self._database = database
        self._reader: Client | None = None

    @classmethod
    def open(cls, settings: Settings, *, migrate: bool = True) -> "AnalyticsStore":
        """Connect to the configured store, create the database and bring the schema up to date."""
        database = settings.sinks.analytics.database
        if not _IDENTIFIER.match(database):
            raise ValueError(f"sinks.analytics.database: {database!r} is not a plain identifier")
        target = store_target(settings)
        client = _connect(target, None)
        try:
            client.command(f"CREATE DATABASE IF NOT EXISTS {database}")
            client.database = database
            store = cls(client, target, database)
            if migrate:
                store.migrate()
        except BaseException:
            client.close()
            raise
        return store

    @property
    def database(self) -> str:
        return self._database

    @property
    def embedded(self) -> bool:
        return self._target.startswith("chdb:")

    # -- schema

    def applied_versions(self) -> list[int]:
        """Schema versions recorded in ``schema_migrations``, ascending."""
        self._client.command(_MIGRATIONS_DDL.format(db=self._database))
        result = self._client.query(f"SELECT DISTINCT version FROM {self._database}.schema_migrations ORDER BY version")
        return [int(row[0]) for row in result.result_rows]

    def migrate(self, migrations: Sequence[Migration] = MIGRATIONS) -> list[int]:
        """Apply the migrations not yet recorded, in version order; return the versions applied."""
        done = set(self.applied_versions())
        newer = sorted(done - {m.version for m in migrations})
        if newer:
            log.warning("analytics schema has versions %s this code does not know", newer)
        applied = []
        for migration in sorted(migrations, key=lambda m: m.version):
            if migration.version in done:
                continue
            for statement in migration.statements:
                self._client.command(statement.format(db=self._database))
            self._client.insert(
                f"{self._database}.schema_migrations",
                [[migration.version, migration.description]],
                column_names=["version", "description"],
            )
            log.info("analytics schema: applied version %d (%s)", migration.version, migration.description)
            applied.append(migration.version)
        return applied

    # -- writes

    def insert(self, events: Sequence[Event], origins: Sequence[Origin] | None = None) -> int:
        """Insert events not stored yet (by id, also within the batch); return the rows written."""
        if origins is not None and len(origins) != len(events):
            raise ValueError("one origin per event")
        rows: dict[str, list[Any]] = {}
        for index, event in enumerate(events):
            if event.id not in rows:
                rows[event.id] = event_row(event, origins[index] if origins is not None else None)
        for stored in self._existing_ids(list(rows.values())):
            rows.pop(stored, None)
        if rows:
            self._client.insert(f"{self._database}.events", list(rows.values()), column_names=EVENT_COLUMNS)
        return len(rows)

    def _existing_ids(self, rows: list[list[Any]]) -> set[str]:
        """The ids among `rows` already in the table (bounded by type and time to use the key)."""
        id_at, type_at, time_at = (EVENT_COLUMNS.index(c) for c in ("id", "type", "time"))
        found: set[str] = set()
        for start in range(0, len(rows), ID_LOOKUP_CHUNK):
            chunk = rows[start:start + ID_LOOKUP_CHUNK]
            millis = [round((row[time_at] - _EPOCH).total_seconds() * 1000) for row in chunk]
            result = self._client.query(
                f"SELECT DISTINCT id FROM {self._database}.events"
                " WHERE type IN {types:Array(String)}"
                " AND time BETWEEN fromUnixTimestamp64Milli({lo:Int64}, 'UTC')"
                " AND fromUnixTimestamp64Milli({hi:Int64}, 'UTC')"
                " AND id IN {ids:Array(String)}",
                parameters={
                    "types": sorted({row[type_at] for row in chunk}),
                    "lo": min(millis),
                    "hi": max(millis),
                    "ids": [row[id_at] for row in chunk],
                },
            )
            found.update(row[0] for row in result.result_rows)
        return found

    # -- reads

    def query(self, sql: str) -> tuple[list[str], list[list[Any]]]:
        """Run one read-only statement; raise `QueryError` with ClickHouse's message if refused."""
        text = _sql_text(sql)
        if not text:
            raise QueryError("empty query")
        if _SET_STATEMENT.match(text):
            raise QueryError("SET would outlive this query; use a SETTINGS clause instead")
        try:
            result = self._reader_client().query(text)
        except ClickHouseError as exc:
            raise QueryError(str(exc).strip()) from None
        return list(result.column_names), [list(row) for row in result.result_rows]

    def _reader_client(self) -> Client:
        if self._reader is None:
            self._reader = _connect(self._target, self._database, QUERY_LIMITS)
        return self._reader

    def close(self) -> None:
        """Close both clients (with chDB, the engine stays open while any handle is)."""
        for client in (self._reader, self._client):
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()
        self._reader = None


class AsyncAnalyticsStore:
    """An `AnalyticsStore` driven from asyncio: every call runs on one dedicated worker thread."""

    def __init__(self, store: AnalyticsStore, executor: concurrent.futures.ThreadPoolExecutor) -> None:
        self.store = store
        self._executor = executor

    @classmethod
    async def open(cls, settings: Settings) -> "AsyncAnalyticsStore":
        """Open (and migrate) the store on a fresh worker thread."""
        executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="analytics-db")
        try:
            store = await asyncio.get_running_loop().run_in_executor(executor, AnalyticsStore.open, settings)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(store, executor)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def insert(self, events: Sequence[Event], origins: Sequence[Origin] | None = None) -> int:
        return await self._run(self.store.insert, events, origins)

    async def query(self, sql: str) -> tuple[list[str], list[list[Any]]]:
        return await self._run(self.store.query, sql)

    async def close(self) -> None:
        """Close the clients on the worker thread, then let the thread go."""
        try:
            await self._run(self.store.close)
        finally:
            self._executor.shutdown(wait=False)


# ---- JSON for query results --------------------------------------------------------------------


def _iso(value: dt.datetime | dt.date | dt.time) -> str:
    """ISO 8601, UTC as ``Z``, with as many fraction digits as the value has (none, 3 or 6)."""
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value.isoformat()
    micro = value.microsecond
    text = value.isoformat(timespec="milliseconds" if micro and micro % 1000 == 0 else "auto")
    return text.removesuffix("+00:00") + "Z" if text.endswith("+00:00") else text


def _json_default(value: Any) -> Any:
    """Types orjson is not to encode itself: datetimes, addresses, decimals, bytes, sets."""
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return _iso(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, (set, frozenset)):
        return list(value)
    return str(value)  # Decimal, IPv4Address/IPv6Address, timedelta, ...


def _plain(value: Any) -> Any:
    """Slow path for what orjson refuses (integers beyond 64 bits): convert recursively."""
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def dumps_result(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> bytes:
    """``{"columns": [...], "rows": [[...]]}`` with datetimes as ISO 8601 strings."""
    options = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_NON_STR_KEYS
    body = {"columns": list(columns), "rows": rows}
    try:
        return orjson.dumps(body, default=_json_default, option=options)
    except orjson.JSONEncodeError:
        return orjson.dumps(_plain(body), default=_json_default, option=options)


# ---- the query server --------------------------------------------------------------------------


@dataclass(slots=True)
class SinkStats:
    """What the sink did since it started (served at ``GET /stats``, logged at exit)."""

    records: int = 0
    undecodable: int = 0
    inserted: int = 0
    duplicates: int = 0
    batches: int = 0
    insert_failures: int = 0
    commit_failures: int = 0


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
}


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    path: str
    body: bytes


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    """Request line and headers (names lower-cased) of an HTTP/1.x request head."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _HttpError(400, "malformed request line")
    headers = {}
    for line in lines[1:]:
        if line:
            name, sep, value = line.partition(":")
            if not sep:
                raise _HttpError(400, "malformed header line")
            headers[name.strip().lower()] = value.strip()
    return parts[0], parts[1].split("?", 1)[0], headers


async def _read_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, max_body: int) -> _Request:
    """One request with a Content-Length body of at most `max_body` bytes."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise _HttpError(431, "request head too large") from None
    method, path, headers = _parse_head(head[:-4])
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raise _HttpError(411, "send the query with a Content-Length")
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        raise _HttpError(400, "bad Content-Length") from None
    if length < 0:
        raise _HttpError(400, "bad Content-Length")
    if length > max_body:
        raise _HttpError(413, f"query larger than {max_body} bytes")
    if length and headers.get("expect", "").lower() == "100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    body = await reader.readexactly(length) if length else b""
    return _Request(method, path, body)


def _response(status: int, body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def _error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


class QueryServer:
    """Answers ad-hoc SQL on loopback for the process that owns the embedded engine.

    ``POST /query`` with the SQL as body → ``200 {"columns": [...], "rows": [[...]]}`` or
    ``400 {"error": "<ClickHouse message>"}``; ``GET /stats`` → the sink's counters. One request per
    connection (``Connection: close``).
    """

    def __init__(
        self,
        store: AsyncAnalyticsStore,
        host: str,
        port: int,
        stats: SinkStats | None = None,
        max_body: int = MAX_QUERY_BYTES,
    ) -> None:
        self._store = store
        self._host = host
        self._port = port
        self._stats = stats
        self._max_body = max_body
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when started with port 0)."""
        if self._server is None:
            return self._port
        return self._server.sockets[0].getsockname()[1]

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self._host, self._port, limit=MAX_HEADER_BYTES)
        log.info("analytics query server on %s:%d", self._host, self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    request = await _read_request(reader, writer, self._max_body)
                status, body = await self._dispatch(request)
            except _HttpError as exc:
                status, body = exc.status, _error_body(str(exc))
            except TimeoutError:
                status, body = 408, _error_body("request not received in time")
            writer.write(_response(status, body))
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client went away
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _dispatch(self, request: _Request) -> tuple[int, bytes]:
        if request.path == "/query":
            if request.method != "POST":
                raise _HttpError(405, "use POST /query with the SQL as body")
            return await self._query(request.body)
        if request.path == "/stats":
            if request.method != "GET":
                raise _HttpError(405, "use GET /stats")
            return 200, orjson.dumps(asdict(self._stats) if self._stats else {})
        raise _HttpError(404, "not found (POST /query, GET /stats)")

    async def _query(self, body: bytes) -> tuple[int, bytes]:
        try:
            sql = body.decode("utf-8")
        except UnicodeDecodeError:
            raise _HttpError(400, "the query is not UTF-8") from None
        try:
            columns, rows = await self._store.query(sql)
        except QueryError as exc:
            return 400, _error_body(str(exc))
        except Exception:
            log.exception("analytics query failed")
            return 500, _error_body("internal error (see the analytics sink's log)")
        return 200, dumps_result(columns, rows)


# ---- the sink ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Batch:
    events: list[Event] = field(default_factory=list)
    origins: list[Origin] = field(default_factory=list)
    offsets: dict[TopicPartition, int] = field(default_factory=dict)  # next offset to read
    started: float | None = None

    def __len__(self) -> int:
        return len(self.events)


class _Sink:
    """Kafka records → batches → idempotent inserts → offset commits."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        store: AsyncAnalyticsStore,
        cfg: AnalyticsSinkSettings,
        stats: SinkStats,
        stop: asyncio.Event,
    ) -> None:
        self._consumer = consumer
        self._store = store
        self._cfg = cfg
        self.stats = stats
        self._stop = stop
        self._batch = _Batch()
        self._lock = asyncio.Lock()

    def add(self, record: Any) -> None:
        """Take one record into the batch; an undecodable one only advances the offset."""
        tp = TopicPartition(record.topic, record.partition)
        self.stats.records += 1
        if self._batch.started is None:
            self._batch.started = time.monotonic()
        self._batch.offsets[tp] = record.offset + 1
        try:
            event = decode_event(record.value if record.value is not None else b"")
        except DecodeError as exc:
            self.stats.undecodable += 1
            log.warning("skipping undecodable record %s[%d]@%d: %s", record.topic, record.partition, record.offset, exc)
            return
        self._batch.events.append(event)
        self._batch.origins.append(Origin(record.topic, record.partition, record.offset))

    def due(self) -> bool:
        """Whether the batch is full or old enough to write."""
        if self._batch.started is None:
            return False
        full = len(self._batch) >= self._cfg.batch_rows
        return full or time.monotonic() - self._batch.started >= self._cfg.batch_seconds

    def wait_ms(self) -> int:
        """How long the next fetch may wait without delaying the batch."""
        if self._batch.started is None:
            return 500
        left = self._cfg.batch_seconds - (time.monotonic() - self._batch.started)
        return max(0, min(500, int(left * 1000)))

    async def flush(self) -> None:
        """Insert the batch (retrying until it succeeds or the sink stops), then commit its offsets."""
        async with self._lock:
            batch = self._batch
            if batch.started is None:
                return
            if batch.events and not await self._insert(batch):
                return  # stopping: the records are read again next time and deduplicated
            self._batch = _Batch()
            await self._commit(batch.offsets)

    async def _insert(self, batch: _Batch) -> bool:
        delay = INSERT_RETRY_INITIAL
        while True:
            try:
                written = await self._store.insert(batch.events, batch.origins)
            except Exception as exc:  # the store is down or refused: retry, never skip data
                self.stats.insert_failures += 1
                log.warning("analytics insert of %d events failed (%s); retrying in %.1fs", len(batch), exc, delay)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._stop.wait()
                if self._stop.is_set():
                    return False
                delay = min(delay * 2, INSERT_RETRY_MAX)
                continue
            self.stats.batches += 1
            self.stats.inserted += written
            self.stats.duplicates += len(batch) - written
            return True

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit what is still assigned; a failure only means a deduplicated re-read later."""
        assigned = self._consumer.assignment()
        mine = {tp: offset for tp, offset in offsets.items() if tp in assigned}
        if not mine:
            return
        try:
            await self._consumer.commit(mine)
        except KafkaError as exc:
            self.stats.commit_failures += 1
            log.warning("analytics offset commit failed (%s); those records will be re-read", exc)

    async def run(self) -> None:
        """Fetch, batch and flush until `stop` is set; then flush what is left."""
        while not self._stop.is_set():
            fetched = await self._consumer.getmany(
                timeout_ms=self.wait_ms(), max_records=max(1, self._cfg.batch_rows - len(self._batch))
            )
            for records in fetched.values():
                for record in records:
                    self.add(record)
            if self.due():
                await self.flush()
        await self.flush()


class _FlushOnRevoke(ConsumerRebalanceListener):
    """Write and commit the current batch before partitions move to another member."""

    def __init__(self, sink: _Sink) -> None:
        self._sink = sink

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._sink.flush()

    async def on_partitions_assigned(self, assigned: Any) -> None:
        pass


async def run_analytics_sink(
    settings: Settings, stop: asyncio.Event, on_ready: Callable[[], None] | None = None, instance: str = "0"
) -> None:
    """Consume every event topic into the analytics store until `stop` is set.

    With the embedded engine, also serves ad-hoc SQL (`QueryServer`). `on_ready` is called once the
    consumer has started and the query server listens.
    """
    cfg = settings.sinks.analytics
    stats = SinkStats()
    store = await AsyncAnalyticsStore.open(settings)
    server = QueryServer(store, cfg.query_host, cfg.query_port, stats) if store.store.embedded else None
    consumer = make_consumer(settings.kafka, group_id=f"{settings.kafka.topic_prefix}.analytics", client_id="analytics")
    sink = _Sink(consumer, store, cfg, stats, stop)
    try:
        if server is not None:
            await server.start()
        await consumer.start()
        consumer.subscribe(Topics.from_settings(settings).event_topics(), listener=_FlushOnRevoke(sink))
        if on_ready is not None:
            on_ready()
        await sink.run()
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()
        if server is not None:
            await server.close()
        await store.close()
        log.info("analytics sink stopped: %s", stats)


# ---- the `poststelle sql` path -----------------------------------------------------------------


def post_query(host: str, port: int, sql: str, timeout: float = HTTP_CLIENT_TIMEOUT) -> tuple[list[str], list[list]]:
    """Ask a running sink's `QueryServer`; `ConnectionRefusedError` when nothing listens."""
    body = sql.encode("utf-8")
    if len(body) > MAX_QUERY_BYTES:
        raise QueryError(f"query larger than {MAX_QUERY_BYTES} bytes")
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("POST", "/query", body=body, headers={"Content-Type": "text/plain; charset=utf-8"})
        response = conn.getresponse()
        answer = response.read()
    finally:
        conn.close()
    try:
        data = orjson.loads(answer)
    except orjson.JSONDecodeError:
        raise QueryError(f"query server answered {response.status} with a non-JSON body") from None
    if response.status != 200:
        raise QueryError(str(data.get("error", f"query server answered {response.status}")))
    return data["columns"], data["rows"]


def _query_directly(settings: Settings, sql: str) -> tuple[list[str], list[list]]:
    """Open the store in this process, run one query, close it again."""
    try:
        store = AnalyticsStore.open(settings)
    except ClickHouseError as exc:
        if settings.sinks.analytics.url:
            raise QueryError(str(exc).strip()) from None
        raise StoreBusyError(
            f"cannot open the analytics store at {store_target(settings)} ({exc}); another process holds "
            "it and does not answer queries (is the analytics sink starting up?)"
        ) from None
    try:
        columns, rows = store.query(sql)
    finally:
        store.close()
    return columns, orjson.loads(dumps_result(columns, rows))["rows"]


def run_sql(settings: Settings, sql: str) -> tuple[list[str], list[list]]:
    """Run ad-hoc SQL for the CLI: on the server, through the running sink, or on the files.

    Rows come back JSON-shaped (datetimes as ISO strings) on every path. Raises `QueryError` with
    ClickHouse's message when the query is refused.
    """
    cfg = settings.sinks.analytics
    if cfg.url:
        return _query_directly(settings, sql)
    try:
        return post_query(cfg.query_host, cfg.query_port, sql)
    except ConnectionRefusedError:
        log.debug("no analytics sink answers on %s:%d; opening the store directly", cfg.query_host, cfg.query_port)
    return _query_directly(settings, sql)
